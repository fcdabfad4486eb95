//! The cached-answer fast path reads queries with its own small reader
//! (`dns_proxy::wire`), not hickory. Differential: whatever it accepts,
//! hickory must read the same way (the same lowercased name as text and on
//! the wire, type, class, ID, EDNS payload and DO bit), so the fast path
//! never answers or checks a query the full path would see differently.
//! `ttl_offsets` must never panic and only point inside the message.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir dns-proxy/fuzz fast_path_reader`
#![no_main]

use dns_proxy::wire::{parse_query, ttl_offsets};
use hickory_proto::op::Message;
use hickory_proto::serialize::binary::BinEncodable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(q) = parse_query(data) {
        let m = Message::from_vec(data).expect("what the fast path reads, hickory reads");
        assert_eq!(m.queries.len(), 1);
        let lower = m.queries[0].name.to_lowercase();
        assert_eq!(q.name_text, lower.to_string());
        assert_eq!(q.name_wire, lower.to_bytes().unwrap());
        assert_eq!(q.qtype, u16::from(m.queries[0].query_type));
        assert_eq!(q.qclass, u16::from(m.queries[0].query_class));
        assert_eq!(q.id, m.metadata.id);
        assert_eq!(q.edns.is_some(), m.edns.is_some());
        if let (Some(fast), Some(h)) = (q.edns, m.edns.as_ref()) {
            assert_eq!(fast.dnssec_ok, h.flags().dnssec_ok);
            // hickory reads a payload size under 512 as 512; so does the fast path
            // when it sizes the reply.
            assert_eq!(fast.max_payload.max(512), h.max_payload());
        }
    }
    if let Some(offsets) = ttl_offsets(data) {
        assert!(offsets.iter().all(|&o| o + 4 <= data.len()));
    }
});
