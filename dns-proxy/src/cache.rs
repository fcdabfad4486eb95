//! The answer cache: repeated lookups do not go upstream. Entries expire
//! with the smallest TTL in the answer, TTLs are counted down in what is
//! served, the size is bounded (quick_cache: sharded, CLOCK-Pro eviction;
//! a lookup is a hash and a shard's read lock, the cached path's cheapest
//! part — moka, before it, was a tenth of the warm proxy's time). A cached answer is still checked against
//! the asking pod's policy and learned for it: the cache saves the upstream
//! round trip, never a policy decision. Answers are per resolver: a pod's
//! resolver never answers for another pod's.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use quick_cache::sync::Cache;

use crate::answer::learned_addresses;
use crate::check::Transport;
use crate::wire::{self, PlainQuery};

/// What an answer is cached under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The resolver asked (the query's original destination): one pod's
    /// resolver must never answer for another's. A pod allowed to ask a
    /// resolver it controls could otherwise plant `api.example -> its IP`
    /// for every pod that asks the cluster's resolver next.
    pub resolver: SocketAddr,
    /// UDP answers may be truncated where TCP ones are whole.
    pub transport: Transport,
    /// The query name in wire form, ASCII-lowercased.
    pub name: Vec<u8>,
    pub query_type: RecordType,
    pub query_class: DNSClass,
    /// DNSSEC OK: answers with and without signatures differ.
    pub dnssec_ok: bool,
}

#[derive(Debug)]
struct Entry {
    message: Message,
    stored: Instant,
    ttl: u32,
    /// The same answer encoded, for the fast path (`None` if it could not
    /// be encoded and walked).
    wire: Option<WireAnswer>,
}

/// An answer ready to serve without hickory: its encoding, where its
/// question and TTLs are, and the addresses it vouches for.
#[derive(Debug)]
struct WireAnswer {
    bytes: Vec<u8>,
    question: Range<usize>,
    /// TTL field offsets and the TTLs as stored.
    ttls: Vec<(usize, u32)>,
    has_opt: bool,
    learned: Vec<(IpAddr, u32)>,
    rcode: ResponseCode,
}

impl WireAnswer {
    fn new(message: &Message) -> Option<Self> {
        let bytes = message.to_vec().ok()?;
        let ttls = wire::ttl_offsets(&bytes)?
            .into_iter()
            .map(|o| {
                (
                    o,
                    u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]),
                )
            })
            .collect();
        let question_len = wire::parse_query_name_len(&bytes)?;
        Some(Self {
            question: 12..12 + question_len + 4,
            ttls,
            has_opt: message.edns.is_some(),
            learned: learned_addresses(&message.queries.first()?.name, message),
            rcode: message.metadata.response_code,
            bytes,
        })
    }
}

/// A cached answer for the fast path: the reply for the asking pod and the
/// addresses to learn for it, TTLs counted down alike.
#[derive(Debug)]
pub struct WireHit {
    pub reply: Vec<u8>,
    pub learned: Vec<(IpAddr, u32)>,
    pub rcode: ResponseCode,
}

/// Bounded, TTL-honouring answer cache; `disabled()` caches nothing.
pub struct AnswerCache {
    inner: Option<Cache<CacheKey, Arc<Entry>>>,
}

impl AnswerCache {
    pub fn new(max_entries: u64) -> Self {
        let max = usize::try_from(max_entries.max(1)).unwrap_or(usize::MAX);
        Self {
            inner: Some(Cache::new(max)),
        }
    }

    pub fn disabled() -> Self {
        Self { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// A live entry and its age, counted in started seconds: the pod is
    /// never told an address lasts longer than the upstream said, and so a
    /// cached answer never moves the FQDN map's expiry (nothing to write
    /// per hit).
    /// An expired entry is removed here (the cache's bound, not time,
    /// evicts the rest).
    fn live(&self, key: &CacheKey, now: Instant) -> Option<(Arc<Entry>, u32)> {
        let cache = self.inner.as_ref()?;
        let entry = cache.get(key)?;
        let elapsed = now.saturating_duration_since(entry.stored);
        // The second it was stored in counts as started, also when `now`
        // was read before another worker stored it.
        let started_seconds = (elapsed.as_secs() + u64::from(elapsed.subsec_nanos() > 0)).max(1);
        let age = started_seconds.min(u64::from(u32::MAX)) as u32;
        if age >= entry.ttl {
            // Only this entry: a fresher answer stored meanwhile stays.
            cache.remove_if(key, |e| Arc::ptr_eq(e, &entry));
            return None;
        }
        Some((entry, age))
    }

    /// The cached answer to `query` (read from `request`) as wire bytes
    /// for the asking pod: its ID and question, TTLs reduced by the age.
    /// `None` where the full path must answer: nothing cached, an answer
    /// too large for the pod's UDP size (it needs truncating), or EDNS on
    /// one side only. `now`: the time the answer's age is counted to.
    pub fn get_wire(
        &self,
        key: &CacheKey,
        query: &PlainQuery,
        request: &[u8],
        now: Instant,
    ) -> Option<WireHit> {
        let (entry, age) = self.live(key, now)?;
        let answer = entry.wire.as_ref()?;
        let max = query.edns.map_or(512, |e| e.max_payload.max(512));
        if answer.has_opt != query.edns.is_some()
            || answer.bytes.len() > usize::from(max)
            || answer.question.len() != query.question.len()
        {
            return None;
        }
        let mut reply = answer.bytes.clone();
        reply[..2].copy_from_slice(&query.id.to_be_bytes());
        // The pod's own question (its letter case): the same length, as the
        // key says it is the same name, type and class.
        reply[answer.question.clone()].copy_from_slice(&request[query.question.clone()]);
        for &(offset, ttl) in &answer.ttls {
            reply[offset..offset + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        }
        Some(WireHit {
            reply,
            learned: answer
                .learned
                .iter()
                .map(|&(ip, ttl)| (ip, ttl.saturating_sub(age)))
                .collect(),
            rcode: answer.rcode,
        })
    }

    /// A copy of the cached answer with TTLs reduced by its age (see
    /// [`AnswerCache::live`]).
    pub fn get(&self, key: &CacheKey) -> Option<Message> {
        let (entry, age) = self.live(key, Instant::now())?;
        let mut message = entry.message.clone();
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

    /// Caches `message` if it is a complete positive or negative answer
    /// with a non-zero TTL.
    pub fn insert(&self, key: CacheKey, message: &Message) {
        let Some(cache) = &self.inner else { return };
        let rcode = message.metadata.response_code;
        if message.metadata.truncation
            || !(rcode == ResponseCode::NoError || rcode == ResponseCode::NXDomain)
        {
            return;
        }
        let ttl = message
            .answers
            .iter()
            .chain(message.authorities.iter())
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0);
        if ttl == 0 {
            return;
        }
        cache.insert(
            key,
            Arc::new(Entry {
                message: message.clone(),
                stored: Instant::now(),
                ttl,
                wire: WireAnswer::new(message),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record};

    use super::*;

    fn key(label: &str) -> CacheKey {
        let mut name = vec![label.len() as u8];
        name.extend_from_slice(label.as_bytes());
        name.extend_from_slice(b"\x07example\x03com\x00");
        CacheKey {
            resolver: "10.96.0.10:53".parse().unwrap(),
            transport: Transport::Udp,
            name,
            query_type: RecordType::A,
            query_class: DNSClass::IN,
            dnssec_ok: false,
        }
    }

    fn answer(label: &str, ttl: u32) -> Message {
        let name = hickory_proto::rr::Name::from_ascii(format!("{label}.example.com.")).unwrap();
        let mut answer = Message::new(7, MessageType::Response, OpCode::Query);
        answer.answers.push(Record::from_rdata(
            name,
            ttl,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
        ));
        answer
    }

    #[test]
    fn an_answer_past_its_ttl_is_not_served_and_leaves_the_cache() {
        let cache = AnswerCache::new(10);
        // A TTL of 2: served during its first started second only.
        cache.insert(key("api"), &answer("api", 2));
        assert!(cache.get(&key("api")).is_some());
        std::thread::sleep(Duration::from_millis(1_050));
        assert!(cache.get(&key("api")).is_none());
        assert_eq!(cache.inner.as_ref().unwrap().len(), 0);
    }

    /// A pod asking for ever new names cannot grow the cache past its size.
    #[test]
    fn the_cache_holds_at_most_its_size() {
        let cache = AnswerCache::new(100);
        for i in 0..5_000 {
            let label = format!("n{i}");
            cache.insert(key(&label), &answer(&label, 300));
        }
        let held = cache.inner.as_ref().unwrap().len();
        assert!((50..=100).contains(&held), "{held} entries held");
        // The newest answer is there to serve.
        assert!(cache.get(&key("n4999")).is_some());
    }

    #[test]
    fn a_cached_answer_is_served_with_its_ttl_less_every_started_second() {
        let key = key("api");
        let answer = answer("api", 60);
        let cache = AnswerCache::new(10);
        cache.insert(key.clone(), &answer);
        std::thread::sleep(Duration::from_millis(5));
        // 5 ms old: one second started. Never more than upstream said, so
        // the pod's expiry is never later than the one learned when it came.
        let served = cache.get(&key).expect("cached");
        assert_eq!(served.answers[0].ttl, 59);
    }
}
