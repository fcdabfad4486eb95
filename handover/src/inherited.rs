//! The sockets a successor received, claimed one by one by what it binds.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Socket, Type};

/// Sockets handed over by the previous agent. Whoever binds a listener
/// asks here first ([`Inherited::take`]) and binds afresh only if none
/// fits; what nobody claims is closed on drop (e.g. a worker the new
/// configuration no longer has).
#[derive(Default)]
pub struct Inherited {
    sockets: Vec<Socket>,
}

impl Inherited {
    /// Received descriptors; anything that is not a bound socket is closed.
    pub fn new(fds: Vec<OwnedFd>) -> Self {
        let sockets = fds
            .into_iter()
            .map(Socket::from)
            .filter(|s| s.local_addr().is_ok_and(|a| a.as_socket().is_some()))
            .collect();
        Self { sockets }
    }

    /// A socket of type `kind` bound to exactly `addr` (for streams: one
    /// that is listening), if one was handed over; each is given once,
    /// non-blocking (its users register it with tokio).
    pub fn take(&mut self, kind: Type, addr: SocketAddr) -> Option<Socket> {
        let at = self.sockets.iter().position(|s| {
            s.r#type().is_ok_and(|t| t == kind)
                && s.local_addr().ok().and_then(|a| a.as_socket()) == Some(addr)
                && (kind != Type::STREAM || s.is_listener().unwrap_or(false))
        })?;
        let socket = self.sockets.swap_remove(at);
        // One that cannot be made so is closed; the caller binds afresh.
        socket.set_nonblocking(true).ok()?;
        Some(socket)
    }

    /// How many are still unclaimed.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

impl Drop for Inherited {
    fn drop(&mut self) {
        if !self.sockets.is_empty() {
            // Whatever was queued on them is lost: only a change of ports or
            // of worker counts leaves sockets over.
            tracing::info!(
                sockets = self.sockets.len(),
                "closing handed-over sockets the new configuration does not use"
            );
        }
    }
}
