//! The handover between two agents, as sockets in one process: what was
//! queued on a socket before it changed hands is read by the successor.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use handover::{take, Offer};
use socket2::Type;

const WITHIN: Duration = Duration::from_secs(5);

#[test]
fn no_running_agent_means_nothing_to_take() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handover.sock");
    assert!(take(&path, WITHIN).unwrap().is_none(), "no socket file");
    // An agent that exited leaves its socket file: nobody listens there.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(
        take(&path, WITHIN).unwrap().is_none(),
        "a stale socket file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_datagrams_and_connections_reach_the_successor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handover.sock");
    let offer = Offer::bind(&path).unwrap();

    // The running agent's listeners, with traffic nobody has read yet.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .send_to(b"query sent before the handover", udp_addr)
        .unwrap();
    let mut pending = TcpStream::connect(tcp_addr).unwrap();
    pending.write_all(b"request").unwrap();
    let kept: Vec<OwnedFd> = vec![
        udp.as_fd().try_clone_to_owned().unwrap(),
        tcp.as_fd().try_clone_to_owned().unwrap(),
    ];
    // The running agent stops using its own sockets.
    drop((udp, tcp));

    let successor = tokio::task::spawn_blocking(move || take(&path, WITHIN));
    let request = offer.request().await.unwrap();
    request.give(&handover::borrowed(&kept)).unwrap();
    drop(kept);
    let mut inherited = successor.await.unwrap().unwrap().expect("sockets");
    assert_eq!(inherited.len(), 2);

    // A stream is not taken for a datagram socket, nor another address.
    let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert!(inherited.take(Type::DGRAM, other).is_none());
    assert!(inherited.take(Type::STREAM, udp_addr).is_none());

    let udp: UdpSocket = inherited.take(Type::DGRAM, udp_addr).unwrap().into();
    udp.set_read_timeout(Some(WITHIN)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"query sent before the handover");
    assert_eq!(from, client.local_addr().unwrap());

    let tcp: TcpListener = inherited.take(Type::STREAM, tcp_addr).unwrap().into();
    let (mut conn, _) = tcp.accept().unwrap();
    conn.set_read_timeout(Some(WITHIN)).unwrap();
    let mut got = [0u8; 7];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(
        &got, b"request",
        "the connection queued before the handover"
    );
    assert!(inherited.is_empty(), "each socket is given once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_does_not_block_a_successor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handover.sock");
    let offer = Offer::bind(&path).unwrap();
    let silent = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    let p = path.clone();
    let successor = tokio::task::spawn_blocking(move || take(&p, WITHIN));
    let request = tokio::time::timeout(WITHIN, offer.request())
        .await
        .expect("the successor's request, after the silent one is closed")
        .unwrap();
    request.give(&[udp.as_fd()]).unwrap();
    let mut inherited = successor.await.unwrap().unwrap().unwrap();
    assert!(inherited.take(Type::DGRAM, addr).is_some());
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_reply_is_an_error_not_an_empty_handover() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handover.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let p = path.clone();
    let successor = std::thread::spawn(move || take(&p, WITHIN));
    let (mut conn, _) = listener.accept().unwrap();
    let mut request = [0u8; handover::TAKE.len()];
    conn.read_exact(&mut request).unwrap();
    assert_eq!(request, handover::TAKE);
    conn.write_all(b"HTTP/1.1 400 Bad Request\n").unwrap();
    drop(conn);
    let err = successor.join().unwrap().err().expect("an error");
    assert!(
        err.to_string().contains("unexpected handover reply"),
        "{err}"
    );
}
