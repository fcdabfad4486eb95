//! The proxy in-process on loopback (no root): a fixed policy, a real
//! upstream HTTP server, raw HTTP/1.1 from the client side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_proxy::server::serve_connection;
use http_proxy::{Authorization, HttpPolicy, HttpProxy, HttpVerdict, ProxyConfig, RuleSet};
use policy::rules::{HeaderAction, HttpRule, MismatchAction};
use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Fixed(Authorization);

impl HttpPolicy for Fixed {
    fn authorize(&self, _: SocketAddr, _: SocketAddr) -> Authorization {
        self.0.clone()
    }
}

fn get_only(path: &str) -> Authorization {
    Authorization::Requests {
        sets: vec![RuleSet {
            label: "prod/db-l7 spec.ingress[0]".into(),
            rules: vec![HttpRule {
                method: Some(Regex::new("^(?:GET)$").unwrap()),
                path: Some(Regex::new(&format!("^(?:{path})$")).unwrap()),
                host: None,
                headers: vec![],
                header_actions: vec![],
            }],
        }],
        source: Some("prod/frontend".into()),
        destination: Some("prod/db".into()),
        pod: Some("prod/db".into()),
        direction: "ingress",
    }
}

/// An upstream answering each request with `METHOD PATH` (keep-alive);
/// returns its address and a counter of requests it saw.
async fn upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        // Says so if a protocol upgrade reached it.
                        let upgrade = if req.headers().contains_key(hyper::header::UPGRADE) {
                            " +upgrade"
                        } else {
                            ""
                        };
                        // And every copy of X-Env it got, in order.
                        let env: Vec<&str> = req
                            .headers()
                            .get_all("x-env")
                            .iter()
                            .map(|v| v.to_str().unwrap())
                            .collect();
                        let env = if env.is_empty() {
                            String::new()
                        } else {
                            format!(" x-env={}", env.join("|"))
                        };
                        let body = format!("{} {}{upgrade}{env}", req.method(), req.uri());
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A proxy in front of `server` with `auth`; its listening address.
async fn proxy(auth: Authorization, server: SocketAddr) -> (SocketAddr, Arc<HttpProxy<Fixed>>) {
    let proxy = HttpProxy::new(Fixed(auth), ProxyConfig::default());
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

/// Sends one request on `conn` and reads one response (Content-Length).
async fn exchange(conn: &mut TcpStream, request: &str) -> (u16, String) {
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, body[..len].to_string());
            }
        }
    }
}

#[tokio::test]
async fn each_request_on_a_kept_alive_connection_is_checked() {
    let (server, seen) = upstream().await;
    let (addr, proxy) = proxy(get_only("/public"), server).await;
    let mut events = proxy.subscribe();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: db\r\n\r\n");
    assert_eq!(
        exchange(&mut conn, &get("/public")).await,
        (200, "GET /public".into())
    );
    assert_eq!(
        exchange(&mut conn, &get("/admin")).await,
        (403, "Access denied\r\n".into())
    );
    assert_eq!(
        exchange(&mut conn, "DELETE /public HTTP/1.1\r\nHost: db\r\n\r\n")
            .await
            .0,
        403
    );
    assert_eq!(
        exchange(&mut conn, &get("/public")).await,
        (200, "GET /public".into())
    );
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "denied requests never reach the server"
    );

    let verdicts: Vec<(HttpVerdict, u16, String)> = (0..4)
        .map(|_| {
            let e = events.try_recv().unwrap();
            (e.verdict, e.status, e.path.clone())
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            (HttpVerdict::Allowed, 200, "/public".into()),
            (HttpVerdict::Denied, 403, "/admin".into()),
            (HttpVerdict::Denied, 403, "/public".into()),
            (HttpVerdict::Allowed, 200, "/public".into()),
        ]
    );
    let m = proxy.metrics.render();
    assert!(
        m.contains("tollgate_http_requests_total{verdict=\"allowed\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_http_requests_total{verdict=\"denied\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn a_refused_connection_gets_no_http_answer() {
    let (server, seen) = upstream().await;
    let (addr, proxy) = proxy(
        Authorization::Refused {
            reason: "prod/db ingress default-deny".into(),
        },
        server,
    )
    .await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let _ = conn
        .write_all(b"GET /public HTTP/1.1\r\nHost: db\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "no bytes come back: {read:?}"
    );
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(proxy
        .metrics
        .render()
        .contains("tollgate_http_connections_refused_total 1"));
}

#[tokio::test]
async fn an_unreachable_destination_is_a_502_and_a_malformed_request_a_400() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (addr, _proxy) = proxy(get_only("/.*"), closed).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        exchange(&mut conn, "GET /x HTTP/1.1\r\nHost: db\r\n\r\n")
            .await
            .0,
        502
    );

    let mut bad = TcpStream::connect(addr).await.unwrap();
    bad.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 12];
    bad.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 400");
    // The other connection is unaffected.
    assert_eq!(
        exchange(&mut conn, "GET /y HTTP/1.1\r\nHost: db\r\n\r\n")
            .await
            .0,
        502
    );
}

#[tokio::test]
async fn an_upgrade_request_is_served_as_plain_http() {
    let (server, _) = upstream().await;
    let (addr, _proxy) = proxy(get_only("/.*"), server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let (status, body) = exchange(
        &mut conn,
        "GET /ws HTTP/1.1\r\nHost: db\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "GET /ws"));
    // Still HTTP on the same connection, still checked.
    assert_eq!(
        exchange(
            &mut conn,
            "POST /ws HTTP/1.1\r\nHost: db\r\nContent-Length: 0\r\n\r\n"
        )
        .await
        .0,
        403
    );
}

#[tokio::test]
async fn path_tricks_are_matched_and_forwarded_in_their_normalised_form() {
    let (server, seen) = upstream().await;
    let (addr, _proxy) = proxy(get_only("/api/v1/.*"), server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: db\r\n\r\n");
    // Control: the rule admits what is under /api/v1/.
    assert_eq!(
        exchange(&mut conn, &get("/api/v1/public")).await,
        (200, "GET /api/v1/public".into())
    );
    // Traversals resolve before the rule sees them.
    for trick in [
        "/api/v1/../../admin",
        "/api/v1/%2e%2e/admin",
        "/api/v1/%2E%2e/../admin",
    ] {
        assert_eq!(exchange(&mut conn, &get(trick)).await.0, 403, "{trick}");
    }
    // One that stays under /api/v1/ is forwarded as the rule saw it.
    assert_eq!(
        exchange(&mut conn, &get("/api/v1/x/../%70ublic//data")).await,
        (200, "GET /api/v1/public/data".into())
    );
    // An encoded slash cannot be normalised safely: 400, and the
    // connection goes on (the request had no body).
    assert_eq!(exchange(&mut conn, &get("/api/v1/..%2fadmin")).await.0, 400);
    assert_eq!(exchange(&mut conn, &get("/api/v1/public")).await.0, 200);
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_absolute_form_target_must_agree_with_the_host_header() {
    let (server, seen) = upstream().await;
    let auth = Authorization::Requests {
        sets: vec![RuleSet {
            label: "r".into(),
            rules: vec![HttpRule {
                method: None,
                path: None,
                host: Some(Regex::new("^(?:good\\.example\\.test)$").unwrap()),
                headers: vec![],
                header_actions: vec![],
            }],
        }],
        source: None,
        destination: None,
        pod: None,
        direction: "egress",
    };
    let (addr, _proxy) = proxy(auth, server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    // Control: the host rule admits its host, in either form.
    assert_eq!(
        exchange(
            &mut conn,
            "GET /x HTTP/1.1\r\nHost: good.example.test\r\n\r\n"
        )
        .await
        .0,
        200
    );
    assert_eq!(
        exchange(
            &mut conn,
            "GET http://good.example.test/x HTTP/1.1\r\nHost: good.example.test\r\n\r\n"
        )
        .await
        .0,
        200
    );
    // The authority decides, and must not disagree with Host.
    let mut c2 = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        exchange(
            &mut c2,
            "PUT http://evil.test/x HTTP/1.1\r\nHost: good.example.test\r\nContent-Length: 0\r\n\r\n"
        )
        .await
        .0,
        400
    );
    let mut c3 = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        exchange(
            &mut c3,
            "GET /x HTTP/1.1\r\nHost: good.example.test\r\nHost: evil.test\r\n\r\n"
        )
        .await
        .0,
        400,
        "two Host headers"
    );
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_header_rule_holds_for_every_copy_of_the_header() {
    let (server, seen) = upstream().await;
    let auth = Authorization::Requests {
        sets: vec![RuleSet {
            label: "r".into(),
            rules: vec![HttpRule {
                method: None,
                path: None,
                host: None,
                headers: vec![policy::rules::HeaderMatch {
                    name: "X-Token".into(),
                    value: Some("secret".into()),
                }],
                header_actions: vec![],
            }],
        }],
        source: None,
        destination: None,
        pod: None,
        direction: "ingress",
    };
    let (addr, _proxy) = proxy(auth, server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        exchange(
            &mut conn,
            "GET /x HTTP/1.1\r\nHost: a\r\nX-Token: secret\r\n\r\n"
        )
        .await
        .0,
        200,
        "control"
    );
    assert_eq!(
        exchange(
            &mut conn,
            "GET /x HTTP/1.1\r\nHost: a\r\nX-Token: secret\r\nX-Token: other\r\n\r\n"
        )
        .await
        .0,
        403
    );
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// `headerMatches` with a `mismatch` action (Cilium: the rule still
/// matches, the request is changed): what the destination gets for a
/// request without the header, with another value, and with the wanted one;
/// and what the event says.
#[tokio::test]
async fn header_mismatch_actions_change_what_the_destination_gets() {
    let (server, seen) = upstream().await;
    let auth = |on_mismatch| Authorization::Requests {
        sets: vec![RuleSet {
            label: "r".into(),
            rules: vec![HttpRule {
                method: Some(Regex::new("^(?:GET)$").unwrap()),
                path: None,
                host: None,
                headers: vec![],
                header_actions: vec![HeaderAction {
                    name: "X-Env".into(),
                    value: Some("prod".into()),
                    on_mismatch,
                }],
            }],
        }],
        source: None,
        destination: None,
        pod: None,
        direction: "egress",
    };
    let cases = [
        // (action, header lines sent, what the destination sees, event)
        (MismatchAction::Log, "", "", vec!["X-Env: mismatch logged"]),
        (
            MismatchAction::Log,
            "X-Env: dev\r\n",
            " x-env=dev",
            vec!["X-Env: mismatch logged"],
        ),
        (
            MismatchAction::Log,
            "X-Env: prod\r\n",
            " x-env=prod",
            vec![],
        ),
        (
            MismatchAction::Add,
            "",
            " x-env=prod",
            vec!["X-Env: added \"prod\""],
        ),
        (
            MismatchAction::Add,
            "X-Env: dev\r\n",
            " x-env=dev|prod",
            vec!["X-Env: added \"prod\""],
        ),
        (
            MismatchAction::Add,
            "X-Env: prod\r\n",
            " x-env=prod",
            vec![],
        ),
        (MismatchAction::Delete, "", "", vec![]),
        (
            MismatchAction::Delete,
            "X-Env: dev\r\nx-env: qa\r\n",
            "",
            vec!["X-Env: removed"],
        ),
        (
            MismatchAction::Delete,
            "X-Env: prod\r\n",
            " x-env=prod",
            vec![],
        ),
        (
            MismatchAction::Replace,
            "",
            " x-env=prod",
            vec!["X-Env: replaced by \"prod\""],
        ),
        (
            MismatchAction::Replace,
            "X-Env: dev\r\nX-Env: qa\r\n",
            " x-env=prod",
            vec!["X-Env: replaced by \"prod\""],
        ),
        (
            MismatchAction::Replace,
            "X-Env: prod\r\n",
            " x-env=prod",
            vec![],
        ),
    ];
    for (action, sent, expected, edits) in cases {
        let (addr, proxy) = proxy(auth(action), server).await;
        let mut events = proxy.subscribe();
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let (status, body) = exchange(
            &mut conn,
            &format!("GET /x HTTP/1.1\r\nHost: a\r\n{sent}\r\n"),
        )
        .await;
        assert_eq!(
            (status, body),
            (200, format!("GET /x{expected}")),
            "{action:?} with {sent:?}"
        );
        let event = events.recv().await.unwrap();
        assert_eq!(event.verdict, HttpVerdict::Allowed);
        assert_eq!(event.header_edits, edits, "{action:?} with {sent:?}");
        // The rest of the rule still decides: the action never allows a
        // request the rule would not match.
        let (status, _) = exchange(
            &mut conn,
            &format!("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n{sent}\r\n"),
        )
        .await;
        assert_eq!(status, 403, "{action:?}");
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 12);
}

/// A head over the proxy's bound gets a 431 from the proxy and never reaches
/// the destination, however it arrives (one write here: the case hyper's
/// buffer bound alone let through).
#[tokio::test]
async fn a_head_over_the_limit_is_refused_by_the_proxy() {
    let (server, seen) = upstream().await;
    let (addr, _proxy) = proxy(get_only("/.*"), server).await;
    for size in [
        http_proxy::server::MAX_HEADER_BYTES + 1,
        100 * 1024,
        300 * 1024,
    ] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        );
        let _ = conn.write_all(request.as_bytes()).await;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
            "{size}: {reply}"
        );
    }
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let small = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(60 * 1024)
    );
    assert_eq!(
        exchange(&mut conn, &small).await.0,
        200,
        "control: under the bound"
    );
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
}
