//! Batched receive for the UDP listener: one `recvmmsg` reads up to
//! [`RECV_BATCH`] redirected queries, each with the address the pod sent
//! it to (`IP_ORIGDSTADDR`, which TPROXY keeps). Under load a receive call
//! per datagram was a tenth of the proxy's system calls; one per batch is
//! what is left.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams read per receive call.
pub(crate) const RECV_BATCH: usize = 32;
/// Room per datagram: the largest a UDP payload can be, so no query is cut
/// short. The pages behind a slot are only touched as far as datagrams
/// reach, so the batch costs its size in address space, not in memory.
const SLOT: usize = 65_536;
/// Room for the original-destination control message (either family).
const CONTROL: usize = 128;

const IPV6_ORIGDSTADDR: libc::c_int = 74;

/// One received datagram: its bytes, the sender and where it was sent.
/// `None` in place of a datagram: unusable (no original destination, an
/// unknown address family, or cut short).
pub(crate) type Datagram<'a> = Option<(&'a [u8], SocketAddr, SocketAddr)>;

/// Room for one control message, aligned as the `cmsghdr` read from it.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL]);

/// Buffers for one batch, reused for every call.
pub(crate) struct RecvBatch {
    data: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    lens: [usize; RECV_BATCH],
    flags: [libc::c_int; RECV_BATCH],
    control_lens: [usize; RECV_BATCH],
    received: usize,
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        Self {
            data: vec![0; RECV_BATCH * SLOT],
            // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
            names: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
            controls: vec![Control([0; CONTROL]); RECV_BATCH],
            lens: [0; RECV_BATCH],
            flags: [0; RECV_BATCH],
            control_lens: [0; RECV_BATCH],
            received: 0,
        }
    }

    /// Reads what is queued on `fd`, up to [`RECV_BATCH`] datagrams, without
    /// blocking: the number read, or `WouldBlock` if none was waiting.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.received = 0;
        // One base pointer per buffer, offsets from it below: the pointers
        // stay valid together (no re-borrow of a Vec between them).
        let (data, names, controls) = (
            self.data.as_mut_ptr(),
            self.names.as_mut_ptr(),
            self.controls.as_mut_ptr(),
        );
        // SAFETY: `data` holds RECV_BATCH slots of SLOT bytes.
        let mut iovs: [libc::iovec; RECV_BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: unsafe { data.add(i * SLOT) }.cast(),
            iov_len: SLOT,
        });
        let iov_base = iovs.as_mut_ptr();
        // SAFETY: zeroed mmsghdrs are valid; every pointer set below points
        // into buffers owned by `self` or `iovs` (RECV_BATCH entries each),
        // which outlive the call.
        let mut messages: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for (i, m) in messages.iter_mut().enumerate() {
            unsafe {
                m.msg_hdr.msg_name = names.add(i).cast();
                m.msg_hdr.msg_iov = iov_base.add(i);
                m.msg_hdr.msg_control = controls.add(i).cast();
            }
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_controllen = CONTROL;
        }
        // SAFETY: `messages` holds RECV_BATCH valid headers (above).
        let n = unsafe {
            libc::recvmmsg(
                fd,
                messages.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, m) in messages.iter().take(n).enumerate() {
            self.lens[i] = m.msg_len as usize;
            self.flags[i] = m.msg_hdr.msg_flags;
            self.control_lens[i] = m.msg_hdr.msg_controllen;
        }
        self.received = n;
        Ok(n)
    }

    /// The `i`th datagram of the last [`RecvBatch::recv`].
    pub(crate) fn get(&self, i: usize) -> Datagram<'_> {
        if i >= self.received || self.flags[i] & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return None;
        }
        let src = sockaddr_to(&self.names[i])?;
        let dst = orig_dst(&self.controls[i].0[..self.control_lens[i].min(CONTROL)])?;
        Some((&self.data[i * SLOT..i * SLOT + self.lens[i]], src, dst))
    }
}

/// The original destination in a received control buffer.
fn orig_dst(control: &[u8]) -> Option<SocketAddr> {
    // SAFETY: a msghdr describing only `control`, walked with the libc
    // macros, which stay within msg_controllen; the data is read unaligned.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_control = control.as_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if (level == libc::SOL_IP && kind == libc::IP_ORIGDSTADDR)
                || (level == libc::SOL_IPV6 && kind == IPV6_ORIGDSTADDR)
            {
                let mut orig: libc::sockaddr_storage = std::mem::zeroed();
                let len = ((*cmsg).cmsg_len as usize)
                    .saturating_sub(libc::CMSG_LEN(0) as usize)
                    .min(size_of::<libc::sockaddr_storage>());
                std::ptr::copy_nonoverlapping(
                    libc::CMSG_DATA(cmsg),
                    (&mut orig as *mut libc::sockaddr_storage).cast(),
                    len,
                );
                return sockaddr_to(&orig);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        None
    }
}

fn sockaddr_to(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family tells which sockaddr the storage holds.
    unsafe {
        match ss.ss_family as libc::c_int {
            libc::AF_INET => {
                let a = &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                Some(SocketAddr::V4(SocketAddrV4::new(
                    u32::from_be(a.sin_addr.s_addr).into(),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let a = &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                Some(SocketAddr::V6(SocketAddrV6::new(
                    a.sin6_addr.s6_addr.into(),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    fn receiver() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let on: libc::c_int = 1;
        // SAFETY: setsockopt with an int option on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_IP,
                libc::IP_RECVORIGDSTADDR,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(rc, 0);
        socket
    }

    #[test]
    fn a_batch_reads_every_queued_datagram_with_sender_and_destination() {
        let rx = receiver();
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new();
        assert_eq!(
            batch.recv(rx.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing queued"
        );
        // More than one batch: the first read takes RECV_BATCH, the next
        // the rest, each whole and in order (the last one 65,507 bytes, the
        // largest UDP payload over IPv4).
        let count = RECV_BATCH + 3;
        for i in 0..count {
            let len = if i == count - 1 { 65_507 } else { 1 + i };
            tx.send_to(&vec![i as u8; len], to).unwrap();
        }
        let mut seen = 0;
        for expected in [RECV_BATCH, 3] {
            assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), expected);
            for i in 0..expected {
                let (bytes, src, dst) = batch.get(i).expect("a whole datagram");
                assert_eq!((src, dst), (tx.local_addr().unwrap(), to));
                assert!(bytes.iter().all(|b| *b == seen as u8), "datagram {seen}");
                let len = if seen == count - 1 { 65_507 } else { 1 + seen };
                assert_eq!(bytes.len(), len);
                seen += 1;
            }
            assert!(batch.get(expected).is_none(), "only what was read");
        }
        assert_eq!(seen, count);
    }

    #[test]
    fn a_datagram_without_its_original_destination_is_unusable() {
        // No IP_RECVORIGDSTADDR: nothing says where the pod sent it.
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"query", rx.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new();
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        assert!(batch.get(0).is_none());
    }
}
