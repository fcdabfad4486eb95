//! Forwarding to the original destination resolver, over the protocol the
//! pod used, with a deadline. The [`Upstream`] seam lets unit tests use a
//! scripted fake instead of sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

use crate::check::Transport;

/// Why an upstream exchange produced no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No answer before the deadline.
    #[error("upstream {0} timed out")]
    Timeout(SocketAddr),
    /// A socket error talking to the upstream.
    #[error("upstream {server}: {message}")]
    Io { server: SocketAddr, message: String },
}

/// One query/response exchange with a resolver.
#[async_trait::async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// Sends `query` (wire format) to `server` over `transport` and returns
    /// the response bytes whose ID matches the query's.
    async fn exchange(
        &self,
        server: SocketAddr,
        transport: Transport,
        query: &[u8],
    ) -> Result<Vec<u8>, UpstreamError>;

    /// The upstream's own metrics, Prometheus text (none by default).
    fn render_metrics(&self) -> String {
        String::new()
    }
}

/// The real thing. UDP goes through a few long-lived sockets per upstream
/// (no socket setup per query); each query gets a fresh random ID on the
/// wire, responses are matched by ID and source, and the pod's own ID is put
/// back. TCP uses a connection per exchange.
///
/// The sockets are per thread as well as per upstream: the task reading a
/// pool's responses runs on the runtime of the thread that made it, so on
/// the DNS workers' single-threaded runtimes a response wakes only its own
/// thread. A pool whose reader is gone (its runtime shut down) is replaced.
pub struct NetUpstream {
    pub timeout: Duration,
    pools: Mutex<HashMap<(std::thread::ThreadId, SocketAddr), Arc<UdpPool>>>,
    /// Receive errors on the pooled sockets (e.g. ICMP port unreachable
    /// from a resolver that is down): counted, never silently dropped.
    receive_errors: Arc<AtomicU64>,
}

/// The most resolvers with pooled sockets at once: a pod allowed to ask
/// many resolvers cannot make the proxy hold sockets without bound. Past
/// it, the least recently created pool is closed (its in-flight queries
/// finish on their own socket handles).
const MAX_POOLS: usize = 256;

impl std::fmt::Debug for NetUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetUpstream")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for NetUpstream {
    fn default() -> Self {
        Self::new(Duration::from_secs(2))
    }
}

impl NetUpstream {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            pools: Mutex::new(HashMap::new()),
            receive_errors: Arc::default(),
        }
    }

    fn pool(&self, server: SocketAddr) -> std::io::Result<Arc<UdpPool>> {
        let key = (std::thread::current().id(), server);
        let mut pools = self.pools.lock().expect("pool lock");
        if let Some(p) = pools.get(&key) {
            if p.alive.load(Ordering::Relaxed) {
                return Ok(p.clone());
            }
        }
        pools.retain(|_, p| p.alive.load(Ordering::Relaxed));
        if pools.len() >= MAX_POOLS {
            let oldest = pools.iter().min_by_key(|(_, p)| p.created).map(|(k, _)| *k);
            if let Some(k) = oldest {
                pools.remove(&k);
            }
        }
        let pool = Arc::new(UdpPool::new(
            server,
            self.timeout,
            self.receive_errors.clone(),
        )?);
        pools.insert(key, pool.clone());
        Ok(pool)
    }

    /// One query over the pooled sockets. Its deadline is kept by the
    /// socket's reader (see [`sweep_every`]), not by a timer of its own.
    async fn exchange_udp(
        &self,
        server: SocketAddr,
        query: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        let io = io_error(server);
        let deadline = Instant::now() + self.timeout;
        let pool = self.pool(server).map_err(io)?;
        let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.sockets.len();
        let socket = &pool.sockets[i];
        let (tx, rx) = oneshot::channel();
        let wire_id = {
            let mut pending = socket.pending.lock().expect("pending lock");
            if pending.reader_gone {
                return Err(reader_stopped(server));
            }
            let mut id = random_id();
            let mut tries = 0;
            while pending.waiters.contains_key(&id) {
                tries += 1;
                if tries > 64 {
                    return Err(UpstreamError::Io {
                        server,
                        message: "too many queries in flight".into(),
                    });
                }
                id = random_id();
            }
            pending.waiters.insert(
                id,
                Waiter {
                    pod_id: u16::from_be_bytes([query[0], query[1]]),
                    deadline,
                    response: tx,
                },
            );
            if !pending.sweeping {
                pending.sweeping = true;
                socket.sweep.notify_one();
            }
            id
        };
        let _guard = PendingGuard {
            socket,
            id: wire_id,
        };
        let mut wire = query.to_vec();
        wire[..2].copy_from_slice(&wire_id.to_be_bytes());
        // A datagram socket is nearly always writable. A full buffer means
        // datagrams to this resolver are not leaving (e.g. a pod's chosen
        // resolver on the local link that does not exist: the kernel holds
        // them while it resolves the address), and the query fails at
        // once: waiting for room, each query in flight would poll or hold
        // a timer for up to the whole deadline (the socket is not watched
        // for writing, see `PooledSocket::socket`).
        loop {
            match socket.socket.get_ref().send(&wire) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        rx.await.map_err(|_| {
            if Instant::now() >= deadline {
                UpstreamError::Timeout(server)
            } else {
                reader_stopped(server)
            }
        })
    }
}

/// Sockets per upstream server.
const POOL_SOCKETS: usize = 4;

struct UdpPool {
    sockets: Vec<Arc<PooledSocket>>,
    next: AtomicUsize,
    created: std::time::Instant,
    /// False once a reader task has ended (its runtime is gone): the
    /// pool's sockets would never see a response again.
    alive: Arc<AtomicBool>,
}

/// Marks the pool dead when a reader task ends or is dropped with its
/// runtime, and ends its socket's waiting queries ("upstream reader
/// stopped"): nothing else would (their deadline is the reader's sweep).
struct ReaderAlive {
    pool: Arc<AtomicBool>,
    socket: std::sync::Weak<PooledSocket>,
}

impl Drop for ReaderAlive {
    fn drop(&mut self) {
        self.pool.store(false, Ordering::Relaxed);
        if let Some(socket) = self.socket.upgrade() {
            let mut pending = socket.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.reader_gone = true;
            pending.waiters.clear();
        }
    }
}

/// A query waiting for its response.
struct Waiter {
    /// The pod's own ID, put back into the response.
    pod_id: u16,
    /// Past it the waiter is dropped (its query then times out).
    deadline: Instant,
    response: oneshot::Sender<Vec<u8>>,
}

/// The queries waiting on one socket.
#[derive(Default)]
struct Pending {
    /// Wire ID -> the waiting query.
    waiters: HashMap<u16, Waiter>,
    /// Whether the reader is sweeping out waiters past their deadline: from
    /// the first waiter until none is left.
    sweeping: bool,
    /// The reader has ended: no waiter is taken any more.
    reader_gone: bool,
}

/// How often a socket with waiting queries drops those past their
/// deadline: a query times out at most this late. Not a timer per query:
/// registering one woke the worker's runtime again (an `eventfd` write and
/// one more `epoll_wait`) for every query that found no other timer ahead
/// of it, which at light load is each one (BENCHMARKS.md).
fn sweep_every(timeout: Duration) -> Duration {
    (timeout / 16).clamp(Duration::from_millis(5), Duration::from_millis(100))
}

struct PooledSocket {
    /// Watched for reading only: watched for writing too, the release of
    /// every sent datagram (once the resolver has read it) would wake the
    /// worker for nothing while it waits for the answer.
    socket: Arc<AsyncFd<std::net::UdpSocket>>,
    pending: Mutex<Pending>,
    /// Tells the reader that the first query is waiting (start sweeping).
    sweep: Arc<Notify>,
    /// Stops the reader task (and so closes the socket) when the pool goes.
    closed: tokio_util::sync::CancellationToken,
}

impl Drop for PooledSocket {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl UdpPool {
    fn new(
        server: SocketAddr,
        timeout: Duration,
        receive_errors: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let mut sockets = Vec::with_capacity(POOL_SOCKETS);
        let alive = Arc::new(AtomicBool::new(true));
        for _ in 0..POOL_SOCKETS {
            let bind: SocketAddr = if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .unwrap();
            let std_socket = std::net::UdpSocket::bind(bind)?;
            std_socket.connect(server)?;
            std_socket.set_nonblocking(true)?;
            // SAFETY: the AsyncFd owns the socket and so its fd for as long
            // as it is registered; nothing else closes or reuses it.
            let socket = unsafe { AsyncFd::register_with_interest(std_socket, Interest::READABLE) }
                .map_err(std::io::Error::from)?;
            let socket = Arc::new(socket);
            let closed = tokio_util::sync::CancellationToken::new();
            let sweep = Arc::new(Notify::new());
            let pooled = Arc::new(PooledSocket {
                socket: socket.clone(),
                pending: Mutex::default(),
                sweep: sweep.clone(),
                closed: closed.clone(),
            });
            let reader = Arc::downgrade(&pooled);
            let errors = receive_errors.clone();
            let alive = ReaderAlive {
                pool: alive.clone(),
                socket: reader.clone(),
            };
            tokio::spawn(async move {
                let _alive = alive;
                let mut buf = vec![0u8; MAX_UDP];
                // One timer per socket, armed while queries wait.
                let period = sweep_every(timeout);
                let timer = tokio::time::sleep(Duration::ZERO);
                tokio::pin!(timer);
                let mut sweeping = false;
                loop {
                    // A connected socket only receives from the server.
                    let received = tokio::select! {
                        r = recv(&socket, &mut buf) => r,
                        _ = closed.cancelled() => return,
                        () = sweep.notified(), if !sweeping => {
                            sweeping = true;
                            timer.as_mut().reset((Instant::now() + period).into());
                            continue;
                        }
                        () = &mut timer, if sweeping => {
                            let Some(pooled) = reader.upgrade() else {
                                return; // the pool is gone
                            };
                            let mut pending = pooled.pending.lock().expect("pending lock");
                            let now = Instant::now();
                            // Dropped: the query sees its deadline passed.
                            pending.waiters.retain(|_, w| w.deadline > now);
                            if pending.waiters.is_empty() {
                                pending.sweeping = false;
                                sweeping = false;
                            } else {
                                timer.as_mut().reset((now + period).into());
                            }
                            continue;
                        }
                    };
                    let Some(pooled) = reader.upgrade() else {
                        return; // the pool is gone
                    };
                    let n = match received {
                        Ok(n) => n,
                        Err(e) => {
                            // The waiting queries time out (SERVFAIL); a
                            // persistent error must not spin this task.
                            errors.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%server, "upstream receive failed: {e}");
                            drop(pooled);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                    };
                    if n < 12 || buf[2] & 0x80 == 0 {
                        continue; // not a response
                    }
                    let wire_id = u16::from_be_bytes([buf[0], buf[1]]);
                    let waiter = pooled
                        .pending
                        .lock()
                        .expect("pending lock")
                        .waiters
                        .remove(&wire_id);
                    if let Some(waiter) = waiter {
                        let mut response = buf[..n].to_vec();
                        response[..2].copy_from_slice(&waiter.pod_id.to_be_bytes());
                        let _ = waiter.response.send(response);
                    }
                }
            });
            sockets.push(pooled);
        }
        Ok(Self {
            sockets,
            next: AtomicUsize::new(0),
            created: std::time::Instant::now(),
            alive,
        })
    }
}

/// A socket error talking to `server`, as an upstream error.
fn io_error(server: SocketAddr) -> impl Fn(std::io::Error) -> UpstreamError + Copy {
    move |e| UpstreamError::Io {
        server,
        message: e.to_string(),
    }
}

/// A query's socket lost its reader before the query's deadline.
fn reader_stopped(server: SocketAddr) -> UpstreamError {
    UpstreamError::Io {
        server,
        message: "upstream reader stopped".into(),
    }
}

/// One datagram from a pooled socket.
async fn recv(socket: &AsyncFd<std::net::UdpSocket>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut ready = socket.readable().await?;
        if let Ok(received) = ready.try_io(|s| s.get_ref().recv(buf)) {
            return received;
        }
    }
}

/// A cheap, well-spread 16-bit ID (SipHash of a counter and the clock).
fn random_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    thread_local!(static KEYS: std::collections::hash_map::RandomState = std::collections::hash_map::RandomState::new());
    KEYS.with(|k| {
        let mut h = k.build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.finish() as u16
    })
}

const MAX_UDP: usize = 65_535;

/// Removes a pending entry if the exchange ends without its response.
struct PendingGuard<'a> {
    socket: &'a PooledSocket,
    id: u16,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.socket
            .pending
            .lock()
            .expect("pending lock")
            .waiters
            .remove(&self.id);
    }
}

#[async_trait::async_trait]
impl Upstream for NetUpstream {
    async fn exchange(
        &self,
        server: SocketAddr,
        transport: Transport,
        query: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        let io = io_error(server);
        if query.len() < 12 {
            return Err(UpstreamError::Io {
                server,
                message: "query shorter than a DNS header".into(),
            });
        }
        match transport {
            Transport::Udp => self.exchange_udp(server, query).await,
            Transport::Tcp => {
                let work = async {
                    let mut stream = TcpStream::connect(server).await.map_err(io)?;
                    let len = u16::try_from(query.len()).map_err(|_| UpstreamError::Io {
                        server,
                        message: "query too long for TCP framing".into(),
                    })?;
                    let mut framed = Vec::with_capacity(query.len() + 2);
                    framed.extend_from_slice(&len.to_be_bytes());
                    framed.extend_from_slice(query);
                    stream.write_all(&framed).await.map_err(io)?;
                    let n = stream.read_u16().await.map_err(io)? as usize;
                    let mut buf = vec![0u8; n];
                    stream.read_exact(&mut buf).await.map_err(io)?;
                    Ok(buf)
                };
                tokio::time::timeout(self.timeout, work)
                    .await
                    .map_err(|_| UpstreamError::Timeout(server))?
            }
        }
    }

    fn render_metrics(&self) -> String {
        format!(
            "# HELP tollgate_dns_upstream_receive_errors_total Receive errors on the sockets to upstream resolvers\n# TYPE tollgate_dns_upstream_receive_errors_total counter\ntollgate_dns_upstream_receive_errors_total {}\n",
            self.receive_errors.load(Ordering::Relaxed)
        )
    }
}
