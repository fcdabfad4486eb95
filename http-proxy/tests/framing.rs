//! Where messages end, as the proxy forwards them: request bodies (length
//! and chunked), pipelined requests, `Expect: 100-continue`, and responses
//! relayed as the destination framed them. Above all, request smuggling:
//! a head two parsers could read differently never reaches the destination.
//! In-process on loopback, no root.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_proxy::server::serve_connection;
use http_proxy::{Authorization, HttpPolicy, HttpProxy, ProxyConfig, RuleSet};
use policy::rules::HttpRule;
use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Fixed(Authorization);

impl HttpPolicy for Fixed {
    fn authorize(&self, _: SocketAddr, _: SocketAddr) -> Authorization {
        self.0.clone()
    }
}

/// Requests with a method in `methods` and a path in `paths` are allowed.
fn allow(methods: &str, paths: &str) -> Authorization {
    Authorization::Requests {
        sets: vec![RuleSet {
            label: "prod/api-l7".into(),
            rules: vec![HttpRule {
                method: Some(Regex::new(&format!("^(?:{methods})$")).unwrap()),
                path: Some(Regex::new(&format!("^(?:{paths})$")).unwrap()),
                host: None,
                headers: vec![],
                header_actions: vec![],
            }],
        }],
        source: None,
        destination: None,
        pod: None,
        direction: "egress",
    }
}

/// What the destination (a hyper server: a strict, independent parser)
/// acted on: one line per request, `METHOD TARGET body=BODY` and whether
/// an `Expect` header reached it.
type Seen = Arc<Mutex<Vec<String>>>;

async fn destination() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let expect = req.headers().contains_key("expect");
                            let line = format!("{} {}", req.method(), req.uri());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let line = format!(
                                "{line} body={}{}",
                                String::from_utf8_lossy(&body),
                                if expect { " +expect" } else { "" }
                            );
                            log.lock().unwrap().push(line.clone());
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(line)),
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

/// A destination that answers every request head (no bodies) with the
/// next of `responses`, byte for byte, and closes after the last.
async fn scripted(responses: Vec<&'static str>) -> SocketAddr {
    recording(responses).await.0
}

/// [`scripted`], also keeping each request head as it arrived.
async fn recording(responses: Vec<&'static str>) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Seen::default();
    let log = heads.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        for response in responses {
            while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            let end = String::from_utf8_lossy(&got).find("\r\n\r\n").unwrap() + 4;
            let head: Vec<u8> = got.drain(..end).collect();
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            stream.write_all(response.as_bytes()).await.unwrap();
        }
    });
    (addr, heads)
}

async fn proxy(auth: Authorization, server: SocketAddr) -> SocketAddr {
    let proxy: Arc<HttpProxy<Fixed>> = HttpProxy::new(Fixed(auth), ProxyConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, client) = listener.accept().await.unwrap();
            tokio::spawn(serve_connection(proxy.clone(), stream, client, server));
        }
    });
    addr
}

/// Writes `bytes`, then reads until the connection closes or goes quiet
/// for half a second: all the client got.
async fn send(conn: &mut TcpStream, bytes: &str) -> String {
    conn.write_all(bytes.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), conn.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the peer has closed the connection.
async fn closed(conn: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), conn.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn statuses(replies: &str) -> Vec<&str> {
    replies
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &replies[i + 9..i + 12])
        .collect()
}

const HIDDEN: &str = "GET /admin HTTP/1.1\r\nHost: api\r\n\r\n";

/// The classic desyncs (CL.TE, TE.CL, TE.TE and their relatives): each
/// hides `GET /admin` where one parser sees a body and another a request.
/// The control shows the hidden request is one the destination acts on when
/// it arrives as a request; through the proxy, each carrier is refused with
/// a 400 before anything is forwarded, and the connection closes.
#[tokio::test]
async fn smuggling_heads_are_refused_and_nothing_of_them_forwarded() {
    let (server, seen) = destination().await;
    // Control: sent straight to the destination, the hidden request is served.
    let mut direct = TcpStream::connect(server).await.unwrap();
    assert!(send(&mut direct, HIDDEN).await.starts_with("HTTP/1.1 200"));
    assert_eq!(seen.lock().unwrap().as_slice(), ["GET /admin body="]);
    seen.lock().unwrap().clear();

    let addr = proxy(allow("GET|POST", "/public"), server).await;
    // Control: a plain POST with a body goes through, body and all.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let reply = send(
        &mut conn,
        "POST /public HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(statuses(&reply), ["200"], "{reply}");
    assert_eq!(seen.lock().unwrap().as_slice(), ["POST /public body=hello"]);
    seen.lock().unwrap().clear();

    let chunked_hiding = format!("0\r\n\r\n{HIDDEN}");
    let len = chunked_hiding.len();
    let carriers = [
        // CL.TE: a front end going by Content-Length forwards all of it.
        format!("POST /public HTTP/1.1\r\nHost: api\r\nContent-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_hiding}"),
        // TE.CL, headers the other way round.
        format!("POST /public HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunked_hiding}"),
        // TE.TE: a coding one parser ignores and another does not.
        format!("POST /public HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{chunked_hiding}"),
        format!("POST /public HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: xchunked\r\n\r\n{chunked_hiding}"),
        format!("POST /public HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{chunked_hiding}"),
        format!("POST /public HTTP/1.1\r\nHost: api\r\nTransfer-Encoding : chunked\r\n\r\n{chunked_hiding}"),
        format!("POST /public HTTP/1.1\r\nHost: api\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n{chunked_hiding}"),
        // Two lengths: which one wins decides where the hidden request starts.
        format!("POST /public HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{HIDDEN}", HIDDEN.len()),
        format!("POST /public HTTP/1.1\r\nHost: api\r\nContent-Length: 0, {}\r\n\r\n{HIDDEN}", HIDDEN.len()),
        format!("POST /public HTTP/1.1\r\nHost: api\r\nContent-Length: +{}\r\n\r\n{HIDDEN}", HIDDEN.len()),
        // A length or coding spelt with '_', which some servers fold into '-'.
        format!("POST /public HTTP/1.1\r\nHost: api\r\nContent_Length: {}\r\n\r\n{HIDDEN}", HIDDEN.len()),
        format!("POST /public HTTP/1.1\r\nHost: api\r\nTransfer_Encoding: chunked\r\n\r\n{chunked_hiding}"),
        // A length no signed 64-bit parser reads.
        format!("POST /public HTTP/1.1\r\nHost: api\r\nContent-Length: 9223372036854775808\r\n\r\n{HIDDEN}"),
        // HTTP/1.0 has no chunked coding: a 1.0 parser takes no body.
        format!("POST /public HTTP/1.0\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_hiding}"),
    ];
    for carrier in carriers {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let reply = send(&mut conn, &carrier).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{carrier:?}: {reply}");
        assert!(closed(&mut conn).await, "{carrier:?}: left open");
        assert!(
            seen.lock().unwrap().is_empty(),
            "{carrier:?} reached the destination: {:?}",
            seen.lock().unwrap()
        );
    }
}

/// A destination that keeps every byte it gets and never answers; with
/// how many of its connections have ended.
type Sunk = Arc<Mutex<(Vec<u8>, usize)>>;

async fn sink() -> (SocketAddr, Sunk) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Sunk::default();
    let log = got.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                    log.lock().unwrap().0.extend_from_slice(&chunk[..n]);
                }
                log.lock().unwrap().1 += 1;
            });
        }
    });
    (addr, got)
}

/// A chunked body whose chunks lie about their size is cut where the lie
/// starts: what went ahead was well-formed, no byte of the hidden request
/// reaches the destination, and the client gets a 400.
#[tokio::test]
async fn a_malformed_chunked_body_ends_the_connection_mid_body() {
    let (server, got) = sink().await;
    let addr = proxy(allow("GET|POST", "/public"), server).await;
    for (i, body) in [
        // The size says 2, the data runs on into a hidden request.
        format!("2\r\nhello\r\n0\r\n\r\n{HIDDEN}"),
        // A size that is not hex, and one with a bare LF.
        format!("5x\r\nhello\r\n0\r\n\r\n{HIDDEN}"),
        format!("5\nhello\r\n0\r\n\r\n{HIDDEN}"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let reply = send(
            &mut conn,
            &format!(
                "POST /public HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            ),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{body:?}: {reply}");
        assert!(closed(&mut conn).await);
        // Everything the destination got, once the proxy has closed on it.
        for _ in 0..100 {
            if got.lock().unwrap().1 > i {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (bytes, ended) = &mut *got.lock().unwrap();
        assert_eq!(*ended, i + 1, "the destination's connection was closed");
        let forwarded = String::from_utf8_lossy(bytes).into_owned();
        assert!(!forwarded.contains("/admin"), "{body:?}: {forwarded:?}");
        bytes.clear();
    }
}

/// A chunked body, then a pipelined request and a denied one, in one
/// write: each is checked on its own and the bodies end where the chunks
/// say.
#[tokio::test]
async fn pipelined_requests_after_a_chunked_body_are_checked_one_by_one() {
    let (server, seen) = destination().await;
    let addr = proxy(allow("GET|POST", "/public"), server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let reply = send(
        &mut conn,
        "POST /public HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n\
         GET /admin HTTP/1.1\r\nHost: api\r\n\r\n\
         GET /public HTTP/1.1\r\nHost: api\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), ["200", "403", "200"], "{reply}");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["POST /public body=hello world", "GET /public body="]
    );
}

/// `Expect: 100-continue`: the client gets its 100 from the proxy once the
/// request is allowed, the destination the body (not the expectation);
/// a denied request gets its 403 without the body being asked for.
#[tokio::test]
async fn a_client_waiting_for_100_continue_gets_it_when_allowed() {
    let (server, seen) = destination().await;
    let addr = proxy(allow("POST", "/public"), server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let interim = send(
        &mut conn,
        "POST /public HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    let reply = send(&mut conn, "hello").await;
    assert_eq!(statuses(&reply), ["200"], "{reply}");
    assert_eq!(seen.lock().unwrap().as_slice(), ["POST /public body=hello"]);

    let mut denied = TcpStream::connect(addr).await.unwrap();
    let reply = send(
        &mut denied,
        "POST /admin HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), ["403"], "{reply}");
    assert!(
        closed(&mut denied).await,
        "the unread body ends the connection"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// Responses go back as the destination framed them: an interim 103, a
/// chunked body with trailers, a HEAD answer with a length and no body, a
/// 204; a response delimited by the close closes the client's connection
/// too.
#[tokio::test]
async fn responses_are_relayed_as_framed() {
    let responses = vec![
        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 200 OK\r\n\r\nuntil the close",
    ];
    let server = scripted(responses.clone()).await;
    let addr = proxy(allow("GET|HEAD", "/.*"), server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let get = |method: &str| format!("{method} /x HTTP/1.1\r\nHost: api\r\n\r\n");
    for (method, response) in ["GET", "GET", "HEAD", "GET"].iter().zip(&responses) {
        assert_eq!(send(&mut conn, &get(method)).await, *response, "{method}");
    }
    assert_eq!(send(&mut conn, &get("GET")).await, responses[4]);
    assert!(closed(&mut conn).await);
}

/// A response two parsers could frame differently is not relayed: 502.
#[tokio::test]
async fn an_ambiguous_response_is_a_502() {
    for response in [
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    ] {
        let server = scripted(vec![response]).await;
        let addr = proxy(allow("GET", "/.*"), server).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let reply = send(&mut conn, "GET /x HTTP/1.1\r\nHost: api\r\n\r\n").await;
        assert_eq!(statuses(&reply), ["502"], "{response:?}: {reply}");
    }
}

/// HTTP/1.0 without keep-alive: one exchange, then the proxy closes.
#[tokio::test]
async fn an_http_1_0_client_gets_one_response_and_a_close() {
    let (server, seen) = destination().await;
    let addr = proxy(allow("GET", "/public"), server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let reply = send(&mut conn, "GET /public HTTP/1.0\r\nHost: api\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(closed(&mut conn).await);
    assert_eq!(seen.lock().unwrap().as_slice(), ["GET /public body="]);
}

/// The framing headers reach the destination in one canonical form,
/// however the client spelt them: the destination frames the body as the
/// proxy did.
#[tokio::test]
async fn framing_headers_are_forwarded_canonical() {
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (server, heads) = recording(vec![ok, ok]).await;
    let addr = proxy(allow("POST", "/public"), server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let reply = send(
        &mut conn,
        "POST /public HTTP/1.1\r\nHost: api\r\ncontent-length:  007\r\n\r\nabcdefg\
         POST /public HTTP/1.1\r\nHost: api\r\ntransfer-encoding: ChUnKeD\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), ["200", "200"], "{reply}");
    let heads = heads.lock().unwrap();
    assert!(
        heads[0].contains("\r\nContent-Length: 7\r\n"),
        "{:?}",
        heads[0]
    );
    assert!(
        heads[1].contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{:?}",
        heads[1]
    );
}

/// A fragment or an authority URI parsers split differently: what the rule
/// would see (`/admin#.css` ending in `.css`, a path `/public` after
/// `http://h#`) is not what the destination would act on (`/admin`, `/`).
/// Control: the same rule admits a plain request.
#[tokio::test]
async fn targets_parsers_disagree_on_are_refused() {
    let (server, seen) = destination().await;
    let addr = proxy(allow("GET", r"/public(/.*)?|/.*\.css"), server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let reply = send(&mut conn, "GET /style.css HTTP/1.1\r\nHost: api\r\n\r\n").await;
    assert_eq!(statuses(&reply), ["200"], "control: {reply}");
    // The destination's parser drops the fragment: it would serve /admin.
    let direct = destination().await;
    let mut raw = TcpStream::connect(direct.0).await.unwrap();
    send(&mut raw, "GET /admin#.css HTTP/1.1\r\nHost: api\r\n\r\n").await;
    assert_eq!(direct.1.lock().unwrap().as_slice(), ["GET /admin body="]);
    for request in [
        "GET /admin#.css HTTP/1.1\r\nHost: api\r\n\r\n",
        "GET http://h#/public HTTP/1.1\r\nHost: h#\r\n\r\n",
        "GET http://h\\admin#/public HTTP/1.1\r\nHost: h\\admin\r\n\r\n",
        "GET http://h%2Fx/public HTTP/1.1\r\nHost: h%2Fx\r\n\r\n",
        "GET /public HTTP/1.1\r\nHost: api#x\r\n\r\n",
        // Under /public for the rule; /admin for Tomcat (`..;`) and IIS (`\`).
        "GET /public/..;/admin HTTP/1.1\r\nHost: api\r\n\r\n",
        "GET /public/..\\admin HTTP/1.1\r\nHost: api\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let reply = send(&mut conn, request).await;
        assert_eq!(statuses(&reply), ["400"], "{request:?}: {reply}");
    }
    assert_eq!(seen.lock().unwrap().as_slice(), ["GET /style.css body="]);
}

/// A header action on a framing header (policy validation refuses it; the
/// proxy holds even if one got through): the destination would frame the
/// body otherwise, and the hidden request behind it would be served.
#[tokio::test]
async fn a_header_action_never_reframes_a_request() {
    use policy::rules::{HeaderAction, MismatchAction};
    let (server, seen) = destination().await;
    let rule = |name: &str| Authorization::Requests {
        sets: vec![RuleSet {
            label: "prod/api-l7".into(),
            rules: vec![HttpRule {
                method: Some(Regex::new("^(?:POST)$").unwrap()),
                path: Some(Regex::new("^(?:/public)$").unwrap()),
                host: None,
                headers: vec![],
                header_actions: vec![HeaderAction {
                    name: name.into(),
                    value: Some("0".into()),
                    on_mismatch: MismatchAction::Replace,
                }],
            }],
        }],
        source: None,
        destination: None,
        pod: None,
        direction: "egress",
    };
    let request = format!(
        "POST /public HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\n\r\n{HIDDEN}",
        HIDDEN.len()
    );
    // Control: were the length rewritten to 0, the destination would serve
    // the body as a request.
    let mut direct = TcpStream::connect(server).await.unwrap();
    let reframed = request.replacen(
        &format!("Content-Length: {}", HIDDEN.len()),
        "Content-Length: 0",
        1,
    );
    let reply = send(&mut direct, &reframed).await;
    assert_eq!(statuses(&reply), ["200", "200"], "{reply}");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["POST /public body=", "GET /admin body="]
    );
    seen.lock().unwrap().clear();
    // Control: an action on another header changes it and nothing else.
    let addr = proxy(rule("X-Env"), server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let reply = send(&mut conn, &request).await;
    assert_eq!(statuses(&reply), ["200"], "{reply}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    seen.lock().unwrap().clear();
    for name in ["Content-Length", "transfer-encoding", "Host", "Connection"] {
        let addr = proxy(rule(name), server).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let reply = send(&mut conn, &request).await;
        assert_eq!(statuses(&reply), ["500"], "{name}: {reply}");
        assert!(closed(&mut conn).await, "{name}: the unread body ends it");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

/// The proxy's own answers keep the client's wish to close: an HTTP/1.0
/// request without keep-alive, or `Connection: close`, gets its 403 and
/// the close.
#[tokio::test]
async fn the_proxys_own_answers_close_when_the_client_asks() {
    let (server, _) = destination().await;
    let addr = proxy(allow("GET", "/public"), server).await;
    for request in [
        "GET /admin HTTP/1.0\r\n\r\n",
        "GET /admin HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let reply = send(&mut conn, request).await;
        assert_eq!(statuses(&reply), ["403"], "{request:?}: {reply}");
        assert!(reply.contains("connection: close"), "{reply}");
        assert!(closed(&mut conn).await, "{request:?}");
    }
    // Control: a kept-alive client keeps its connection after a 403.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let reply = send(&mut conn, "GET /admin HTTP/1.1\r\nHost: api\r\n\r\n").await;
    assert_eq!(statuses(&reply), ["403"]);
    assert!(!closed(&mut conn).await);
}

/// Reads from `stream` until a head has arrived: all it read.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a head");
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// A destination that answers before the body is through (a 413 for an
/// upload it will not take) and stops reading: the client gets that
/// answer, not a proxy stuck writing a body nobody reads, and the
/// connection ends (the rest of the body was never read).
#[tokio::test]
async fn an_early_answer_is_relayed_while_the_body_is_still_coming() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_head(&mut stream).await;
        stream
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
            .await
            .unwrap();
        // Holds the connection without reading another byte.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    });
    let addr = proxy(allow("POST", "/public"), server).await;
    let conn = TcpStream::connect(addr).await.unwrap();
    let (mut from_proxy, mut to_proxy) = conn.into_split();
    const BODY: usize = 64 << 20;
    tokio::spawn(async move {
        let head = format!("POST /public HTTP/1.1\r\nHost: api\r\nContent-Length: {BODY}\r\n\r\n");
        let _ = to_proxy.write_all(head.as_bytes()).await;
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..BODY >> 20 {
            if to_proxy.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut reply = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), from_proxy.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        read.is_ok(),
        "no answer and no close in 10 s; got {reply:?}"
    );
    assert_eq!(
        reply,
        "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!"
    );
}

/// An interim answer while the body is still going out (103 Early Hints)
/// is passed on and the body goes on: the destination's final answer, given
/// once it has the whole body, reaches the client.
#[tokio::test]
async fn an_interim_answer_during_the_body_is_passed_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let got = read_head(&mut stream).await;
        stream
            .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
            .await
            .unwrap();
        let end = String::from_utf8_lossy(&got).find("\r\n\r\n").unwrap() + 4;
        let mut body = got[end..].to_vec();
        while body.len() < 5 {
            let mut chunk = [0u8; 16];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the body never came");
            body.extend_from_slice(&chunk[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(&body).await.unwrap();
    });
    let addr = proxy(allow("POST", "/public"), server).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let interim = send(
        &mut conn,
        "POST /public HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\n",
    )
    .await;
    assert_eq!(
        interim,
        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    );
    let reply = send(&mut conn, "hello").await;
    assert_eq!(reply, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
}
