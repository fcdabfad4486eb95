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
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "not before the deadline: {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

/// A server that answers queries whose payload byte is odd and ignores the
/// rest.
async fn answering_odd_payloads() -> std::net::SocketAddr {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            if n > 12 && buf[12] % 2 == 1 {
                buf[2] |= 0x80;
                server.send_to(&buf[..n], from).await.unwrap();
            }
        }
    });
    addr
}

/// Deadlines are kept by a sweep that runs only while queries wait (no
/// timer per query): after it has gone quiet, the next silent query must
/// still time out, and answered ones in between must not be cut short.
#[tokio::test]
async fn every_silent_query_times_out_also_after_the_sweep_went_quiet() {
    let addr = answering_odd_payloads().await;
    let timeout = Duration::from_millis(200);
    let up = NetUpstream::new(timeout);
    // Rounds enough for every socket of the pool to go quiet and be armed
    // again more than once, whatever the pool's size up to eight.
    for round in 0..17u8 {
        let answered = up.exchange(addr, Transport::Udp, &query(7, 1)).await;
        assert_eq!(answered.unwrap()[12], 1, "round {round}: answered");
        // Long enough for the sweep to find nothing waiting and stop.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            up.exchange(addr, Transport::Udp, &query(7, 2)),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: the silent query never ended"))
        .unwrap_err();
        let waited = started.elapsed();
        assert!(
            matches!(err, UpstreamError::Timeout(_)),
            "round {round}: {err:?}"
        );
        assert!(
            waited >= timeout && waited < timeout + Duration::from_secs(1),
            "round {round}: timed out after {waited:?}"
        );
    }
}

/// Silent and answered queries interleaved on several threads: each silent
/// one times out near its own deadline, each answered one gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_queries_time_out_beside_answered_ones() {
    let addr = answering_odd_payloads().await;
    let timeout = Duration::from_millis(300);
    let up = Arc::new(NetUpstream::new(timeout));
    let mut tasks = Vec::new();
    for i in 0..60u8 {
        let up = up.clone();
        tasks.push(tokio::spawn(async move {
            // Spread over time, so deadlines fall between sweeps.
            tokio::time::sleep(Duration::from_millis(u64::from(i) * 7)).await;
            let started = Instant::now();
            let got = tokio::time::timeout(
                Duration::from_secs(5),
                up.exchange(addr, Transport::Udp, &query(9, i)),
            )
            .await
            .unwrap_or_else(|_| panic!("query {i} never ended"));
            (i, got, started.elapsed())
        }));
    }
    for t in tasks {
        let (i, got, waited) = t.await.unwrap();
        if i % 2 == 1 {
            assert_eq!(got.unwrap()[12], i, "query {i} answered");
        } else {
            assert!(
                matches!(got, Err(UpstreamError::Timeout(_))),
                "query {i}: {got:?}"
            );
            assert!(
                waited >= timeout && waited < timeout + Duration::from_secs(1),
                "query {i} timed out after {waited:?}"
            );
        }
    }
}

/// A query's deadline is kept by its socket's reader: if the reader goes
/// (here its runtime is shut down while the query waits, driven from
/// elsewhere), the query must end at once, not wait for ever.
#[test]
fn a_query_whose_reader_is_gone_ends_at_once() {
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let readers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handle = readers.handle().clone();
    let up = Arc::new(NetUpstream::new(Duration::from_secs(30)));
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The pool (and its reader) is made on `readers`; the query itself
        // is driven by a plain executor on this thread.
        let _in_readers = handle.enter();
        let got = futures::executor::block_on(up.exchange(addr, Transport::Udp, &query(3, 2)));
        let _ = done.send(got);
    });
    // The query is sent: the server has it.
    let mut buf = [0u8; 64];
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    server
        .recv_from(&mut buf)
        .expect("the query reached the server");
    readers.shutdown_background();
    let got = result
        .recv_timeout(Duration::from_secs(5))
        .expect("the query ended when its reader went");
    assert!(
        matches!(&got, Err(UpstreamError::Io { message, .. }) if message.contains("reader stopped")),
        "{got:?}"
    );
}
