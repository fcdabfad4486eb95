//! Listeners, connections and forwarding.
//!
//! The proxy runs on worker threads of its own (one per core by default),
//! each a single-threaded tokio runtime with its own listener per family,
//! all members of one `SO_REUSEPORT` group: the kernel spreads connections
//! over the workers, and a connection's task and the task driving its
//! upstream connection live on the worker that accepted it, so a request
//! and its response never wake another thread.
//!
//! Each accepted connection is its own task, served by hyper's HTTP/1
//! server: requests on it are checked one by one, and the allowed ones go
//! over one upstream connection to the original destination, opened on the
//! first allowed request (so a client whose requests are all denied never
//! reaches the destination). Bodies stream both ways; nothing is buffered
//! whole, so large bodies cost no memory and a slow client only holds its
//! own task.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use handover::Inherited;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use policy::rules::HeaderEdit;
use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::check::{check_request, RequestCheck};
use crate::normalize::normalize_target;
use crate::{
    Authorization, HttpEvent, HttpPolicy, HttpProxy, HttpVerdict, Parties, RuleSet, ServerNameSet,
};

/// A response's body: the destination's, streamed, or the proxy's own
/// short text (no box per response).
type Body = Either<Incoming, Full<Bytes>>;

/// The most a request's head (request line and headers) may take; larger
/// ones get a 431. Envoy's default is 60 KiB.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A transparent TCP listener on `addr` (TPROXY delivers connections for
/// any destination to it; `local_addr` of each is the original one), a
/// member of the `SO_REUSEPORT` group of its address (only sockets of the
/// same user can join it).
fn transparent_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv4() {
        socket.set_ip_transparent_v4(true)?;
    } else {
        socket.set_only_v6(true)?;
        socket.set_ip_transparent_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// How long open connections get to finish their request in hand after
/// shutdown.
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The proxy's bound listeners: per worker, its listener of each family.
pub struct Listeners {
    per_worker: Vec<Vec<std::net::TcpListener>>,
}

/// The transparent listeners on `port`: IPv4 and, if `ipv6`, IPv6, for
/// `workers` worker threads (0: one per core, at most 8). Fails at once if
/// one cannot be set up (e.g. no CAP_NET_ADMIN).
pub fn bind(port: u16, ipv6: bool, workers: usize) -> io::Result<Listeners> {
    bind_inheriting(port, ipv6, workers, &mut Inherited::default())
}

/// As [`bind`], but each listener a previous agent handed over (same
/// address) is used instead of a new one: connections waiting in its accept
/// queue are served (see the `handover` crate).
pub fn bind_inheriting(
    port: u16,
    ipv6: bool,
    workers: usize,
    inherited: &mut Inherited,
) -> io::Result<Listeners> {
    let mut addrs = vec![SocketAddr::from(([0, 0, 0, 0], port))];
    if ipv6 {
        addrs.push(SocketAddr::from(([0u16; 8], port)));
    }
    let per_worker = (0..workers::count(workers))
        .map(|_| {
            addrs
                .iter()
                .map(|a| match inherited.take(socket2::Type::STREAM, *a) {
                    Some(listener) => Ok(listener.into()),
                    None => transparent_listener(*a),
                })
                .collect()
        })
        .collect::<io::Result<_>>()?;
    Ok(Listeners { per_worker })
}

impl Listeners {
    /// The listening sockets, for handing over to a successor.
    pub fn sockets(&self) -> Vec<BorrowedFd<'_>> {
        self.per_worker.iter().flatten().map(AsFd::as_fd).collect()
    }
}

/// Binds, then serves until `shutdown` (see [`serve_on`]).
pub async fn serve<P: HttpPolicy>(
    proxy: Arc<HttpProxy<P>>,
    port: u16,
    ipv6: bool,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_on(proxy, bind(port, ipv6, 0)?, shutdown).await
}

/// Serves on bound listeners until `shutdown`, then drains: stops
/// accepting, lets each open connection finish the request in hand (hyper's
/// graceful shutdown) and waits up to [`DRAIN`] for them. Fails if a
/// listener fails (the other workers are stopped and drained first).
///
/// The workers are threads of their own ([`workers::run`]); they inherit
/// the calling thread's network namespace, where they open upstream
/// connections.
pub async fn serve_on<P: HttpPolicy>(
    proxy: Arc<HttpProxy<P>>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let serve = move |sockets, closing| worker(proxy.clone(), sockets, closing);
    workers::run("tollgate-http", listeners.per_worker, serve, shutdown).await
}

/// One worker: accepts on its listeners until `closing`, then drains.
async fn worker<P: HttpPolicy>(
    proxy: Arc<HttpProxy<P>>,
    sockets: Vec<std::net::TcpListener>,
    closing: CancellationToken,
) -> io::Result<()> {
    let connections = TaskTracker::new();
    let mut tasks = tokio::task::JoinSet::new();
    for socket in sockets {
        tasks.spawn(accept_loop(
            proxy.clone(),
            TcpListener::from_std(socket)?,
            connections.clone(),
            closing.clone(),
        ));
    }
    let result = tokio::select! {
        _ = closing.cancelled() => Ok(()),
        Some(result) = tasks.join_next() => match result {
            Ok(Err(e)) => Err(e),
            _ => Err(io::Error::other("an HTTP listener stopped")),
        },
    };
    tasks.abort_all();
    closing.cancel();
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "HTTP connections still open after the drain period"
        );
    }
    result
}

/// Serves connections from an already bound listener (tests use a plain
/// one; the agent's are transparent), each on a task `connections` tracks;
/// `closing` asks them to finish.
pub async fn accept_loop<P: HttpPolicy>(
    proxy: Arc<HttpProxy<P>>,
    listener: TcpListener,
    connections: TaskTracker,
    closing: CancellationToken,
) -> io::Result<()> {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors and the like: wait a little rather than spin.
            Err(e) => {
                tracing::warn!("HTTP proxy accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(server) = stream.local_addr() else {
            continue;
        };
        connections.spawn(serve_until(
            proxy.clone(),
            stream,
            client,
            server,
            closing.clone(),
        ));
    }
}

/// The state of one client connection.
struct Conn<P> {
    proxy: Arc<HttpProxy<P>>,
    parties: Arc<Parties>,
    sets: Vec<RuleSet>,
    /// Whether any rule looks at headers (else they are not gathered).
    reads_headers: bool,
    upstream: Mutex<Option<SendRequest<Incoming>>>,
}

/// Serves one client connection whose original destination is `server`
/// (for a transparent socket, its local address).
pub async fn serve_connection<P: HttpPolicy>(
    proxy: Arc<HttpProxy<P>>,
    stream: TcpStream,
    client: SocketAddr,
    server: SocketAddr,
) {
    serve_until(proxy, stream, client, server, CancellationToken::new()).await
}

/// [`serve_connection`], finishing gracefully (the request in hand, then
/// close) once `closing` is cancelled.
async fn serve_until<P: HttpPolicy>(
    proxy: Arc<HttpProxy<P>>,
    stream: TcpStream,
    client: SocketAddr,
    server: SocketAddr,
    closing: CancellationToken,
) {
    /// What the connection's bytes are checked as.
    enum Checked {
        Requests(Vec<RuleSet>),
        Tls(Vec<ServerNameSet>),
    }
    let (checked, source, destination, pod, direction) =
        match proxy.policy.authorize(client, server) {
            Authorization::Refused { reason } => {
                proxy
                    .metrics
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                proxy.emit(HttpEvent {
                    parties: Arc::new(Parties {
                        client,
                        server,
                        source: None,
                        destination: None,
                        pod: None,
                        direction: "",
                    }),
                    method: None,
                    path: String::new(),
                    host: None,
                    verdict: HttpVerdict::Refused,
                    status: 0,
                    rule: Some(reason),
                    header_edits: Vec::new(),
                });
                // A reset, not a close: the client sees the connection refused
                // rather than an empty reply.
                let _ = SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
                return;
            }
            Authorization::Requests {
                sets,
                source,
                destination,
                pod,
                direction,
            } => (Checked::Requests(sets), source, destination, pod, direction),
            Authorization::Tls {
                sets,
                source,
                destination,
                pod,
                direction,
            } => (Checked::Tls(sets), source, destination, pod, direction),
        };
    proxy.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let parties = Arc::new(Parties {
        client,
        server,
        source,
        destination,
        pod,
        direction,
    });
    let sets = match checked {
        Checked::Requests(sets) => sets,
        Checked::Tls(sets) => {
            // A relayed TLS stream has no request boundary to finish at:
            // shutdown lets it run for the drain period like the others.
            crate::tls::serve_tls(proxy, stream, parties, sets).await;
            return;
        }
    };
    // Responses are written whole; waiting for ACKs (Nagle) only adds latency.
    let _ = stream.set_nodelay(true);
    let reads_headers = sets
        .iter()
        .flat_map(|s| &s.rules)
        .any(|r| !r.headers.is_empty() || !r.header_actions.is_empty());
    let conn = Arc::new(Conn {
        proxy: proxy.clone(),
        parties,
        sets,
        reads_headers,
        upstream: Mutex::new(None),
    });
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(conn.request(req).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(proxy.config.header_timeout)
        // The buffer bound alone is approximate: one read can bring in a
        // whole larger head, which would then be forwarded. The header
        // size bound is checked on every parsed head.
        .max_buf_size(MAX_HEADER_BYTES)
        .max_header_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Malformed requests, timeouts, resets: this connection only.
        tracing::debug!(%client, %server, "HTTP connection ended: {e}");
    }
}

/// The host a request is for: its absolute-form authority or its Host
/// header — which must agree when both are sent, and Host at most once.
fn request_host<B>(req: &Request<B>) -> Result<Option<String>, &'static str> {
    let mut hosts = req.headers().get_all(hyper::header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(h), None) => Some(h.to_str().map_err(|_| "a Host header that is not text")?),
        (Some(_), Some(_)) => return Err("more than one Host header"),
    };
    match (req.uri().authority().map(|a| a.as_str()), header) {
        (Some(authority), Some(header)) if !authority.eq_ignore_ascii_case(header) => {
            Err("the request target's authority and the Host header differ")
        }
        (Some(authority), _) => Ok(Some(authority.to_string())),
        (None, header) => Ok(header.map(str::to_string)),
    }
}

/// Replaces the request's path and query, keeping scheme and authority.
fn set_path<B>(req: &mut Request<B>, path_and_query: &str) -> Result<(), hyper::http::Error> {
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse()?);
    *req.uri_mut() = hyper::Uri::from_parts(parts)?;
    Ok(())
}

/// Makes the changes `headerMatches` mismatch actions asked for.
fn apply_header_edits(
    headers: &mut hyper::HeaderMap,
    edits: &[HeaderEdit],
) -> Result<(), hyper::http::Error> {
    use hyper::header::{HeaderName, HeaderValue};
    for edit in edits {
        match edit {
            HeaderEdit::Logged { .. } => {}
            HeaderEdit::Added { name, value } => {
                headers.append(
                    HeaderName::from_bytes(name.as_bytes())?,
                    HeaderValue::from_str(value)?,
                );
            }
            HeaderEdit::Removed { name } => {
                headers.remove(HeaderName::from_bytes(name.as_bytes())?);
            }
            HeaderEdit::Replaced { name, value } => {
                headers.insert(
                    HeaderName::from_bytes(name.as_bytes())?,
                    HeaderValue::from_str(value)?,
                );
            }
        }
    }
    Ok(())
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

impl<P: HttpPolicy> Conn<P> {
    /// Checks one request and forwards it or answers it; one event either
    /// way. What the event carries is moved into it, not copied.
    async fn request(&self, mut req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let sent = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let target = normalize_target(sent).map(|path| {
            let rewrite = path != sent;
            (path.into_owned(), rewrite)
        });
        let (path, rewrite, host) = match (target, request_host(&req)) {
            (Ok((path, rewrite)), Ok(host)) => (path, rewrite, host),
            (target, host) => {
                // Refused before any rule: what the rules would see is not
                // what the destination would act on.
                let why = match (target, host) {
                    (Err(e), _) => e.to_string(),
                    (_, Err(e)) => e.to_string(),
                    _ => unreachable!("one of them failed"),
                };
                self.proxy
                    .metrics
                    .requests_denied
                    .fetch_add(1, Ordering::Relaxed);
                let path = sent.to_string();
                self.proxy.emit(HttpEvent {
                    parties: self.parties.clone(),
                    method: Some(method),
                    path,
                    host: None,
                    verdict: HttpVerdict::Denied,
                    status: 400,
                    rule: Some(format!("bad request: {why}")),
                    header_edits: Vec::new(),
                });
                return text(StatusCode::BAD_REQUEST, "Bad request\r\n");
            }
        };
        if rewrite {
            // The destination gets exactly what the rules were matched on.
            if let Err(e) = set_path(&mut req, &path) {
                tracing::debug!(
                    "cannot rewrite the request target {} to {path:?}: {e}",
                    req.uri()
                );
                return text(StatusCode::BAD_REQUEST, "Bad request\r\n");
            }
        }
        let headers: Vec<(&str, &str)> = if self.reads_headers {
            req.headers()
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("\u{fffd}")))
                .collect()
        } else {
            Vec::new()
        };
        let check = check_request(
            &self.sets,
            method.as_str(),
            &path,
            host.as_deref(),
            &headers,
        );
        drop(headers);
        let event = |verdict, status: u16, rule, header_edits| HttpEvent {
            parties: self.parties.clone(),
            method: Some(method),
            path,
            host,
            verdict,
            status,
            rule,
            header_edits,
        };
        let (rule, edits) = match check {
            RequestCheck::Denied { set } => {
                self.proxy
                    .metrics
                    .requests_denied
                    .fetch_add(1, Ordering::Relaxed);
                self.proxy
                    .emit(event(HttpVerdict::Denied, 403, Some(set), Vec::new()));
                return text(StatusCode::FORBIDDEN, "Access denied\r\n");
            }
            RequestCheck::Allowed { rule, edits } => (rule, edits),
        };
        let edited: Vec<String> = edits.iter().map(ToString::to_string).collect();
        if let Err(e) = apply_header_edits(req.headers_mut(), &edits) {
            // Validation admits only names and values that convert; should
            // one not, the request must not go on without its change.
            tracing::warn!("cannot apply a header action: {e}");
            self.proxy
                .emit(event(HttpVerdict::Error, 500, rule, edited));
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Header action failed\r\n",
            );
        }
        match self.forward(req).await {
            Ok(response) => {
                self.proxy
                    .metrics
                    .requests_allowed
                    .fetch_add(1, Ordering::Relaxed);
                self.proxy.emit(event(
                    HttpVerdict::Allowed,
                    response.status().as_u16(),
                    rule,
                    edited,
                ));
                response.map(Either::Left)
            }
            Err(e) => {
                tracing::debug!(client = %self.parties.client, server = %self.parties.server, "upstream: {e}");
                self.proxy
                    .metrics
                    .upstream_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.proxy
                    .emit(event(HttpVerdict::Error, 502, rule, edited));
                text(StatusCode::BAD_GATEWAY, "Upstream unavailable\r\n")
            }
        }
    }

    /// Sends `req` over the upstream connection, opening (or reopening, if
    /// the destination closed it) that connection first.
    async fn forward(&self, mut req: Request<Incoming>) -> io::Result<Response<Incoming>> {
        // Protocol upgrades (WebSocket, h2c) would leave HTTP behind and
        // the rules with it: the request goes on as plain HTTP/1.1.
        if req.headers_mut().remove(hyper::header::UPGRADE).is_some() {
            req.headers_mut().remove(hyper::header::CONNECTION);
        }
        let mut upstream = self.upstream.lock().await;
        if upstream.as_ref().is_none_or(|s| s.is_closed()) {
            *upstream = Some(self.connect().await?);
        }
        let sender = upstream.as_mut().expect("just set");
        sender.ready().await.map_err(io::Error::other)?;
        match sender.send_request(req).await {
            Ok(response) => Ok(response),
            Err(e) => {
                *upstream = None;
                Err(io::Error::other(e))
            }
        }
    }

    async fn connect(&self) -> io::Result<SendRequest<Incoming>> {
        let stream = dial(&self.proxy.config, self.parties.client, self.parties.server).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// Connects to the original destination `server` on behalf of `client`:
/// marked so the destination's veth lets it in, and from the client's own
/// address when the config says so.
pub(crate) async fn dial(
    config: &crate::ProxyConfig,
    client: SocketAddr,
    server: SocketAddr,
) -> io::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if config.upstream_mark != 0 {
        SockRef::from(&socket).set_mark(config.upstream_mark)?;
    }
    if config.preserve_source {
        // The destination sees the client's address, so its policy (on
        // this node or another) sees the client's identity. The replies
        // come back to this socket through nftables' `socket` match.
        let s = SockRef::from(&socket);
        if client.is_ipv4() {
            s.set_ip_transparent_v4(true)?;
        } else {
            s.set_ip_transparent_v6(true)?;
        }
        socket.bind(SocketAddr::new(client.ip(), 0))?;
    }
    let stream = tokio::time::timeout(config.connect_timeout, socket.connect(server))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
