//! One client connection's requests: each read, checked, and forwarded as
//! bytes over one upstream connection, in the connection's own task.
//!
//! A request head is parsed (`httparse`) and judged ([`crate::head`]); an
//! allowed one is written to the destination as the rules saw it (the
//! normalised target, the header actions made), followed by its body as
//! the client sent it, up to where the head says it ends (a chunked body's
//! end found by [`crate::chunked`]). The response head is parsed for its
//! framing and status, and the response goes back as the destination sent
//! it. Requests are served one at a time: a pipelined request waits in the
//! buffer until the response before it is through.
//!
//! This is what nginx and HAProxy do, and it is why they were ahead of the
//! hyper server-and-client pair this replaced: one task, no decoding of
//! heads into maps and encoding them again, each socket read when epoll
//! says so. Bodies stream in bounded buffers; nothing is held whole.
//!
//! The upstream connection is opened on the first allowed request (so a
//! client whose requests are all denied never reaches the destination) and
//! kept while both sides keep theirs open.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use policy::rules::HeaderEdit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::check::{check_request, RequestCheck};
use crate::chunked::ChunkedScanner;
use crate::head::{
    request_framing, request_host, response_framing, split_target, BodyLength, RequestFraming,
    MAX_HEADERS,
};
use crate::normalize::normalize_target;
use crate::server::{dial, MAX_HEADER_BYTES};
use crate::{HttpEvent, HttpPolicy, HttpProxy, HttpVerdict, Method, Parties, RuleSet};

/// Most interim (1xx) responses relayed before the final one.
const MAX_INTERIM: usize = 10;

/// Bytes read from a socket at a time (and the buffers' usual size).
const READ_SIZE: usize = 16 * 1024;

/// The state of one client connection.
pub(crate) struct Conn<P> {
    pub proxy: Arc<HttpProxy<P>>,
    pub parties: Arc<Parties>,
    pub sets: Vec<RuleSet>,
    /// Whether any rule looks at headers (else they are not gathered).
    pub reads_headers: bool,
}

/// The upstream side: the connection and what was read from it.
struct Upstream {
    stream: TcpStream,
    buf: BytesMut,
}

/// How reading a request head ended, when it did not give a head.
enum NoHead {
    /// The client closed, went quiet past the timeout between requests, or
    /// the proxy is closing: nothing to answer.
    Gone,
    /// Answer this status, then close.
    Refuse(u16, &'static str),
}

/// What went wrong forwarding a request or relaying its response.
#[derive(Debug)]
enum Broken {
    /// The client closed or failed.
    Client(io::Error),
    /// The client's body is not what its head says (malformed chunks).
    BadBody(&'static str),
    /// The destination closed or failed.
    Upstream(io::Error),
    /// The destination's bytes cannot be relayed safely.
    BadResponse(&'static str),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Client(e) => write!(f, "client: {e}"),
            Broken::BadBody(why) => write!(f, "request body: {why}"),
            Broken::Upstream(e) => write!(f, "destination: {e}"),
            Broken::BadResponse(why) => write!(f, "response: {why}"),
        }
    }
}

/// A request judged and ready to go: its head as the destination gets it.
struct Forward {
    framing: RequestFraming,
    /// HTTP/1.`version`.
    version: u8,
    method: Method,
    path: String,
    host: Option<String>,
    rule: Option<String>,
    edited: Vec<String>,
}

/// What to do with a request.
enum Verdict {
    Forward(Forward),
    /// Answer with this status (its event already emitted), then close
    /// the connection if `close`: the client asked to, or a body follows
    /// that was not read (it would be taken for the next request).
    Answer {
        status: u16,
        close: bool,
    },
}

impl<P: HttpPolicy> Conn<P> {
    /// Serves the connection's requests until either side closes or
    /// `closing` (then the request in hand is finished first).
    pub(crate) async fn serve(self, mut client: TcpStream, closing: CancellationToken) {
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        let mut upstream: Option<Upstream> = None;
        let mut head = Vec::with_capacity(1024);
        // One timer for the connection, re-armed for each head.
        let timer = tokio::time::sleep(self.proxy.config.header_timeout);
        tokio::pin!(timer);
        loop {
            let verdict = match self
                .next_request(&mut client, &mut buf, &mut head, timer.as_mut(), &closing)
                .await
            {
                Ok(verdict) => verdict,
                Err(NoHead::Gone) => return,
                Err(NoHead::Refuse(status, why)) => {
                    tracing::debug!(client = %self.parties.client, "refused a request head: {why}");
                    let _ = client.write_all(&answer(status, true)).await;
                    return;
                }
            };
            let request = match verdict {
                Verdict::Forward(request) => request,
                Verdict::Answer { status, close } => {
                    if client.write_all(&answer(status, close)).await.is_err() || close {
                        return;
                    }
                    continue;
                }
            };
            match self
                .exchange(&mut client, &mut buf, &mut upstream, &head, request)
                .await
            {
                Ok(true) if !closing.is_cancelled() => {}
                _ => return,
            }
        }
    }

    /// Reads until `buf` starts with a whole request head, judges it and
    /// takes it out of `buf`; `out` is the head the destination is to get.
    async fn next_request(
        &self,
        client: &mut TcpStream,
        buf: &mut BytesMut,
        out: &mut Vec<u8>,
        mut timer: Pin<&mut Sleep>,
        closing: &CancellationToken,
    ) -> Result<Verdict, NoHead> {
        timer
            .as_mut()
            .reset(Instant::now() + self.proxy.config.header_timeout);
        // Parsed again only when a line has ended since: a head sent a byte
        // at a time costs one parse a line, not one a byte.
        let mut parsed = 0;
        loop {
            if buf[parsed..].contains(&b'\n') {
                out.clear();
                if let Some((len, verdict)) = self.judge(buf, out)? {
                    buf.advance(len);
                    return Ok(verdict);
                }
                parsed = buf.len();
            }
            if buf.len() >= MAX_HEADER_BYTES {
                return Err(NoHead::Refuse(431, "a head over the limit"));
            }
            // Room for the rest of a head, not more than its bound.
            buf.reserve(READ_SIZE.min(MAX_HEADER_BYTES + 1 - buf.len()));
            let idle = buf.is_empty();
            let read = tokio::select! {
                biased;
                read = client.read_buf(buf) => read,
                _ = closing.cancelled(), if idle => return Err(NoHead::Gone),
                _ = timer.as_mut() => return Err(NoHead::Gone),
            };
            match read {
                Ok(0) | Err(_) => return Err(NoHead::Gone),
                Ok(_) => {}
            }
        }
    }

    /// If `buf` starts with a whole request head: its length, and the
    /// request checked, with the head the destination is to get written
    /// into `out`; emits the event of a request answered here.
    fn judge(&self, buf: &[u8], out: &mut Vec<u8>) -> Result<Option<(usize, Verdict)>, NoHead> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEADER_BYTES => len,
            Ok(httparse::Status::Complete(_)) => {
                return Err(NoHead::Refuse(431, "a head over the limit"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(NoHead::Refuse(431, "too many header lines"))
            }
            Err(_) => return Err(NoHead::Refuse(400, "a malformed request head")),
        };
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            unreachable!("a complete request head has its request line")
        };
        Ok(Some((
            len,
            self.check(method, target, version, req.headers, out),
        )))
    }

    /// Checks one request; writes the head the destination is to get into
    /// `out`.
    fn check(
        &self,
        method: &str,
        target: &str,
        version: u8,
        headers: &[httparse::Header<'_>],
        out: &mut Vec<u8>,
    ) -> Verdict {
        // httparse admits only token characters: a valid method.
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return self.refuse(None, target, "a method that is not a token", true);
        };
        let framing = match request_framing(version, headers) {
            Ok(framing) => framing,
            // The body's end is unknown: no answer but one that closes.
            Err(why) => return self.refuse(Some(method), target, why, true),
        };
        let close = framing.body != BodyLength::Empty || !framing.keep_alive;
        if method == Method::CONNECT {
            return self.refuse(Some(method), target, "CONNECT", close);
        }
        let parts = split_target(target).and_then(|t| {
            let path = normalize_target(t.path).map_err(|_| "a path that cannot be normalised")?;
            let host = request_host(t.authority, headers)?;
            Ok((t.prefix, path, host))
        });
        let (prefix, path, host) = match parts {
            Ok(parts) => parts,
            // Refused before any rule: what the rules would see is not
            // what the destination would act on.
            Err(why) => return self.refuse(Some(method), target, why, close),
        };
        let seen: Vec<(&str, &str)> = if self.reads_headers {
            headers
                .iter()
                .map(|h| (h.name, header_text(h.value)))
                .collect()
        } else {
            Vec::new()
        };
        let check = check_request(&self.sets, method.as_str(), &path, host, &seen);
        drop(seen);
        let (rule, edits) = match check {
            RequestCheck::Denied { set } => {
                self.proxy
                    .metrics
                    .requests_denied
                    .fetch_add(1, Ordering::Relaxed);
                self.emit(
                    Some(method),
                    path.into_owned(),
                    host.map(str::to_string),
                    HttpVerdict::Denied,
                    403,
                    Some(set),
                    Vec::new(),
                );
                return Verdict::Answer { status: 403, close };
            }
            RequestCheck::Allowed { rule, edits } => (rule, edits),
        };
        let edited: Vec<String> = edits.iter().map(ToString::to_string).collect();
        let line = [
            method.as_str().as_bytes(),
            b" ",
            prefix.as_bytes(),
            path.as_bytes(),
            if version == 0 {
                b" HTTP/1.0\r\n"
            } else {
                b" HTTP/1.1\r\n"
            },
        ];
        line.iter().for_each(|part| out.extend_from_slice(part));
        // Protocol upgrades (WebSocket, h2c) would leave HTTP behind and the
        // rules with it: the request goes on as plain HTTP/1.1. A 100
        // Continue is the proxy's to send (below), not the destination's.
        let dropped = |name: &str| {
            (framing.upgrade
                && (name.eq_ignore_ascii_case("upgrade")
                    || name.eq_ignore_ascii_case("connection")))
                || (framing.expects_continue && name.eq_ignore_ascii_case("expect"))
        };
        let kept = headers.iter().filter(|h| !dropped(h.name));
        let written = if edits.is_empty() {
            kept.for_each(|h| header_line(out, h.name, h.value));
            Ok(())
        } else {
            let mut fields: Vec<(Cow<'_, str>, Cow<'_, [u8]>)> = kept
                .map(|h| (Cow::Borrowed(h.name), Cow::Borrowed(h.value)))
                .collect();
            apply_header_edits(&mut fields, &edits).map(|()| {
                fields
                    .iter()
                    .for_each(|(name, value)| header_line(out, name, value))
            })
        };
        out.extend_from_slice(b"\r\n");
        let path = path.into_owned();
        let host = host.map(str::to_string);
        if let Err(why) = written {
            // Validation admits only names and values that are valid; should
            // one not be, the request must not go on without its change.
            tracing::warn!("cannot apply a header action: {why}");
            self.emit(
                Some(method),
                path,
                host,
                HttpVerdict::Error,
                500,
                rule,
                edited,
            );
            return Verdict::Answer { status: 500, close };
        }
        Verdict::Forward(Forward {
            framing,
            version,
            method,
            path,
            host,
            rule,
            edited,
        })
    }

    /// A request refused before any rule (a 400) and its event.
    fn refuse(&self, method: Option<Method>, target: &str, why: &str, close: bool) -> Verdict {
        self.proxy
            .metrics
            .requests_denied
            .fetch_add(1, Ordering::Relaxed);
        self.emit(
            method,
            target.to_string(),
            None,
            HttpVerdict::Denied,
            400,
            Some(format!("bad request: {why}")),
            Vec::new(),
        );
        Verdict::Answer { status: 400, close }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        method: Option<Method>,
        path: String,
        host: Option<String>,
        verdict: HttpVerdict,
        status: u16,
        rule: Option<String>,
        header_edits: Vec<String>,
    ) {
        self.proxy.emit(HttpEvent {
            parties: self.parties.clone(),
            method,
            path,
            host,
            verdict,
            status,
            rule,
            header_edits,
        });
    }

    /// Forwards one allowed request (`head` and the body after it in
    /// `buf`) and relays its response. Whether the client connection stays
    /// open.
    async fn exchange(
        &self,
        client: &mut TcpStream,
        buf: &mut BytesMut,
        upstream: &mut Option<Upstream>,
        head: &[u8],
        request: Forward,
    ) -> Result<bool, ()> {
        let body_follows = request.framing.body != BodyLength::Empty;
        if upstream.as_mut().is_none_or(|u| !u.reusable()) {
            *upstream = None;
            match dial(&self.proxy.config, self.parties.client, self.parties.server).await {
                Ok(stream) => {
                    *upstream = Some(Upstream {
                        stream,
                        buf: BytesMut::with_capacity(READ_SIZE),
                    })
                }
                Err(e) => {
                    tracing::debug!(client = %self.parties.client, server = %self.parties.server, "upstream: {e}");
                    return self.failed(client, request, body_follows).await;
                }
            }
        }
        let up = upstream.as_mut().expect("connected above");
        if request.framing.expects_continue && body_follows {
            // The client waits for this before it sends the body.
            if client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return Err(());
            }
        }
        let sent = send_request(client, buf, up, head, request.framing.body).await;
        // After an early answer neither connection is where a next
        // request could start.
        let whole = matches!(sent, Ok(Sent::Whole));
        let response = match sent {
            Ok(_) => final_head(client, up, request.method.as_str(), request.version).await,
            Err(e) => Err(e),
        };
        let (len, status, framing) = match response {
            Ok(response) => response,
            Err(Broken::Client(e)) => {
                tracing::debug!(client = %self.parties.client, "client gone mid-request: {e}");
                *upstream = None;
                return Err(());
            }
            Err(Broken::BadBody(why)) => {
                // What was forwarded of it was well-formed; the destination
                // sees the connection close before the body ends.
                tracing::debug!(client = %self.parties.client, "refused a request body: {why}");
                *upstream = None;
                self.proxy
                    .metrics
                    .requests_denied
                    .fetch_add(1, Ordering::Relaxed);
                self.emit(
                    Some(request.method),
                    request.path,
                    request.host,
                    HttpVerdict::Denied,
                    400,
                    Some(format!("bad request: {why}")),
                    request.edited,
                );
                let _ = client.write_all(&answer(400, true)).await;
                return Err(());
            }
            Err(e) => {
                tracing::debug!(client = %self.parties.client, server = %self.parties.server, "upstream: {e}");
                *upstream = None;
                // The request's body may be half sent: the connection ends.
                return self.failed(client, request, true).await;
            }
        };
        let client_keeps = request.framing.keep_alive && whole;
        self.proxy
            .metrics
            .requests_allowed
            .fetch_add(1, Ordering::Relaxed);
        self.emit(
            Some(request.method),
            request.path,
            request.host,
            HttpVerdict::Allowed,
            status,
            request.rule,
            request.edited,
        );
        // The head goes out with the body's first bytes in one write.
        if let Err(e) = relay_body(up, client, framing.body, len).await {
            // Some of the response went out: the client cannot be told.
            tracing::debug!(client = %self.parties.client, server = %self.parties.server, "response cut: {e}");
            *upstream = None;
            return Err(());
        }
        // Bytes after the response belong to no request: the connection is
        // not used again.
        if !(framing.keep_alive && client_keeps && up.buf.is_empty()) {
            *upstream = None;
        }
        Ok(framing.keep_alive && client_keeps)
    }

    /// A 502 for a request the destination did not answer.
    async fn failed(
        &self,
        client: &mut TcpStream,
        request: Forward,
        close: bool,
    ) -> Result<bool, ()> {
        self.proxy
            .metrics
            .upstream_errors
            .fetch_add(1, Ordering::Relaxed);
        self.emit(
            Some(request.method),
            request.path,
            request.host,
            HttpVerdict::Error,
            502,
            request.rule,
            request.edited,
        );
        let close = close || !request.framing.keep_alive;
        match client.write_all(&answer(502, close)).await {
            Ok(()) if !close => Ok(true),
            _ => Err(()),
        }
    }
}

impl Upstream {
    /// Whether the idle connection can carry another request: the
    /// destination has not closed it or sent anything unasked. Asks the
    /// socket only if epoll said it is readable, so this costs nothing for
    /// a connection that is merely idle.
    fn reusable(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Reads the response head to a `method` request of HTTP/1.`version`,
/// passing interim (1xx) heads on to the client: the final head's length
/// in `up.buf`, status and framing.
async fn final_head(
    client: &mut TcpStream,
    up: &mut Upstream,
    method: &str,
    version: u8,
) -> Result<(usize, u16, crate::head::ResponseFraming), Broken> {
    // A destination may send a few (100, 103); not without end.
    for _ in 0..MAX_INTERIM {
        match read_response_head(up, method).await? {
            (len, status, Some(framing)) => return Ok((len, status, framing)),
            (len, _, None) => {
                // Interim responses (100 Continue, 103 Early Hints) are for
                // HTTP/1.1 clients only.
                if version >= 1 {
                    client
                        .write_all(&up.buf[..len])
                        .await
                        .map_err(Broken::Client)?;
                }
                up.buf.advance(len);
            }
        }
    }
    Err(Broken::BadResponse("too many interim (1xx) responses"))
}

/// Reads a whole response head into `up.buf`: its length, status and (for
/// a final response) framing.
async fn read_response_head(
    up: &mut Upstream,
    method: &str,
) -> Result<(usize, u16, Option<crate::head::ResponseFraming>), Broken> {
    loop {
        if !up.buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&up.buf) {
                Ok(httparse::Status::Complete(len)) if len <= MAX_HEADER_BYTES => {
                    let status = response.code.expect("a complete head has a status");
                    let version = response.version.expect("a complete head has a version");
                    if status == 101 {
                        // The Upgrade header was never forwarded.
                        return Err(Broken::BadResponse("101 Switching Protocols unasked"));
                    }
                    if (100..200).contains(&status) {
                        return Ok((len, status, None));
                    }
                    let framing = response_framing(method, status, version, response.headers)
                        .map_err(Broken::BadResponse)?;
                    return Ok((len, status, Some(framing)));
                }
                Ok(httparse::Status::Partial) if up.buf.len() < MAX_HEADER_BYTES => {}
                Ok(_) => return Err(Broken::BadResponse("a response head over the limit")),
                Err(_) => return Err(Broken::BadResponse("a malformed response head")),
            }
        }
        up.buf.reserve(READ_SIZE);
        let read = up.stream.read_buf(&mut up.buf).await;
        more(read, "closed before a response").map_err(Broken::Upstream)?;
    }
}

/// A read that had to bring bytes: the end of the stream is an error
/// saying `what`.
fn more(read: io::Result<usize>, what: &'static str) -> io::Result<()> {
    match read {
        Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, what)),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// How sending a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// All of it.
    Whole,
    /// The destination answered (or closed) before the body was through:
    /// what it said is in its buffer, and neither connection can carry
    /// another request (the client's body was not all read).
    Cut,
}

/// Sends the request: `head`, then its body from `buf` and the client.
/// The body's first bytes go in the head's write. While a body is sent
/// the destination is listened to: one that answers early (a 413, a 401)
/// gets its answer relayed rather than a body it no longer reads.
async fn send_request(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    up: &mut Upstream,
    head: &[u8],
    body: BodyLength,
) -> Result<Sent, Broken> {
    if body == BodyLength::Empty {
        up.stream.write_all(head).await.map_err(Broken::Upstream)?;
        return Ok(Sent::Whole);
    }
    // The head and the body's first bytes go in one write, copied
    // together (a head is small; so is the start of a body read with it).
    let mut first = Vec::with_capacity(head.len() + buf.len().min(READ_SIZE));
    first.extend_from_slice(head);
    let mut scanner = ChunkedScanner::new();
    let mut left = body;
    loop {
        let (take, done) = match left {
            BodyLength::Empty | BodyLength::UntilClose => (0, true),
            BodyLength::Length(n) => {
                let take = n.min(buf.len() as u64);
                left = BodyLength::Length(n - take);
                (take as usize, n == take)
            }
            BodyLength::Chunked => {
                let progress = scanner
                    .feed(buf)
                    .map_err(|_| Broken::BadBody("a malformed chunked body"))?;
                (progress.consumed, progress.done)
            }
        };
        first.extend_from_slice(&buf[..take]);
        buf.advance(take);
        if !write_unless_answered(up, &first)
            .await
            .map_err(Broken::Upstream)?
        {
            return Ok(Sent::Cut);
        }
        first.clear();
        if done {
            return Ok(Sent::Whole);
        }
        buf.reserve(READ_SIZE);
        let read = tokio::select! {
            biased;
            read = client.read_buf(buf) => read,
            answered = answered(&up.stream, &mut up.buf) => match answered {
                Ok(true) => return Ok(Sent::Cut),
                Ok(false) => continue,
                Err(e) => return Err(Broken::Upstream(e)),
            },
        };
        more(read, "closed mid-body").map_err(Broken::Client)?;
    }
}

/// Waits until the destination has said something (bytes, now in its
/// buffer, or a close): `true`; `false` if its readiness was stale.
async fn answered(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
    stream.readable().await?;
    buf.reserve(READ_SIZE);
    match stream.try_read_buf(buf) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to the destination unless it answers first: `false`
/// then (the rest is not sent).
async fn write_unless_answered(up: &mut Upstream, mut bytes: &[u8]) -> io::Result<bool> {
    while !bytes.is_empty() {
        match up.stream.try_write(bytes) {
            Ok(n) => {
                bytes = &bytes[n..];
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        // The destination is not reading: it may be answering instead.
        tokio::select! {
            biased;
            ready = up.stream.writable() => ready?,
            answered = answered(&up.stream, &mut up.buf) => if answered? { return Ok(false) },
        }
    }
    Ok(true)
}

/// Relays a response body of `length` to the client: first what the
/// destination's buffer holds, then reads, leaving in the buffer whatever
/// follows the body. The first `ahead` bytes of the buffer (the head) go
/// out with the body's first bytes.
async fn relay_body(
    up: &mut Upstream,
    client: &mut TcpStream,
    length: BodyLength,
    mut ahead: usize,
) -> Result<(), Broken> {
    let Upstream { stream: from, buf } = up;
    let mut scanner = ChunkedScanner::new();
    let mut left = match length {
        BodyLength::Length(n) => n,
        _ => 0,
    };
    loop {
        let (take, done) = match length {
            BodyLength::Empty => (0, true),
            BodyLength::Length(_) => {
                let take = left.min((buf.len() - ahead) as u64) as usize;
                left -= take as u64;
                (take, left == 0)
            }
            BodyLength::Chunked => {
                let progress = scanner
                    .feed(&buf[ahead..])
                    .map_err(|_| Broken::BadResponse("a malformed chunked body"))?;
                (progress.consumed, progress.done)
            }
            BodyLength::UntilClose => (buf.len() - ahead, false),
        };
        if ahead + take > 0 {
            client
                .write_all(&buf[..ahead + take])
                .await
                .map_err(Broken::Client)?;
            buf.advance(ahead + take);
            ahead = 0;
        }
        if done {
            return Ok(());
        }
        buf.reserve(READ_SIZE);
        match from.read_buf(buf).await {
            // The close is how such a body ends.
            Ok(0) if length == BodyLength::UntilClose => return Ok(()),
            read => more(read, "closed mid-body").map_err(Broken::Upstream)?,
        }
    }
}

/// A header value as rules read it: text, or U+FFFD if it is not visible
/// ASCII (what `http::HeaderValue::to_str` admits).
fn header_text(value: &[u8]) -> &str {
    if value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        std::str::from_utf8(value).expect("ASCII")
    } else {
        "\u{fffd}"
    }
}

/// Writes one header line. The framing headers go in one canonical form
/// (`chunked`, a length without leading zeros or blanks), so the
/// destination reads exactly the framing the proxy judged.
fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    if name.eq_ignore_ascii_case("transfer-encoding") {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        return;
    }
    if name.eq_ignore_ascii_case("content-length") {
        let digits = value.trim_ascii();
        let start = digits
            .iter()
            .position(|&b| b != b'0')
            .unwrap_or(digits.len() - 1);
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(&digits[start..]);
        out.extend_from_slice(b"\r\n");
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether `name` is a header name and `value` a value that cannot end
/// the line or the head early.
fn valid_field(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value
            .bytes()
            .all(|b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

/// Makes the changes `headerMatches` mismatch actions asked for, in order.
fn apply_header_edits<'a>(
    fields: &mut Vec<(Cow<'a, str>, Cow<'a, [u8]>)>,
    edits: &'a [HeaderEdit],
) -> Result<(), String> {
    for edit in edits {
        let (name, value) = match edit {
            HeaderEdit::Logged { .. } => continue,
            HeaderEdit::Added { name, value } | HeaderEdit::Replaced { name, value } => {
                (name, Some(value))
            }
            HeaderEdit::Removed { name } => (name, None),
        };
        if !valid_field(name, value.map_or("", String::as_str)) {
            return Err(format!("not a valid header: {name:?}"));
        }
        // Validation refuses these too: the body is forwarded as the
        // client framed it, and the rules judged the host sent.
        if !policy::header_actions::editable(name) {
            return Err(format!("{name:?} frames the request; it is not changed"));
        }
        if !matches!(edit, HeaderEdit::Added { .. }) {
            fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
        if let Some(value) = value {
            fields.push((Cow::Borrowed(name), Cow::Borrowed(value.as_bytes())));
        }
    }
    Ok(())
}

/// The proxy's own short answer with `status`, closing the connection if
/// `close`.
fn answer(status: u16, close: bool) -> Vec<u8> {
    let (reason, body) = match status {
        400 => ("Bad Request", "Bad request\r\n"),
        403 => ("Forbidden", "Access denied\r\n"),
        431 => (
            "Request Header Fields Too Large",
            "Request header fields too large\r\n",
        ),
        500 => ("Internal Server Error", "Header action failed\r\n"),
        _ => ("Bad Gateway", "Upstream unavailable\r\n"),
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "connection: close\r\n" } else { "" },
    )
    .into_bytes()
}
