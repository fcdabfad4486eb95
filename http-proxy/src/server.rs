//! Listeners and connections.
//!
//! The proxy runs on worker threads of its own (one per core by default),
//! each a single-threaded tokio runtime with its own listener per family,
//! all members of one `SO_REUSEPORT` group: the kernel spreads connections
//! over the workers, and a connection's task (which drives its upstream
//! connection too) lives on the worker that accepted it, so a request and
//! its response never wake another thread.
//!
//! Each accepted connection is its own task: its L3/L4 authorization is
//! asked once, then its requests are served ([`crate::forward`]) or, on a
//! `serverNames` port, its TLS stream is relayed ([`crate::tls`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use handover::Inherited;
use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::forward::Conn;
use crate::{
    Authorization, HttpEvent, HttpPolicy, HttpProxy, HttpVerdict, Parties, RuleSet, ServerNameSet,
};

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
/// accepting, lets each open connection finish the request in hand and waits up to [`DRAIN`] for them. Fails if a
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
    // The proxy writes whole heads and body pieces as they come; waiting
    // for ACKs (Nagle) would only add latency.
    let _ = stream.set_nodelay(true);
    let reads_headers = sets
        .iter()
        .flat_map(|s| &s.rules)
        .any(|r| !r.headers.is_empty() || !r.header_actions.is_empty());
    Conn {
        proxy,
        parties,
        sets,
        reads_headers,
    }
    .serve(stream, closing)
    .await
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
