//! The cache of forwarded answers: pure, time passed in.
//!
//! An answer is kept for the smallest TTL among its records (a negative answer: its SOA's
//! minimum, RFC 2308), capped, and served with its TTLs counted down. Only NOERROR and
//! NXDOMAIN answers that were not truncated are kept; SERVFAIL and the like are asked again.
//! When full, the entry closest to expiring goes first.
//!
//! Entries are kept as wire bytes, already in the form of a reply to a plain query (no OPT,
//! nothing a client should not get), with where each record's TTL sits. So the UDP fast path
//! answers a plain query for a cached name by copying: the asker's id and question, the
//! stored records, their TTLs lowered by the entry's age ([`Cache::answer_plain`]); the full
//! path decodes the same bytes ([`Cache::get`]). Tests check both give the same reply.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use crate::fast::Question;

/// What an answer is cached under: the question's name in lowercase wire form, then its type
/// and class (two bytes each), as a plain query carries them ([`Question::key`]).
pub type Key = Box<[u8]>;

/// The cache key of `query`, laid out as [`Question::key`].
pub fn key(query: &Query) -> Option<Key> {
    let mut k = query.name().to_lowercase().to_bytes().ok()?;
    k.extend_from_slice(&u16::from(query.query_type()).to_be_bytes());
    k.extend_from_slice(&u16::from(query.query_class()).to_be_bytes());
    Some(k.into_boxed_slice())
}

/// Longest a positive answer is kept, whatever its TTL.
pub const MAX_TTL: u32 = 3600;
/// Longest a negative answer is kept.
pub const MAX_NEGATIVE_TTL: u32 = 300;
/// The longest reply sent without EDNS; longer ones take the full path, which truncates.
const MAX_PLAIN_UDP: usize = 512;

/// Records an upstream reply may carry to a client: not its OPT (the server adds its own),
/// and no transaction signatures meant for us.
pub fn relayable(r: &Record) -> bool {
    !matches!(
        r.record_type(),
        RecordType::OPT | RecordType::TSIG | RecordType::SIG
    )
}

/// Kept as wire bytes: a decoded message takes ten times the memory, and a cache of 10,000
/// entries would outweigh the rest of dnsd.
struct Entry {
    /// A reply with id 0 to the question in lowercase.
    bytes: Box<[u8]>,
    /// Where in `bytes` each record's TTL is.
    ttls: Box<[u16]>,
    /// Where the records start (after the header and the question).
    records: u16,
    stored: Instant,
    expires: Instant,
}

impl Entry {
    fn age(&self, now: Instant) -> u32 {
        u32::try_from(now.duration_since(self.stored).as_secs()).unwrap_or(u32::MAX)
    }
}

/// Forwarded answers by question.
pub struct Cache {
    entries: HashMap<Key, Entry>,
    capacity: usize,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The fresh entry under `key`; an expired one is dropped.
    fn fresh(&mut self, key: &[u8], now: Instant) -> Option<&Entry> {
        if now >= self.entries.get(key)?.expires {
            self.entries.remove(key);
            return None;
        }
        self.entries.get(key)
    }

    /// The answer to `key` if one is fresh, with TTLs lowered by its age.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<Message> {
        let entry = self.fresh(key, now)?;
        let age = entry.age(now);
        let Ok(mut message) = Message::from_vec(&entry.bytes) else {
            self.entries.remove(key);
            return None;
        };
        for r in message
            .answers
            .iter_mut()
            .chain(message.authorities.iter_mut())
            .chain(message.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(message)
    }

    /// Writes the reply to the plain query `request` (parsed into `q`) into `out` from a
    /// fresh entry and returns true; false when there is none or the reply would need
    /// truncating. The reply is what the full path sends: the asker's id, RD and CD, RA set,
    /// the upstream's response code, the question as asked, the records with TTLs counted
    /// down.
    pub fn answer_plain(
        &mut self,
        q: &Question,
        request: &[u8],
        out: &mut Vec<u8>,
        now: Instant,
    ) -> bool {
        let Some(entry) = self.fresh(q.key(), now) else {
            return false;
        };
        let records = usize::from(entry.records);
        // Same name (in another case), type and class: the question is as long as the stored
        // one, so the stored records' compression pointers still land on it.
        if request.len() != records || entry.bytes.len() > MAX_PLAIN_UDP {
            return false;
        }
        let age = entry.age(now);
        out.clear();
        out.extend_from_slice(&request[..2]);
        out.push(0x80 | (request[2] & 0x01));
        out.push(0x80 | (request[3] & 0x10) | (entry.bytes[3] & 0x0f));
        out.extend_from_slice(&entry.bytes[4..12]);
        out.extend_from_slice(&request[12..]);
        out.extend_from_slice(&entry.bytes[records..]);
        for &at in entry.ttls.iter() {
            let at = usize::from(at);
            let ttl = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
            out[at..at + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        }
        true
    }

    /// Keeps `message` as the answer to `query`, if it may be kept.
    pub fn put(&mut self, query: &Query, message: &Message, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let Some(ttl) = cache_ttl(message) else {
            return;
        };
        if ttl == 0 {
            return;
        }
        let (Some(key), Some(entry)) = (key(query), stored(query, message, now, ttl)) else {
            return;
        };
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.capacity {
                if let Some(k) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, entry);
    }
}

/// `message` as it is kept: a reply with id 0 to `query` (lowercase), only the relayable
/// records, with the place of every TTL.
fn stored(query: &Query, message: &Message, now: Instant, ttl: u32) -> Option<Entry> {
    let mut reply = Message::new(0, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = message.metadata.response_code;
    let mut q = query.clone();
    q.set_name(query.name().to_lowercase());
    reply.add_query(q);
    reply.answers = message.answers.clone();
    reply.authorities = message
        .authorities
        .iter()
        .filter(|r| relayable(r))
        .cloned()
        .collect();
    reply.additionals = message
        .additionals
        .iter()
        .filter(|r| relayable(r))
        .cloned()
        .collect();
    let bytes = reply.to_vec().ok()?;
    let (records, ttls) = ttl_places(&bytes)?;
    Some(Entry {
        bytes: bytes.into_boxed_slice(),
        ttls: ttls.into_boxed_slice(),
        records: u16::try_from(records).ok()?,
        stored: now,
        expires: now + Duration::from_secs(u64::from(ttl)),
    })
}

/// Where the records of `msg` (one question) start, and where each record's TTL is.
fn ttl_places(msg: &[u8]) -> Option<(usize, Vec<u16>)> {
    let count = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *msg.get(at)?,
            *msg.get(at + 1)?,
        ])))
    };
    let skip_name = |mut pos: usize| -> Option<usize> {
        loop {
            let len = *msg.get(pos)?;
            match len {
                0 => return Some(pos + 1),
                l if l & 0xc0 == 0xc0 => return Some(pos + 2),
                l => pos += 1 + usize::from(l),
            }
        }
    };
    if count(4)? != 1 {
        return None;
    }
    let records = skip_name(12)? + 4;
    let total = count(6)? + count(8)? + count(10)?;
    let mut ttls = Vec::with_capacity(total);
    let mut pos = records;
    for _ in 0..total {
        let at = skip_name(pos)? + 4;
        ttls.push(u16::try_from(at).ok()?);
        pos = at + 4 + 2 + count(at + 4)?;
    }
    (pos == msg.len()).then_some((records, ttls))
}

/// How long `message` may be kept, `None` if not at all.
fn cache_ttl(message: &Message) -> Option<u32> {
    if message.metadata.truncation {
        return None;
    }
    match message.metadata.response_code {
        ResponseCode::NoError if !message.answers.is_empty() => message
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .map(|t| t.min(MAX_TTL)),
        ResponseCode::NoError | ResponseCode::NXDomain => message
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                _ => None,
            })
            .map(|t| t.min(MAX_NEGATIVE_TTL)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, CNAME, NS, SOA};
    use hickory_proto::rr::{Name, Record};

    fn answer(ttl: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_answer(Record::from_rdata(
            Name::from_ascii("a.example.").unwrap(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        m
    }

    fn q(name: &str) -> Query {
        Query::query(Name::from_ascii(name).unwrap(), RecordType::A)
    }

    fn key(name: &str) -> Key {
        super::key(&q(name)).unwrap()
    }

    #[test]
    fn an_answer_is_served_with_its_ttl_counted_down_until_it_expires() {
        let mut c = Cache::new(10);
        let t0 = Instant::now();
        c.put(&q("a.example."), &answer(30), t0);
        let m = c
            .get(&key("a.example."), t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(m.answers[0].ttl, 20);
        assert!(c
            .get(&key("a.example."), t0 + Duration::from_secs(30))
            .is_none());
        assert!(c.is_empty(), "an expired entry is dropped");
    }

    #[test]
    fn negative_answers_last_the_soa_minimum_and_failures_are_not_kept() {
        let mut c = Cache::new(10);
        let t0 = Instant::now();
        let mut nx = Message::new(1, MessageType::Response, OpCode::Query);
        nx.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(Name::root(), Name::root(), 1, 1, 1, 1, 60);
        nx.add_authority(Record::from_rdata(Name::root(), 900, RData::SOA(soa)));
        c.put(&q("nx.example."), &nx, t0);
        assert!(c
            .get(&key("nx.example."), t0 + Duration::from_secs(59))
            .is_some());
        assert!(c
            .get(&key("nx.example."), t0 + Duration::from_secs(60))
            .is_none());

        let mut fail = answer(30);
        fail.metadata.response_code = ResponseCode::ServFail;
        c.put(&q("f.example."), &fail, t0);
        let mut truncated = answer(30);
        truncated.metadata.truncation = true;
        c.put(&q("t.example."), &truncated, t0);
        assert!(c.is_empty());
    }

    #[test]
    fn a_plain_query_is_answered_from_bytes_as_the_full_path_would() {
        let mut c = Cache::new(10);
        let t0 = Instant::now();
        let name = |n: &str| Name::from_ascii(n).unwrap();
        // A CNAME chain, an authority and an additional: names compressed in the bytes.
        let mut up = Message::new(7, MessageType::Response, OpCode::Query);
        up.metadata.recursion_available = true;
        up.add_query(q("www.example."));
        up.add_answer(Record::from_rdata(
            name("www.example."),
            300,
            RData::CNAME(CNAME(name("web.example."))),
        ));
        up.add_answer(Record::from_rdata(
            name("web.example."),
            60,
            RData::A(A::new(192, 0, 2, 7)),
        ));
        up.add_authority(Record::from_rdata(
            name("example."),
            900,
            RData::NS(NS(name("ns.example."))),
        ));
        up.add_additional(Record::from_rdata(
            name("ns.example."),
            900,
            RData::A(A::new(192, 0, 2, 53)),
        ));
        c.put(&q("www.example."), &up, t0);

        // Asked in another case, 10 s later.
        let later = t0 + Duration::from_secs(10);
        let mut req = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        req.metadata.recursion_desired = true;
        req.add_query(q("WWW.Example."));
        let bytes = req.to_vec().unwrap();
        let question = Question::parse(&bytes).unwrap();
        let mut out = Vec::new();
        assert!(c.answer_plain(&question, &bytes, &mut out, later));
        let fast = Message::from_vec(&out).unwrap();
        let full = c.get(&key("www.example."), later).unwrap();
        assert_eq!(fast.metadata.id, 0xbeef);
        assert!(fast.metadata.recursion_desired && fast.metadata.recursion_available);
        assert!(!fast.metadata.authoritative && !fast.metadata.truncation);
        assert_eq!(fast.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            fast.queries[0].name().to_ascii(),
            "WWW.Example.",
            "case echoed"
        );
        assert_eq!(fast.answers, full.answers);
        assert_eq!(fast.authorities, full.authorities);
        assert_eq!(fast.additionals, full.additionals);
        let ttls: Vec<u32> = fast.answers.iter().map(|r| r.ttl).collect();
        assert_eq!(ttls, [290, 50]);

        // Another type, or an expired entry: not from here.
        let mut aaaa = Message::new(1, MessageType::Query, OpCode::Query);
        aaaa.add_query(Query::query(name("www.example."), RecordType::AAAA));
        let bytes = aaaa.to_vec().unwrap();
        let question = Question::parse(&bytes).unwrap();
        assert!(!c.answer_plain(&question, &bytes, &mut out, later));
        let bytes = req.to_vec().unwrap();
        let question = Question::parse(&bytes).unwrap();
        assert!(!c.answer_plain(&question, &bytes, &mut out, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_full_cache_drops_the_entry_closest_to_expiring() {
        let mut c = Cache::new(2);
        let t0 = Instant::now();
        c.put(&q("long."), &answer(100), t0);
        c.put(&q("short."), &answer(10), t0);
        c.put(&q("new."), &answer(50), t0);
        assert_eq!(c.len(), 2);
        assert!(c.get(&key("short."), t0).is_none());
        assert!(c.get(&key("long."), t0).is_some());
        assert!(c.get(&key("new."), t0).is_some());
    }
}
