//! A pod that keeps resolving one name, as an application's resolver does:
//! a query every interval from a fresh port, one try, a timeout; it counts
//! what was answered and what was not.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::NetnsGuard;

/// What a [`ResolverLoop`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// NOERROR with at least one answer record.
    pub answered: u32,
    /// No reply within the timeout, or another reply.
    pub failed: u32,
    /// The longest wait for an answer.
    pub slowest: Duration,
}

/// Queries for one name, on a thread in a pod's namespace, until stopped.
pub struct ResolverLoop {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Counts>,
}

impl ResolverLoop {
    /// Asks `server` for `name` (A) every `every` from `netns`, waiting
    /// `timeout` for each answer.
    pub fn start(
        netns: &str,
        server: SocketAddr,
        name: &str,
        every: Duration,
        timeout: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (netns, name, halt) = (netns.to_string(), name.to_string(), stop.clone());
        let handle = std::thread::spawn(move || {
            let _guard = NetnsGuard::enter(&netns);
            let mut counts = Counts::default();
            let mut id: u16 = 0;
            while !halt.load(Ordering::Relaxed) {
                id = id.wrapping_add(1);
                let asked = Instant::now();
                if ask(server, &name, id, timeout) {
                    counts.answered += 1;
                    counts.slowest = counts.slowest.max(asked.elapsed());
                } else {
                    counts.failed += 1;
                }
                std::thread::sleep(every);
            }
            counts
        });
        Self { stop, handle }
    }

    /// Stops after the query in hand; what was seen.
    pub fn stop(self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the resolver loop")
    }
}

/// One query from a fresh socket: answered with NOERROR and a record?
fn ask(server: SocketAddr, name: &str, id: u16, timeout: Duration) -> bool {
    let Ok(socket) = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(timeout));
    if socket.send_to(&query(name, id), server).is_err() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            return false;
        };
        let reply = &buf[..len];
        if from != server || len < 12 || reply[..2] != id.to_be_bytes() {
            continue; // not the answer to this query
        }
        let is_response = reply[2] & 0x80 != 0;
        let rcode = reply[3] & 0x0f;
        let answers = u16::from_be_bytes([reply[6], reply[7]]);
        return is_response && rcode == 0 && answers > 0;
    }
    false
}

/// A recursive query for `name`'s A records.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}
