//! The fast path: the common question answered straight from bytes.
//!
//! Most queries a resolver of containers gets are one plain `A` question, without EDNS, for a
//! name that has addresses. [`FastTable`] holds those names in wire format and writes the
//! reply into a buffer without decoding the query into a message: the header, the question
//! copied as asked (so its case comes back), and one A record per address pointing back at the
//! question's name, shuffled per answer. Anything else (EDNS, another type, a missing name, a
//! name whose answer depends on who asks, a reply over 512 bytes, any oddity in the packet)
//! is left to the full path ([`crate::server`]), which then answers it the same way. The UDP
//! listener also answers a plain query for a forwarded name from the cache's bytes
//! ([`crate::cache::Cache::answer_plain`]), with the [`Question`] parsed here.
//!
//! Pure: bytes in, bytes out, tested against the full path.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use crate::names::{Names, ZONE};

/// The longest reply sent without EDNS (RFC 1035); longer ones take the full path, which
/// truncates.
const MAX_PLAIN_UDP: usize = 512;
/// More addresses than this never fit a plain reply: such names are left to the full path.
const MAX_ADDRESSES: usize = (MAX_PLAIN_UDP - 12) / 16;
const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

/// The names the fast path answers, by their lowercase wire form.
///
/// Rebuilt whole on every change, so it is two allocations, not two per name: every entry
/// back to back in `arena` (the name's length, the name, the number of addresses, the
/// addresses), and `index`, where each entry starts, by the hash of its name. Large tables
/// get pages of their own and give them back whole when replaced.
#[derive(Debug, Clone, Default)]
pub struct FastTable {
    arena: Vec<u8>,
    index: HashTable<u32>,
    hasher: RandomState,
    ttl: [u8; 4],
}

/// Appends the name made of `parts` (each one or more dotted labels) and the zone to `out`
/// in lowercase wire form; false, with `out` as it was, if it cannot be one.
fn push_wire(out: &mut Vec<u8>, parts: &[&str]) -> bool {
    let start = out.len();
    for label in parts.iter().flat_map(|p| p.split('.')).chain([ZONE]) {
        let Some(len) = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))
        else {
            out.truncate(start);
            return false;
        };
        out.push(len);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    if out.len() - start > 255 {
        out.truncate(start);
        return false;
    }
    true
}

/// The name of the entry at `at`.
fn name_at(arena: &[u8], at: u32) -> &[u8] {
    let at = at as usize;
    &arena[at + 1..at + 1 + usize::from(arena[at])]
}

impl FastTable {
    /// The names of `names` whose answer is the same whoever asks and has addresses.
    pub fn build(names: &Names, ttl: u32) -> FastTable {
        let mut arena = Vec::new();
        let mut index = HashTable::new();
        let hasher = RandomState::new();
        names.visit_asker_independent(|parts, ips| {
            if ips.is_empty() || ips.len() > MAX_ADDRESSES {
                return;
            }
            let Ok(at) = u32::try_from(arena.len()) else {
                return;
            };
            arena.push(0);
            if !push_wire(&mut arena, parts) {
                arena.truncate(at as usize);
                return;
            }
            let name = &arena[at as usize + 1..];
            let hash = hasher.hash_one(name);
            // A name given twice keeps its first addresses, as the full path would answer.
            if index.find(hash, |&e| name_at(&arena, e) == name).is_some() {
                arena.truncate(at as usize);
                return;
            }
            arena[at as usize] = (arena.len() - at as usize - 1) as u8;
            arena.push(ips.len() as u8);
            for ip in ips {
                arena.extend_from_slice(&ip.octets());
            }
            index.insert_unique(hash, at, |&e| hasher.hash_one(name_at(&arena, e)));
        });
        arena.shrink_to_fit();
        FastTable {
            arena,
            index,
            hasher,
            ttl: ttl.to_be_bytes(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The addresses of `name` (lowercase wire form), four bytes each.
    fn addresses(&self, name: &[u8]) -> Option<&[u8]> {
        let hash = self.hasher.hash_one(name);
        let at = *self
            .index
            .find(hash, |&e| name_at(&self.arena, e) == name)? as usize;
        let count_at = at + 1 + usize::from(self.arena[at]);
        let count = usize::from(self.arena[count_at]);
        Some(&self.arena[count_at + 1..count_at + 1 + 4 * count])
    }

    /// Writes the reply to `request` into `out` and returns true, if the fast path answers
    /// it; `random` varies the order of the addresses.
    pub fn answer(&self, request: &[u8], out: &mut Vec<u8>, random: u64) -> bool {
        Question::parse(request).is_some_and(|q| self.answer_question(&q, request, out, random))
    }

    /// [`FastTable::answer`] for a request already parsed into `q`.
    pub fn answer_question(
        &self,
        q: &Question,
        request: &[u8],
        out: &mut Vec<u8>,
        random: u64,
    ) -> bool {
        if !(q.qtype() == TYPE_A || q.qtype() == TYPE_ANY) || q.qclass() != CLASS_IN {
            return false;
        }
        let Some(addrs) = self.addresses(q.name()) else {
            return false;
        };
        let n = addrs.len() / 4;
        let total = 12 + (request.len() - 12) + 16 * n;
        if total > MAX_PLAIN_UDP {
            return false;
        }
        out.clear();
        out.extend_from_slice(&request[..2]);
        // QR, opcode QUERY, AA, RD as asked; RA, CD as asked; NOERROR.
        out.push(0x80 | 0x04 | (request[2] & 0x01));
        out.push(0x80 | (request[3] & 0x10));
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&u16::try_from(n).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&request[12..]);
        // A random rotation and swap: enough for clients that take the first address.
        let start = (random % n as u64) as usize;
        let swap = (random >> 32) as usize % n;
        for i in 0..n {
            let k = match (start + i) % n {
                k if k == start => (start + swap) % n,
                k if k == (start + swap) % n => start,
                k => k,
            };
            out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
            out.extend_from_slice(&self.ttl);
            out.extend_from_slice(&[0, 4]);
            out.extend_from_slice(&addrs[4 * k..4 * k + 4]);
        }
        true
    }
}

/// The one question of a plain query, its name lowercased.
pub struct Question {
    /// The name in lowercase wire form, then the type and class as asked.
    key: [u8; 260],
    name_len: usize,
}

impl Question {
    /// The name in lowercase wire form.
    pub fn name(&self) -> &[u8] {
        &self.key[..self.name_len]
    }

    /// The name in lowercase wire form, then the type and class: what the forward cache keys
    /// its answers by ([`crate::cache::key`] builds the same from a decoded query).
    pub fn key(&self) -> &[u8] {
        &self.key[..self.name_len + 4]
    }

    pub fn qtype(&self) -> u16 {
        u16::from_be_bytes([self.key[self.name_len], self.key[self.name_len + 1]])
    }

    pub fn qclass(&self) -> u16 {
        u16::from_be_bytes([self.key[self.name_len + 2], self.key[self.name_len + 3]])
    }

    /// A standard query (not a response), one question, no other records (so no EDNS), the
    /// name in plain labels (no compression), nothing after it.
    pub fn parse(req: &[u8]) -> Option<Question> {
        if req.len() < 12 + 5 {
            return None;
        }
        let (flags, opcode) = (req[2], (req[2] >> 3) & 0x0f);
        if flags & 0x80 != 0 || opcode != 0 || req[4..12] != [0, 1, 0, 0, 0, 0, 0, 0] {
            return None;
        }
        let mut key = [0u8; 260];
        let mut pos = 12;
        let mut len = 0;
        loop {
            let l = usize::from(*req.get(pos)?);
            if l == 0 {
                key[len] = 0;
                len += 1;
                pos += 1;
                break;
            }
            if l > 63 || len + 1 + l >= 255 {
                return None;
            }
            let label = req.get(pos + 1..pos + 1 + l)?;
            key[len] = l as u8;
            for (d, s) in key[len + 1..len + 1 + l].iter_mut().zip(label) {
                *d = s.to_ascii_lowercase();
            }
            len += 1 + l;
            pos += 1 + l;
        }
        let rest = req.get(pos..)?;
        if rest.len() != 4 {
            return None;
        }
        key[len..len + 4].copy_from_slice(rest);
        Some(Question { key, name_len: len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::{decide, Decision, Zone};
    use crate::names::fixtures::{container, machine, service, view};
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
    use proptest::prelude::*;

    fn names() -> Names {
        let mut v = view();
        v.add_machine(machine("m1", "one", 1));
        for (id, project, name) in [
            ("web.p", "p", "web"),
            ("db.p", "p", "db"),
            ("db.q", "q", "db"),
        ] {
            v.add_service(service(id, project, name, 0));
        }
        for (id, service, ip) in [
            ("w1", "web.p", "10.210.1.2"),
            ("w2", "web.p", "10.210.1.3"),
            ("w3", "web.p", "10.210.1.4"),
            ("d1", "db.p", "10.210.1.5"),
            ("d2", "db.q", "10.210.1.6"),
        ] {
            v.add_container(container(id, "m1", service, ip));
        }
        Names::build(&v)
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn fast(table: &FastTable, m: &Message) -> Option<Message> {
        let mut out = Vec::new();
        table
            .answer(&m.to_vec().unwrap(), &mut out, rand::random())
            .then(|| Message::from_vec(&out).expect("the fast reply parses"))
    }

    #[test]
    fn a_fast_answer_is_what_the_full_path_answers() {
        let names = names();
        let table = FastTable::build(&names, 5);
        let zone = Zone {
            ttl: 5,
            cidr: Some("10.210.0.0/16".parse().unwrap()),
        };
        for name in [
            "web.p.internal.",
            "WeB.P.Internal.",
            "one.machine.internal.",
            "w2.one.machine.internal.",
            "db.p.internal.",
            "web.internal.",
        ] {
            let q = query(name, RecordType::A);
            let reply = fast(&table, &q).unwrap_or_else(|| panic!("{name} is fast"));
            assert_eq!(reply.metadata.id, 0x1234);
            assert!(reply.metadata.authoritative && reply.metadata.recursion_available);
            assert!(reply.metadata.recursion_desired);
            assert_eq!(reply.queries[0].name().to_ascii(), name, "case echoed");
            let Decision::Local(full) = decide(
                &names,
                &zone,
                OpCode::Query,
                q.queries[0].name(),
                RecordType::A,
                DNSClass::IN,
                None,
            ) else {
                panic!("local")
            };
            let ips = |rs: &[hickory_proto::rr::Record]| {
                let mut v: Vec<String> = rs
                    .iter()
                    .map(|r| match &r.data {
                        RData::A(a) => {
                            format!("{} {} {}", r.name.to_ascii().to_lowercase(), r.ttl, a.0)
                        }
                        other => panic!("{other:?}"),
                    })
                    .collect();
                v.sort();
                v
            };
            assert_eq!(ips(&reply.answers), ips(&full.answers), "{name}");
        }
    }

    #[test]
    fn the_rest_takes_the_full_path() {
        let table = FastTable::build(&names(), 5);
        // `db.internal` depends on who asks (two projects have a db).
        assert!(fast(&table, &query("db.internal.", RecordType::A)).is_none());
        assert!(fast(&table, &query("nope.internal.", RecordType::A)).is_none());
        assert!(fast(&table, &query("web.p.internal.", RecordType::AAAA)).is_none());
        assert!(fast(&table, &query("example.com.", RecordType::A)).is_none());
        let mut edns = query("web.p.internal.", RecordType::A);
        edns.set_edns(Edns::new());
        assert!(fast(&table, &edns).is_none());
        let mut response = query("web.p.internal.", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        assert!(fast(&table, &response).is_none());
        let mut update = query("web.p.internal.", RecordType::A);
        update.metadata.op_code = OpCode::Update;
        assert!(fast(&table, &update).is_none());
        // Trailing bytes.
        let mut bytes = query("web.p.internal.", RecordType::A).to_vec().unwrap();
        bytes.push(0);
        assert!(!table.answer(&bytes, &mut Vec::new(), 1));
    }

    #[test]
    fn addresses_come_in_varying_order() {
        let table = FastTable::build(&names(), 5);
        let q = query("web.p.internal.", RecordType::A);
        let firsts: std::collections::HashSet<String> = (0..64)
            .map(|_| format!("{:?}", fast(&table, &q).unwrap().answers[0].data))
            .collect();
        assert_eq!(firsts.len(), 3);
    }

    proptest! {
        #[test]
        fn any_bytes_give_no_answer_or_a_reply_to_that_question(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            random in any::<u64>(),
        ) {
            let table = FastTable::build(&names(), 5);
            let mut out = Vec::new();
            if table.answer(&bytes, &mut out, random) {
                let reply = Message::from_vec(&out).expect("a fast reply parses");
                prop_assert_eq!(&out[12..bytes.len()], &bytes[12..]);
                prop_assert!(!reply.answers.is_empty());
            }
        }

        #[test]
        fn mutated_queries_never_panic(
            flip in 0usize..40,
            value in any::<u8>(),
            cut in 0usize..40,
        ) {
            let table = FastTable::build(&names(), 5);
            let mut bytes = query("web.p.internal.", RecordType::A).to_vec().unwrap();
            if flip < bytes.len() {
                bytes[flip] = value;
            }
            bytes.truncate(bytes.len().saturating_sub(cut % 8));
            let mut out = Vec::new();
            if table.answer(&bytes, &mut out, 7) {
                prop_assert!(Message::from_vec(&out).is_ok());
            }
        }
    }
}
