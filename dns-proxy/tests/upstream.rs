//! The pooled UDP upstream against a real UDP server on loopback: responses
//! come back out of order and are routed by wire ID to the right waiter with
//! the pod's own ID restored; silence becomes a timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dns_proxy::{NetUpstream, Transport, Upstream, UpstreamError};
use tokio::net::UdpSocket;

/// A DNS-ish query: 12-byte header (ID first) + a payload byte.
fn query(id: u16, payload: u8) -> Vec<u8> {
    let mut q = vec![0u8; 13];
    q[..2].copy_from_slice(&id.to_be_bytes());
    q[12] = payload;
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_responses_reach_their_own_queries() {
    let server = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = server.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let (n, from) = s.recv_from(&mut buf).await.unwrap();
            let mut resp = buf[..n].to_vec();
            resp[2] |= 0x80; // QR: a response
                             // Later queries are answered first: delay by the payload byte.
            let delay = Duration::from_millis(u64::from(200 - resp[12].min(200)));
            let s = s.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                s.send_to(&resp, from).await.unwrap();
            });
        }
    });
    let up = Arc::new(NetUpstream::default());
    // Many pods use the same query ID at once: the wire IDs must differ.
    let mut tasks = Vec::new();
    for i in 0..100u8 {
        let up = up.clone();
        tasks.push(tokio::spawn(async move {
            let got = up
                .exchange(addr, Transport::Udp, &query(4242, i * 2))
                .await
                .unwrap();
            assert_eq!(
                &got[..2],
                &4242u16.to_be_bytes(),
                "the pod's ID is restored"
            );
            assert_eq!(got[12], i * 2, "the response belongs to this query");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn silence_is_a_timeout() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let up = NetUpstream::new(Duration::from_millis(300));
    let started = Instant::now();
    let err = up
        .exchange(server.local_addr().unwrap(), Transport::Udp, &query(1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}
