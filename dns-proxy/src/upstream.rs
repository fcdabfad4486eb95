//! Forwarding to the original destination resolver, over the protocol the
//! pod used, with a deadline. The [`Upstream`] seam lets unit tests use a
//! scripted fake instead of sockets.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

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
}

/// The real thing: a fresh UDP socket or TCP connection per exchange (a
/// fresh source port per query is also the classic spoofing defence).
#[derive(Debug, Clone)]
pub struct NetUpstream {
    pub timeout: Duration,
}

impl Default for NetUpstream {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
        }
    }
}

const MAX_UDP: usize = 65_535;

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
        let work = async {
            match transport {
                Transport::Udp => {
                    let bind: SocketAddr = if server.is_ipv4() {
                        "0.0.0.0:0"
                    } else {
                        "[::]:0"
                    }
                    .parse()
                    .unwrap();
                    let socket = UdpSocket::bind(bind).await.map_err(io)?;
                    socket.connect(server).await.map_err(io)?;
                    socket.send(query).await.map_err(io)?;
                    let mut buf = vec![0u8; MAX_UDP];
                    loop {
                        let n = socket.recv(&mut buf).await.map_err(io)?;
                        // Only a response with our ID counts; anything else is
                        // noise (or spoofing) and we keep waiting.
                        if n >= 12 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 {
                            buf.truncate(n);
                            return Ok(buf);
                        }
                    }
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
}
