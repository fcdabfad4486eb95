//! Forwarding to the original destination resolver, over the protocol the
//! pod used, with a deadline. The [`Upstream`] seam lets unit tests use a
//! scripted fake instead of sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

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
        let pool = Arc::new(UdpPool::new(server, self.receive_errors.clone())?);
        pools.insert(key, pool.clone());
        Ok(pool)
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
/// runtime.
struct ReaderAlive(Arc<AtomicBool>);

impl Drop for ReaderAlive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// A query waiting for its response: the pod's own ID to restore, and
/// where to send the response.
type Waiter = (u16, oneshot::Sender<Vec<u8>>);

struct PooledSocket {
    socket: Arc<UdpSocket>,
    /// Wire ID -> the waiting query.
    pending: Mutex<HashMap<u16, Waiter>>,
    /// Stops the reader task (and so closes the socket) when the pool goes.
    closed: tokio_util::sync::CancellationToken,
}

impl Drop for PooledSocket {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl UdpPool {
    fn new(server: SocketAddr, receive_errors: Arc<AtomicU64>) -> std::io::Result<Self> {
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
            let socket = Arc::new(UdpSocket::from_std(std_socket)?);
            let closed = tokio_util::sync::CancellationToken::new();
            let pooled = Arc::new(PooledSocket {
                socket: socket.clone(),
                pending: Mutex::new(HashMap::new()),
                closed: closed.clone(),
            });
            let reader = Arc::downgrade(&pooled);
            let errors = receive_errors.clone();
            let alive = ReaderAlive(alive.clone());
            tokio::spawn(async move {
                let _alive = alive;
                let mut buf = vec![0u8; MAX_UDP];
                loop {
                    // A connected socket only receives from the server.
                    let received = tokio::select! {
                        r = socket.recv(&mut buf) => r,
                        _ = closed.cancelled() => return,
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
                        .remove(&wire_id);
                    if let Some((pod_id, tx)) = waiter {
                        let mut response = buf[..n].to_vec();
                        response[..2].copy_from_slice(&pod_id.to_be_bytes());
                        let _ = tx.send(response);
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
        let io = |e: std::io::Error| UpstreamError::Io {
            server,
            message: e.to_string(),
        };
        if query.len() < 12 {
            return Err(UpstreamError::Io {
                server,
                message: "query shorter than a DNS header".into(),
            });
        }
        let work = async {
            match transport {
                Transport::Udp => {
                    let pool = self.pool(server).map_err(io)?;
                    let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.sockets.len();
                    let socket = &pool.sockets[i];
                    let pod_id = u16::from_be_bytes([query[0], query[1]]);
                    let (tx, rx) = oneshot::channel();
                    let wire_id = {
                        let mut pending = socket.pending.lock().expect("pending lock");
                        let mut id = random_id();
                        let mut tries = 0;
                        while pending.contains_key(&id) {
                            tries += 1;
                            if tries > 64 {
                                return Err(UpstreamError::Io {
                                    server,
                                    message: "too many queries in flight".into(),
                                });
                            }
                            id = random_id();
                        }
                        pending.insert(id, (pod_id, tx));
                        id
                    };
                    let _guard = PendingGuard {
                        socket,
                        id: wire_id,
                    };
                    let mut wire = query.to_vec();
                    wire[..2].copy_from_slice(&wire_id.to_be_bytes());
                    socket.socket.send(&wire).await.map_err(io)?;
                    rx.await.map_err(|_| UpstreamError::Io {
                        server,
                        message: "upstream reader stopped".into(),
                    })
                }
                Transport::Tcp => {
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
                }
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout(server))?
    }

    fn render_metrics(&self) -> String {
        format!(
            "# HELP tollgate_dns_upstream_receive_errors_total Receive errors on the sockets to upstream resolvers\n# TYPE tollgate_dns_upstream_receive_errors_total counter\ntollgate_dns_upstream_receive_errors_total {}\n",
            self.receive_errors.load(Ordering::Relaxed)
        )
    }
}
