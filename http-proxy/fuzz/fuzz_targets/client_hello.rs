//! Arbitrary bytes as the first bytes of a connection on a `serverNames`
//! port. The peek must never panic, and what the proxy relies on must hold
//! for every prefix: a decision is final (more bytes never turn a refusal
//! into an allow or the reverse, or change the name), and `NeedMore(n)`
//! holds for every shorter prefix, within the 64 KiB cap.
#![no_main]

use http_proxy::sni::{peek_client_hello, Hello, MAX_CLIENT_HELLO_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = peek_client_hello(data);
    let mut cut = 0;
    loop {
        match peek_client_hello(&data[..cut]) {
            Hello::NeedMore(until) => {
                assert!(until > cut && until <= MAX_CLIENT_HELLO_BYTES, "{cut} -> {until}");
                for shorter in cut + 1..until.min(data.len() + 1) {
                    assert!(matches!(peek_client_hello(&data[..shorter]), Hello::NeedMore(_)));
                }
                if until > data.len() {
                    assert!(matches!(whole, Hello::NeedMore(_)));
                    return;
                }
                cut = until;
            }
            decided => {
                assert_eq!(decided, whole, "decided at {cut}");
                return;
            }
        }
    }
});
