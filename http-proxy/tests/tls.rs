//! `serverNames` in-process on loopback (no root): real ClientHellos from
//! OpenSSL and curl (testdata/tls, made by its capture script) through the
//! proxy to a raw upstream that records what reaches it.
//!
//! Semantics follow Cilium: `pkg/policy/api/l4.go` (`PortRule.ServerNames`,
//! `ServerName`: exact names and a leading `*.` / `**.`),
//! `pkg/policy/api/rule_validation.go` (`PortRule.sanitize`: no empty name,
//! no L7 rules beside serverNames without TLS termination),
//! `pkg/policy/l4.go` (serverNames make the port's parser `tls`: a
//! redirect to the proxy) and cilium/proxy `cilium/network_policy.h`
//! (`SniPattern`: lowercase match; a rule with server names needs the
//! connection's SNI to match one).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_proxy::server::serve_connection;
use http_proxy::sni::{peek_client_hello, Hello};
use http_proxy::{Authorization, HttpPolicy, HttpProxy, HttpVerdict, ProxyConfig, ServerNameSet};
use policy::sni::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/tls")
        .join(name);
    let hex = std::fs::read_to_string(&path).unwrap();
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn real_client_hellos_name_their_server_in_any_split() {
    for (file, want) in [
        ("openssl-tls13-api.test.hex", Some("api.test")),
        ("openssl-tls12-API.Test.hex", Some("API.Test")),
        ("curl-api.test.hex", Some("api.test")),
        ("openssl-no-sni.hex", None),
    ] {
        let bytes = fixture(file);
        let expected = match want {
            Some(name) => Hello::ServerName(name.into()),
            None => Hello::NoServerName,
        };
        assert_eq!(peek_client_hello(&bytes), expected, "{file}");
        for cut in 0..bytes.len() {
            assert!(
                matches!(peek_client_hello(&bytes[..cut]), Hello::NeedMore(_)),
                "{file} cut at {cut}: {:?}",
                peek_client_hello(&bytes[..cut])
            );
        }
    }
}

struct Fixed(Authorization);

impl HttpPolicy for Fixed {
    fn authorize(&self, _: SocketAddr, _: SocketAddr) -> Authorization {
        self.0.clone()
    }
}

fn only(names: &[&str]) -> Authorization {
    Authorization::Tls {
        sets: vec![ServerNameSet {
            label: "prod/payments spec.egress[1]".into(),
            names: names
                .iter()
                .map(|n| ServerName::parse(n).unwrap())
                .collect(),
        }],
        source: Some("prod/payments".into()),
        destination: None,
        pod: Some("prod/payments".into()),
        direction: "egress",
    }
}

/// A raw upstream: counts connections and keeps the first bytes of each,
/// answers `hello back`.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (c, r) = (connections.clone(), received.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = 0;
                // Until the client's first flight is in.
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf[got..]))
                        .await
                {
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                r.lock().unwrap().extend_from_slice(&buf[..got]);
                let _ = stream.write_all(b"hello back").await;
            });
        }
    });
    Upstream {
        addr,
        connections,
        received,
    }
}

async fn proxy(
    auth: Authorization,
    server: SocketAddr,
    config: ProxyConfig,
) -> (SocketAddr, Arc<HttpProxy<Fixed>>) {
    let proxy = HttpProxy::new(Fixed(auth), config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = proxy.clone();
    tokio::spawn(async move {
        loop {
            let (stream, client) = listener.accept().await.unwrap();
            tokio::spawn(serve_connection(p.clone(), stream, client, server));
        }
    });
    (addr, proxy)
}

/// Sends `chunks` (pausing between them), then reads what comes back until
/// the proxy or upstream closes: `Ok(bytes)` or the read error (a reset).
async fn send(addr: SocketAddr, chunks: &[&[u8]], pause: Duration) -> Result<Vec<u8>, String> {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    for chunk in chunks {
        if conn.write_all(chunk).await.is_err() {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
            Err(_) => return Ok(out),
            Ok(Ok(0)) => return Ok(out),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"hello back") {
                    return Ok(out);
                }
            }
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

#[tokio::test]
async fn an_allowed_name_is_relayed_byte_for_byte_and_others_never_reach_the_server() {
    let up = upstream().await;
    let (addr, proxy) = proxy(only(&["api.test"]), up.addr, ProxyConfig::default()).await;
    let mut events = proxy.subscribe();

    // The control: the allowed name passes, the server gets the very bytes.
    let hello = fixture("openssl-tls13-api.test.hex");
    let reply = send(addr, &[&hello], Duration::ZERO).await.unwrap();
    assert_eq!(reply, b"hello back", "allowed hello answered by the server");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    assert_eq!(*up.received.lock().unwrap(), hello, "relayed untouched");
    let e = events.recv().await.unwrap();
    assert_eq!(
        (
            e.verdict,
            e.method.as_ref().map(|m| m.as_str()),
            e.host.as_deref()
        ),
        (HttpVerdict::Allowed, Some("TLS"), Some("api.test"))
    );

    // The same hello split across segments, with pauses: reassembled.
    let (a, b) = hello.split_at(3);
    let (b, c) = b.split_at(100);
    let reply = send(addr, &[a, b, c], Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(reply, b"hello back");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    events.recv().await.unwrap();

    // Refused: another name, no name, plain HTTP, random bytes.
    let refused: [(&str, Vec<u8>); 4] = [
        ("another name", fixture("curl-api.test.hex")),
        ("no name", fixture("openssl-no-sni.hex")),
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n".to_vec(),
        ),
        (
            "random",
            vec![0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0xff, 0xff, 0xff, 0x00],
        ),
    ];
    let (addr_evil, proxy_evil) =
        self::proxy(only(&["evil.test"]), up.addr, ProxyConfig::default()).await;
    let mut evil_events = proxy_evil.subscribe();
    for (what, bytes) in &refused {
        let target = if *what == "another name" {
            addr_evil
        } else {
            addr
        };
        let reply = send(target, &[bytes], Duration::ZERO).await;
        assert!(
            !matches!(&reply, Ok(r) if !r.is_empty()),
            "{what}: the client must get nothing back: {reply:?}"
        );
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        2,
        "refused connections never reach the server"
    );
    let e = evil_events.recv().await.unwrap();
    assert_eq!(e.verdict, HttpVerdict::Denied);
    assert_eq!(
        e.host.as_deref(),
        Some("api.test"),
        "the event names the SNI"
    );
    assert!(e
        .rule
        .as_deref()
        .unwrap()
        .contains("not in the serverNames"));
    for why in ["no server name", "not TLS", "larger than"] {
        let e = events.recv().await.unwrap();
        assert_eq!(e.verdict, HttpVerdict::Denied);
        assert!(e.rule.as_deref().unwrap().contains(why), "{:?}", e.rule);
    }
    let m = proxy.metrics.render();
    assert!(
        m.contains("tollgate_tls_connections_total{verdict=\"allowed\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_tls_connections_total{verdict=\"denied\"} 3"),
        "{m}"
    );
}

#[tokio::test]
async fn a_hello_that_never_completes_is_dropped_after_the_timeout() {
    let up = upstream().await;
    let config = ProxyConfig {
        hello_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let (addr, proxy) = proxy(only(&["api.test"]), up.addr, config).await;
    let mut events = proxy.subscribe();
    let hello = fixture("openssl-tls13-api.test.hex");
    let started = std::time::Instant::now();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(&hello[..hello.len() - 1]).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("the proxy gives up on its own");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without an answer: {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let e = events.recv().await.unwrap();
    assert_eq!(e.verdict, HttpVerdict::Denied);
    assert!(
        e.rule.as_deref().unwrap().contains("within"),
        "{:?}",
        e.rule
    );
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
}
