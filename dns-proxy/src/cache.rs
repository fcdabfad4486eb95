//! The answer cache (moka): repeated lookups do not go upstream. Entries
//! expire with the smallest TTL in the answer, TTLs are counted down in what
//! is served, the size is bounded. A cached answer is still checked against
//! the asking pod's policy and learned for it: the cache saves the upstream
//! round trip, never a policy decision. Answers are per resolver: a pod's
//! resolver never answers for another pod's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use moka::sync::Cache;
use moka::Expiry;

use crate::check::Transport;

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
    pub name: Name,
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
}

struct TtlExpiry;

impl Expiry<CacheKey, Arc<Entry>> for TtlExpiry {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        value: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(u64::from(value.ttl)))
    }
}

/// Bounded, TTL-honouring answer cache; `disabled()` caches nothing.
pub struct AnswerCache {
    inner: Option<Cache<CacheKey, Arc<Entry>>>,
}

impl AnswerCache {
    pub fn new(max_entries: u64) -> Self {
        Self {
            inner: Some(
                Cache::builder()
                    .max_capacity(max_entries)
                    .expire_after(TtlExpiry)
                    .build(),
            ),
        }
    }

    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// A copy of the cached answer with TTLs reduced by its age.
    pub fn get(&self, key: &CacheKey) -> Option<Message> {
        let entry = self.inner.as_ref()?.get(key)?;
        let age = entry.stored.elapsed().as_secs().min(u64::from(u32::MAX)) as u32;
        if age >= entry.ttl {
            return None;
        }
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
            }),
        );
    }
}
