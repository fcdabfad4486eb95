//! Arbitrary bytes as what a client sends the HTTP proxy (request heads,
//! pipelined requests, bodies, garbage), through a real loopback connection
//! to a proxy whose rule is `GET` on `/api/v1/.*` (a prefix) or `/.*\.css`
//! (a suffix, which a fragment or an odd authority could fool) with a
//! header. The proxy must never panic, and every request the upstream (a
//! hyper server, an independent parser) acts on must be one the rule
//! admits, with a target that is already normalised — the upstream never
//! acts on a path the rule did not see.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_proxy::normalize::normalize_target;
use http_proxy::server::serve_connection;
use http_proxy::{Authorization, HttpPolicy, HttpProxy, ProxyConfig, RuleSet};
use libfuzzer_sys::fuzz_target;
use policy::rules::{HeaderMatch, HttpRule};
use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Rule;

impl HttpPolicy for Rule {
    fn authorize(&self, _: SocketAddr, _: SocketAddr) -> Authorization {
        Authorization::Requests {
            sets: vec![RuleSet {
                label: "fuzz".into(),
                rules: vec![HttpRule {
                    method: Some(Regex::new("^(?:GET)$").unwrap()),
                    path: Some(Regex::new(r"^(?:/api/v1/.*|/.*\.css)$").unwrap()),
                    host: None,
                    headers: vec![HeaderMatch {
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
        }
    }
}

struct World {
    rt: tokio::runtime::Runtime,
    proxy: SocketAddr,
    /// (method, target, x-token values) of every request the upstream got.
    seen: Arc<Mutex<Vec<(String, String, Vec<String>)>>>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let proxy = rt.block_on(async {
            let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let server = upstream.local_addr().unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let (s, _) = upstream.accept().await.unwrap();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let tokens = req
                                .headers()
                                .get_all("x-token")
                                .iter()
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                .collect();
                            seen.lock().unwrap().push((req.method().to_string(), req.uri().to_string(), tokens));
                            async { Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
            let p = HttpProxy::new(Rule, ProxyConfig::default());
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let (s, client) = listener.accept().await.unwrap();
                    tokio::spawn(serve_connection(p.clone(), s, client, server));
                }
            });
            addr
        });
        World { rt, proxy, seen }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.seen.lock().unwrap().clear();
    w.rt.block_on(async {
        let Ok(mut c) = TcpStream::connect(w.proxy).await else { return };
        let _ = c.write_all(data).await;
        let _ = c.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut sink)).await;
    });
    for (method, target, tokens) in w.seen.lock().unwrap().iter() {
        assert_eq!(method, "GET", "only GET passes the rule");
        let path = target
            .strip_prefix("http://")
            .or_else(|| target.strip_prefix("https://"))
            .and_then(|t| t.find('/').map(|i| &t[i..]))
            .unwrap_or(target);
        assert_eq!(normalize_target(path).as_deref(), Ok(path), "forwarded target {target:?} is normalised");
        // The rule matches the target with its query, as hyper's `uri` has it.
        assert!(
            path.starts_with("/api/v1/") || path.ends_with(".css"),
            "forwarded {target:?} is one the rule admits"
        );
        assert!(!tokens.is_empty() && tokens.iter().all(|t| t == "secret"), "header rule held: {tokens:?}");
    }
});
