//! The cache of forwarded answers: pure, time passed in.
//!
//! An answer is kept for the smallest TTL among its records (a negative answer: its SOA's
//! minimum, RFC 2308), capped, and served with its TTLs counted down. Only NOERROR and
//! NXDOMAIN answers that were not truncated are kept; SERVFAIL and the like are asked again.
//! When full, the entry closest to expiring goes first. Entries are kept as wire bytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};

/// What an answer is cached under: the name lowercased, the type and the class.
pub type Key = (String, RecordType, DNSClass);

/// Longest a positive answer is kept, whatever its TTL.
pub const MAX_TTL: u32 = 3600;
/// Longest a negative answer is kept.
pub const MAX_NEGATIVE_TTL: u32 = 300;

/// Kept as wire bytes: a decoded message takes ten times the memory, and a cache of 10,000
/// entries would outweigh the rest of dnsd.
struct Entry {
    bytes: Box<[u8]>,
    stored: Instant,
    expires: Instant,
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

    /// The answer to `key` if one is fresh, with TTLs lowered by its age.
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Message> {
        let entry = self.entries.get(key)?;
        if now >= entry.expires {
            self.entries.remove(key);
            return None;
        }
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
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

    /// Keeps `message` as the answer to `key`, if it may be kept.
    pub fn put(&mut self, key: Key, message: &Message, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let Some(ttl) = cache_ttl(message) else {
            return;
        };
        if ttl == 0 {
            return;
        }
        let Ok(bytes) = message.to_vec() else {
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
        self.entries.insert(
            key,
            Entry {
                bytes: bytes.into_boxed_slice(),
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
            },
        );
    }
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
    use hickory_proto::rr::rdata::{A, SOA};
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

    fn key(name: &str) -> Key {
        (name.into(), RecordType::A, DNSClass::IN)
    }

    #[test]
    fn an_answer_is_served_with_its_ttl_counted_down_until_it_expires() {
        let mut c = Cache::new(10);
        let t0 = Instant::now();
        c.put(key("a.example."), &answer(30), t0);
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
        c.put(key("nx.example."), &nx, t0);
        assert!(c
            .get(&key("nx.example."), t0 + Duration::from_secs(59))
            .is_some());
        assert!(c
            .get(&key("nx.example."), t0 + Duration::from_secs(60))
            .is_none());

        let mut fail = answer(30);
        fail.metadata.response_code = ResponseCode::ServFail;
        c.put(key("f.example."), &fail, t0);
        let mut truncated = answer(30);
        truncated.metadata.truncation = true;
        c.put(key("t.example."), &truncated, t0);
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_cache_drops_the_entry_closest_to_expiring() {
        let mut c = Cache::new(2);
        let t0 = Instant::now();
        c.put(key("long."), &answer(100), t0);
        c.put(key("short."), &answer(10), t0);
        c.put(key("new."), &answer(50), t0);
        assert_eq!(c.len(), 2);
        assert!(c.get(&key("short."), t0).is_none());
        assert!(c.get(&key("long."), t0).is_some());
        assert!(c.get(&key("new."), t0).is_some());
    }
}
