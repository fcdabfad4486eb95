//! Socket handover: a running agent passes its listening sockets to the
//! agent that replaces it, so no query is lost while one process gives way
//! to the other (see docs/upgrades.md).
//!
//! The sockets themselves change hands (`SCM_RIGHTS` over a Unix socket),
//! not just their addresses: datagrams and connections that arrive while
//! neither process reads wait in the sockets' queues, and the successor
//! reads them. Binding afresh instead would drop what the old sockets held
//! and, between the two processes, leave the proxy ports without a socket.
//!
//! The exchange, on a Unix socket under the agent's private state dir:
//! 1. The successor, ready to serve, connects and sends [`TAKE`].
//! 2. The running agent stops reading its sockets, finishes the queries in
//!    hand, saves what the successor must know, and replies [`GIVE`] with
//!    the number of sockets and the sockets.
//! 3. The successor finds each socket it needs among them by type and
//!    local address ([`Inherited::take`]) and binds the rest afresh.
//!
//! Nothing here decides when to hand over; the agent does.

mod inherited;

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

pub use inherited::Inherited;

/// The successor's request.
pub const TAKE: &[u8] = b"TOLLGATE-HANDOVER 1 TAKE\n";
/// The start of the running agent's reply; the count of sockets follows.
pub const GIVE: &str = "TOLLGATE-HANDOVER 1 GIVE ";

/// The most sockets one handover carries (an agent has a few per core).
pub const MAX_SOCKETS: usize = 128;

/// How long a connection to the offer gets to send its request: a client
/// that connects and says nothing does not hold the offer.
const REQUEST_WITHIN: Duration = Duration::from_secs(2);

/// The running agent's side: a Unix socket successors connect to.
pub struct Offer {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Offer {
    /// Listens at `path` (a stale socket there is replaced), for the
    /// node's administrator only.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The next successor that asks for the sockets. Connections that do
    /// not send [`TAKE`] in time are closed and waited past.
    pub async fn request(&self) -> io::Result<Request> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            // The socket file is the node administrator's (0600 in a 0700
            // directory); a peer of another user gets nothing either way.
            let own = rustix::process::geteuid().as_raw();
            if stream.peer_cred().map(|c| c.uid()).ok() != Some(own) {
                tracing::warn!(
                    socket = %self.path.display(),
                    "a connection to the handover socket from another user; closed"
                );
                continue;
            }
            let mut line = [0u8; TAKE.len()];
            let mut stream = stream;
            let asked = tokio::time::timeout(REQUEST_WITHIN, async {
                use tokio::io::AsyncReadExt;
                stream.read_exact(&mut line).await
            })
            .await;
            match asked {
                Ok(Ok(_)) if line == TAKE => {
                    let stream = stream.into_std()?;
                    stream.set_nonblocking(false)?;
                    return Ok(Request { stream });
                }
                _ => tracing::warn!(
                    socket = %self.path.display(),
                    "a connection to the handover socket did not ask for the sockets; closed"
                ),
            }
        }
    }
}

/// A successor's request, answered with [`Request::give`].
pub struct Request {
    stream: UnixStream,
}

impl Request {
    /// Sends `sockets` to the successor (duplicates of them: the caller's
    /// stay open until it drops them).
    pub fn give(self, sockets: &[BorrowedFd<'_>]) -> io::Result<()> {
        if sockets.len() > MAX_SOCKETS {
            return Err(io::Error::other(format!(
                "{} sockets to hand over, at most {MAX_SOCKETS} fit",
                sockets.len()
            )));
        }
        let header = format!("{GIVE}{}\n", sockets.len());
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !sockets.is_empty() && !control.push(SendAncillaryMessage::ScmRights(sockets)) {
            return Err(io::Error::other("the sockets do not fit one message"));
        }
        let sent = sendmsg(
            &self.stream,
            &[IoSlice::new(header.as_bytes())],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        if sent != header.len() {
            return Err(io::Error::other("the handover reply was cut short"));
        }
        Ok(())
    }
}

/// The successor's side: asks the agent listening at `path` for its
/// sockets and waits up to `within` for them. `Ok(None)`: no agent is
/// listening there (none runs, or it exited and left its socket file).
pub fn take(path: &Path, within: Duration) -> io::Result<Option<Inherited>> {
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(within))?;
    stream.set_write_timeout(Some(within))?;
    stream.write_all(TAKE)?;
    let mut header = [0u8; 64];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut header)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| match io::Error::from(e) {
        e if e.kind() == io::ErrorKind::WouldBlock => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no sockets within {within:?}"),
        ),
        e => e,
    })?;
    let mut sockets: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            sockets.extend(fds);
        }
    }
    if received.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(io::Error::other("more sockets were sent than fit"));
    }
    let text = std::str::from_utf8(&header[..received.bytes]).unwrap_or("");
    let count = text
        .strip_prefix(GIVE)
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected handover reply {text:?}")))?;
    if count != sockets.len() {
        return Err(io::Error::other(format!(
            "the reply announced {count} sockets, {} arrived",
            sockets.len()
        )));
    }
    // The other side closes once it has sent; anything more is a mistake
    // on its part, not ours to act on.
    let _ = stream.read(&mut [0u8; 1]);
    Ok(Some(Inherited::new(sockets)))
}

/// Borrows the descriptors of `owned` for [`Request::give`].
pub fn borrowed(owned: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    owned.iter().map(AsFd::as_fd).collect()
}
