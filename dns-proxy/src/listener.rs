//! Transparent listeners (see docs/dns-interception.md): the datapath marks
//! pod DNS, nftables TPROXY delivers it here with its original destination
//! intact.
//!
//! - UDP: `IP_TRANSPARENT` + `IP_RECVORIGDSTADDR` on a wildcard socket; the
//!   original destination comes with each datagram. Replies leave from a
//!   transparent socket bound to that destination (the resolver's address
//!   and port 53), or the pod's resolver library would reject them.
//! - TCP: a transparent listener; `getsockname` of an accepted socket is the
//!   original destination, so replies are right by construction.
//!
//! ## Workers
//! The proxy runs on its own threads, one per core by default, each a
//! single-threaded tokio runtime with its own UDP socket per family, all
//! members of one `SO_REUSEPORT` group: the kernel spreads pods' datagrams
//! over the workers by 4-tuple hash, and everything a query needs after
//! that (its task, the upstream socket and the task reading it, the reply
//! socket) lives on the worker that received it. No query wakes another
//! thread; that cross-thread wake-up was the largest cost of a shared
//! multi-threaded runtime (see BENCHMARKS.md). TCP, rare for DNS, is
//! accepted on the first worker.
//!
//! Every datagram and connection is its own task: no head-of-line blocking.
//! The tasks are tracked: on shutdown the listeners stop, open TCP
//! connections close after the query in hand, and in-flight queries get
//! [`DRAIN`] to finish.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handover::Inherited;
use hickory_proto::rr::Record;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use socket2::{Domain, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::check::{DnsPolicy, Transport};
use crate::handler::{LearnSink, Proxy};
use crate::metrics::Metrics;
use crate::recv::RecvBatch;
use crate::reply::encode;
use crate::upstream::Upstream;

const IPV6_TRANSPARENT: libc::c_int = 75;
const IPV6_RECVORIGDSTADDR: libc::c_int = 74;

/// Idle TCP connections are closed after this long.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a c_int we own and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A socket with the transparent options for `addr`'s family.
fn transparent(
    addr: SocketAddr,
    kind: Type,
    recv_orig_dst: bool,
    reuse_port: bool,
) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, kind, None)?;
    let fd = socket.as_raw_fd();
    if addr.is_ipv4() {
        setsockopt_int(fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
        if recv_orig_dst {
            setsockopt_int(fd, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1)?;
        }
    } else {
        socket.set_only_v6(true)?;
        setsockopt_int(fd, libc::SOL_IPV6, IPV6_TRANSPARENT, 1)?;
        if recv_orig_dst {
            setsockopt_int(fd, libc::SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)?;
        }
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Where the proxy listens: the TPROXY target port, on both families.
#[derive(Debug, Clone, Copy)]
pub struct ListenConfig {
    pub port: u16,
    pub ipv6: bool,
    /// Worker threads (see the module docs); 0: one per available core.
    pub workers: usize,
}

/// The UDP listener's receive buffer.
const UDP_RCVBUF: libc::c_int = 8 << 20;

/// How long in-flight queries get to finish after shutdown.
pub const DRAIN: Duration = Duration::from_secs(5);

/// The proxy's bound sockets: UDP and TCP, IPv4 and (if asked) IPv6.
pub struct Listeners {
    port: u16,
    /// Per worker, its UDP socket of each family.
    udp: Vec<Vec<Socket>>,
    tcp: Vec<std::net::TcpListener>,
}

impl Listeners {
    /// Binds the transparent sockets; fails at once if one cannot be set up
    /// (e.g. no CAP_NET_ADMIN for IP_TRANSPARENT, or the port is taken).
    pub fn bind(config: ListenConfig) -> io::Result<Self> {
        Self::bind_inheriting(config, &mut Inherited::default())
    }

    /// As [`Listeners::bind`], but each socket a previous agent handed over
    /// (same type and address) is used instead of a new one: what queued on
    /// it while no process read is answered (see the `handover` crate).
    /// Workers beyond what was handed over get new sockets, which join the
    /// same `SO_REUSEPORT` group.
    pub fn bind_inheriting(config: ListenConfig, inherited: &mut Inherited) -> io::Result<Self> {
        let mut addrs = vec![SocketAddr::from(([0, 0, 0, 0], config.port))];
        if config.ipv6 {
            addrs.push(SocketAddr::from(([0u16; 8], config.port)));
        }
        let workers = workers::count(config.workers);
        let mut out = Self {
            port: config.port,
            udp: (0..workers).map(|_| Vec::new()).collect(),
            tcp: Vec::new(),
        };
        for addr in addrs {
            for worker in out.udp.iter_mut() {
                // One SO_REUSEPORT group per family: the kernel picks the
                // worker by 4-tuple hash, also for TPROXY's listener
                // lookup. Only sockets of the same user can join a group.
                if let Some(udp) = inherited.take(Type::DGRAM, addr) {
                    worker.push(udp);
                    continue;
                }
                let udp = transparent(addr, Type::DGRAM, true, true)?;
                // Room for bursts while queries are shed: a full queue would
                // drop every pod's datagrams alike. FORCE (root) passes
                // rmem_max; without the capability the plain size applies.
                if setsockopt_int(
                    udp.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    UDP_RCVBUF,
                )
                .is_err()
                {
                    let _ = udp.set_recv_buffer_size(UDP_RCVBUF as usize);
                }
                worker.push(udp);
            }
            let tcp = match inherited.take(Type::STREAM, addr) {
                Some(tcp) => tcp,
                None => {
                    let tcp = transparent(addr, Type::STREAM, false, false)?;
                    tcp.listen(1024)?;
                    tcp
                }
            };
            out.tcp.push(tcp.into());
        }
        Ok(out)
    }

    /// The listening sockets, for handing over to a successor.
    pub fn sockets(&self) -> Vec<BorrowedFd<'_>> {
        let udp = self.udp.iter().flatten().map(AsFd::as_fd);
        udp.chain(self.tcp.iter().map(AsFd::as_fd)).collect()
    }
}

/// Binds, then serves until `shutdown` completes (see [`serve_on`]).
pub async fn serve<P, S, U>(
    proxy: Arc<Proxy<P, S, U>>,
    config: ListenConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    P: DnsPolicy,
    S: LearnSink,
    U: Upstream,
{
    serve_on(proxy, Listeners::bind(config)?, shutdown).await
}

/// Serves on bound listeners until `shutdown` completes, then drains:
/// stops receiving, lets open TCP connections finish the query in hand,
/// and waits up to [`DRAIN`] for in-flight queries. Fails if a listener
/// fails (the other workers are stopped and drained first).
///
/// The workers are threads of their own ([`workers::run`]); they inherit
/// the calling thread's network namespace, where the upstream and reply
/// sockets they open are made.
pub async fn serve_on<P, S, U>(
    proxy: Arc<Proxy<P, S, U>>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    P: DnsPolicy,
    S: LearnSink,
    U: Upstream,
{
    let capacity = Capacity::new(proxy.config.max_in_flight);
    let Listeners { port, udp, tcp } = listeners;
    let mut tcp = Some(tcp);
    // TCP is accepted on the first worker only.
    let shares: Vec<_> = udp
        .into_iter()
        .enumerate()
        .map(|(i, udp)| {
            (
                udp,
                if i == 0 {
                    tcp.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
            )
        })
        .collect();
    let serve = move |(udp, tcp), closing| {
        Worker {
            proxy: proxy.clone(),
            udp,
            tcp,
            port,
            capacity: capacity.clone(),
            closing,
        }
        .serve()
    };
    workers::run("tollgate-dns", shares, serve, shutdown).await
}

/// One worker thread's share of the listeners (see the module docs).
struct Worker<P, S, U> {
    proxy: Arc<Proxy<P, S, U>>,
    udp: Vec<Socket>,
    tcp: Vec<std::net::TcpListener>,
    port: u16,
    capacity: Capacity,
    closing: CancellationToken,
}

impl<P: DnsPolicy, S: LearnSink, U: Upstream> Worker<P, S, U> {
    /// Serves until `closing`, then drains; fails if a listener fails.
    async fn serve(self) -> io::Result<()> {
        let Worker {
            proxy,
            udp,
            tcp,
            port,
            capacity,
            closing,
        } = self;
        let queries = TaskTracker::new();
        let mut loops = tokio::task::JoinSet::new();
        for udp in udp {
            // SAFETY: the AsyncFd owns the socket and so its fd for as long
            // as it is registered (with this worker's reactor); nothing else
            // closes or reuses it.
            let udp = unsafe { AsyncFd::register(udp) }.map_err(io::Error::from)?;
            loops.spawn(udp_loop(
                proxy.clone(),
                udp,
                port,
                queries.clone(),
                capacity.clone(),
            ));
        }
        for tcp in tcp {
            tcp.set_nonblocking(true)?;
            loops.spawn(tcp_loop(
                proxy.clone(),
                TcpListener::from_std(tcp)?,
                port,
                queries.clone(),
                closing.clone(),
                capacity.clone(),
            ));
        }
        let result = tokio::select! {
            _ = closing.cancelled() => Ok(()),
            Some(result) = loops.join_next() => match result {
                Ok(Err(e)) => Err(e),
                _ => Err(io::Error::other("a DNS listener stopped")),
            },
        };
        loops.abort_all();
        queries.close();
        if tokio::time::timeout(DRAIN, queries.wait()).await.is_err() {
            tracing::warn!(
                in_flight = queries.len(),
                "DNS queries still in flight after the drain period"
            );
        }
        result
    }
}

/// The listeners' shared budget of queries in flight (0: unbounded).
#[derive(Clone)]
struct Capacity(Option<Arc<tokio::sync::Semaphore>>);

impl Capacity {
    fn new(max: usize) -> Self {
        Self((max > 0).then(|| Arc::new(tokio::sync::Semaphore::new(max))))
    }

    /// A place, or `None` when full. `Some(None)`: unbounded.
    fn try_take(&self) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
        match &self.0 {
            None => Some(None),
            Some(s) => s.clone().try_acquire_owned().ok().map(Some),
        }
    }
}

/// Reply sockets bound to original destinations, reused across queries.
#[derive(Default)]
struct ReplySockets(Mutex<HashMap<SocketAddr, Arc<std::net::UdpSocket>>>);

impl ReplySockets {
    fn get(&self, from: SocketAddr) -> io::Result<Arc<std::net::UdpSocket>> {
        let mut map = self.0.lock().expect("reply sockets");
        if let Some(s) = map.get(&from) {
            return Ok(s.clone());
        }
        let socket: std::net::UdpSocket = transparent(from, Type::DGRAM, false, false)?.into();
        let socket = Arc::new(socket);
        if map.len() > 1024 {
            map.clear(); // resolvers are few; this only bounds a hostile spread
        }
        map.insert(from, socket.clone());
        Ok(socket)
    }
}

async fn udp_loop<P: DnsPolicy, S: LearnSink, U: Upstream>(
    proxy: Arc<Proxy<P, S, U>>,
    socket: AsyncFd<Socket>,
    own_port: u16,
    queries: TaskTracker,
    capacity: Capacity,
) -> io::Result<()> {
    let replies = Arc::new(ReplySockets::default());
    let mut received = RecvBatch::new();
    let mut batch = ReplyBatch::default();
    loop {
        let mut guard = socket.readable().await?;
        let count = match guard.try_io(|s| received.recv(s.get_ref().as_raw_fd())) {
            Ok(Ok(n)) => {
                // A short batch emptied the queue: wait for the next
                // datagram instead of asking once more to learn that (at
                // light load, a system call per query). Safe: a datagram
                // arriving now is a new readiness event, which this clear
                // does not erase.
                if n < crate::recv::RECV_BATCH {
                    guard.clear_ready();
                }
                n
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        };
        // One clock read for the batch: the time in the proxy counts from
        // when it was read (an answer is aged at its lookup).
        let read_at = std::time::Instant::now();
        for i in 0..count {
            let Some((query, src, orig_dst)) = received.get(i) else {
                Metrics::count(&proxy.metrics.counters.dropped_malformed);
                continue;
            };
            if orig_dst.port() == own_port {
                // Sent to the proxy itself, not redirected. Answering would
                // bind a reply socket to our own port, and TPROXY would then
                // hand every pod's DNS to that socket: one datagram would cut
                // DNS for the node.
                Metrics::count(&proxy.metrics.counters.dropped_direct);
                continue;
            }
            // A cached answer is answered here and now: no task, no hickory;
            // sent with the rest of the batch. (Without a reply socket the
            // full path says why.)
            if let Ok(socket) = replies.get(orig_dst) {
                if let Some(reply) = proxy.answer_from_cache(query, src, orig_dst, read_at) {
                    batch.push(socket, src, reply);
                    continue;
                }
            }
            let Some(permit) = capacity.try_take() else {
                Metrics::count(&proxy.metrics.counters.dropped_overload);
                continue;
            };
            let bytes = query.to_vec();
            let proxy = proxy.clone();
            let replies = replies.clone();
            queries.spawn(async move {
            let _permit = permit;
            let Ok(request) = Request::from_bytes(bytes, src, Protocol::Udp) else {
                Metrics::count(&proxy.metrics.counters.dropped_malformed);
                return;
            };
            let socket = match replies.get(orig_dst) {
                Ok(socket) => socket,
                Err(e) => {
                    // Every query to this resolver would vanish the same
                    // way: say why (rarely: a failing bind repeats).
                    let c = &proxy.metrics.counters.dropped_no_reply_socket;
                    let before = c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if before == 0 || before.is_power_of_two() {
                        tracing::warn!(
                            resolver = %orig_dst,
                            "cannot answer from the resolver's address: {e} (the agent needs CAP_NET_ADMIN and, for port 53, CAP_NET_BIND_SERVICE)"
                        );
                    }
                    return;
                }
            };
            let reply = UdpReply {
                socket,
                to: src,
                max_size: request.max_payload().max(512),
            };
            proxy
                .handler(orig_dst, Transport::Udp)
                .handle_request::<_, TokioTime>(&request, reply)
                .await;
        });
        }
        batch.flush();
        // The queries just handed to tasks, and the upstream readers with
        // their answers, run on this thread too: they get their turn after
        // every batch. A short batch cleared the readiness, so waiting for
        // the next one gives it to them; after a full one this loop yields
        // (readiness alone does not while datagrams keep coming, and a
        // flood would starve them until their deadline). Not after every
        // batch: a yield makes the runtime poll its events once more first,
        // a system call per query at light load.
        if count == crate::recv::RECV_BATCH {
            tokio::task::yield_now().await;
        }
    }
}

/// The cached answers of one receive batch, sent with one `sendmmsg` per
/// reply socket. Under load, each send wakes the asking pod's resolver,
/// which preempts the proxy on a shared core: one wake per batch instead
/// of one per answer.
#[derive(Default)]
struct ReplyBatch {
    replies: Vec<(Arc<std::net::UdpSocket>, SocketAddr, Vec<u8>)>,
}

impl ReplyBatch {
    fn push(&mut self, socket: Arc<std::net::UdpSocket>, to: SocketAddr, reply: Vec<u8>) {
        self.replies.push((socket, to, reply));
    }

    /// Sends everything held, a `sendmmsg` per run of the same socket.
    /// Non-blocking: a reply that does not fit the socket buffer is
    /// dropped, as the network would.
    fn flush(&mut self) {
        let mut rest = &self.replies[..];
        while let Some((socket, ..)) = rest.first() {
            let run = rest
                .iter()
                .take_while(|(s, ..)| Arc::ptr_eq(s, socket))
                .count();
            send_many(socket, &rest[..run]);
            rest = &rest[run..];
        }
        self.replies.clear();
    }
}

fn send_many(
    socket: &std::net::UdpSocket,
    replies: &[(Arc<std::net::UdpSocket>, SocketAddr, Vec<u8>)],
) {
    let addrs: Vec<socket2::SockAddr> = replies
        .iter()
        .map(|(_, to, _)| socket2::SockAddr::from(*to))
        .collect();
    let mut iovs: Vec<libc::iovec> = replies
        .iter()
        .map(|(.., bytes)| libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        })
        .collect();
    let mut messages: Vec<libc::mmsghdr> = addrs
        .iter()
        .zip(iovs.iter_mut())
        .map(|(addr, iov)| {
            // SAFETY: an all-zero mmsghdr is valid; the pointers set below
            // stay alive (addrs, iovs, replies) until sendmmsg returns.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = addr.as_ptr().cast_mut().cast();
            m.msg_hdr.msg_namelen = addr.len();
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut sent = 0;
    while sent < messages.len() {
        // SAFETY: sendmmsg reads `messages[sent..]`, valid as above.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                messages[sent..].as_mut_ptr(),
                (messages.len() - sent) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        // An error is the first message's own (e.g. a full buffer): it is
        // dropped and the rest still go.
        sent += usize::try_from(n).unwrap_or(0).max(1);
    }
}

#[derive(Clone)]
struct UdpReply {
    socket: Arc<std::net::UdpSocket>,
    to: SocketAddr,
    max_size: u16,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode(response, self.max_size);
        // Non-blocking: a full socket buffer drops the reply, as the network would.
        self.socket
            .send_to(&bytes, self.to)
            .map_err(NetError::from)?;
        Ok(info)
    }
}

async fn tcp_loop<P: DnsPolicy, S: LearnSink, U: Upstream>(
    proxy: Arc<Proxy<P, S, U>>,
    listener: TcpListener,
    own_port: u16,
    connections: TaskTracker,
    closing: CancellationToken,
    capacity: Capacity,
) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        let Some(permit) = capacity.try_take() else {
            Metrics::count(&proxy.metrics.counters.dropped_overload);
            continue;
        };
        let proxy = proxy.clone();
        let closing = closing.clone();
        connections.spawn(async move {
            let _permit = permit;
            let Ok(orig_dst) = stream.local_addr() else {
                return;
            };
            if orig_dst.port() == own_port {
                // Connected to the proxy itself, not redirected.
                Metrics::count(&proxy.metrics.counters.dropped_direct);
                return;
            }
            let (mut reader, writer) = stream.into_split();
            let writer = Arc::new(tokio::sync::Mutex::new(writer));
            loop {
                let len = tokio::select! {
                    read = tokio::time::timeout(TCP_IDLE, reader.read_u16()) => match read {
                        Ok(Ok(len)) => len as usize,
                        _ => return, // idle, closed, or broken
                    },
                    _ = closing.cancelled() => return, // shutting down: no new query
                };
                let mut bytes = vec![0u8; len];
                if tokio::time::timeout(TCP_IDLE, reader.read_exact(&mut bytes))
                    .await
                    .is_err()
                {
                    return;
                }
                let Ok(request) = Request::from_bytes(bytes, peer, Protocol::Tcp) else {
                    Metrics::count(&proxy.metrics.counters.dropped_malformed);
                    return; // a stream we cannot parse cannot be resynchronised
                };
                let reply = TcpReply {
                    writer: writer.clone(),
                };
                proxy
                    .handler(orig_dst, Transport::Tcp)
                    .handle_request::<_, TokioTime>(&request, reply)
                    .await;
            }
        });
    }
}

#[derive(Clone)]
struct TcpReply {
    writer: Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
}

#[async_trait::async_trait]
impl ResponseHandler for TcpReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode(response, u16::MAX);
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        self.writer
            .lock()
            .await
            .write_all(&framed)
            .await
            .map_err(NetError::from)?;
        Ok(info)
    }
}
