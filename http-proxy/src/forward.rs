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
//! One task drives both sockets, heads are not decoded into maps and
//! encoded again, each socket is read when epoll says so. Bodies stream in
//! bounded buffers; nothing is held whole. While a request body goes out
//! the destination is listened to (an early answer ends the sending); a
//! destination that streams its response while still reading the request
//! body (full duplex) is not served.
//!
//! Trailers of a chunked request body are forwarded as sent.
//!
//! The upstream connection is opened on the first allowed request (so a
//! client whose requests are all denied never reaches the destination) and
//! kept while both sides keep theirs open.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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

/// How long, and for how many bytes, a connection the proxy closes after
/// its own answer reads and drops what the client still sends.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Most interim (1xx) responses relayed for one request; one more and
/// the response is refused.
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
                    if client.write_all(&answer(status, true)).await.is_ok() {
                        linger(client).await;
                    }
                    return;
                }
            };
            let request = match verdict {
                Verdict::Forward(request) => request,
                Verdict::Answer { status, close } => {
                    match client.write_all(&answer(status, close)).await {
                        Ok(()) if !close => continue,
                        Ok(()) => return linger(client).await,
                        Err(_) => return,
                    }
                }
            };
            match self
                .exchange(&mut client, &mut buf, &mut upstream, &head, request)
                .await
            {
                Ok(true) if !closing.is_cancelled() => {}
                Ok(_) => return linger(client).await,
                Err(()) => return,
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
            kept.for_each(|h| header_line(out, h.name, h.value, &framing));
            Ok(())
        } else {
            let mut fields: Vec<(Cow<'_, str>, Cow<'_, [u8]>)> = kept
                .map(|h| (Cow::Borrowed(h.name), Cow::Borrowed(h.value)))
                .collect();
            apply_header_edits(&mut fields, &edits).map(|()| {
                fields
                    .iter()
                    .for_each(|(name, value)| header_line(out, name, value, &framing))
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
        self.bad_request(method, target.to_string(), None, why, Vec::new());
        Verdict::Answer { status: 400, close }
    }

    /// Counts and tells a request refused as malformed (a 400).
    fn bad_request(
        &self,
        method: Option<Method>,
        path: String,
        host: Option<String>,
        why: &str,
        edits: Vec<String>,
    ) {
        self.proxy
            .metrics
            .requests_denied
            .fetch_add(1, Ordering::Relaxed);
        let rule = Some(format!("bad request: {why}"));
        self.emit(method, path, host, HttpVerdict::Denied, 400, rule, edits);
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
        let body = request.framing.body;
        let sent = send_request(client, buf, up, head, body, request.version).await;
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
                let (method, path, host) = (Some(request.method), request.path, request.host);
                self.bad_request(method, path, host, why, request.edited);
                return match client.write_all(&answer(400, true)).await {
                    Ok(()) => Ok(false),
                    Err(_) => Err(()),
                };
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
            Ok(()) => Ok(!close),
            Err(_) => Err(()),
        }
    }
}

impl Upstream {
    /// Whether the idle connection can carry another request: the
    /// destination has not closed it or sent anything unasked. Asks the
    /// socket only if tokio has not seen it drained (tokio counts a read
    /// that came back short, or one that would block, as drained), so
    /// usually without a system call; a close or bytes since then made it
    /// readable again. A close that arrives after this check is a 502.
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
    // Parsed again only when a line has ended since (a head sent a byte
    // at a time costs one parse a line).
    let mut parsed = 0;
    loop {
        if up.buf[parsed..].contains(&b'\n') {
            parsed = up.buf.len();
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
                Ok(httparse::Status::Partial) => {}
                Ok(_) => return Err(Broken::BadResponse("a response head over the limit")),
                Err(_) => return Err(Broken::BadResponse("a malformed response head")),
            }
        }
        if up.buf.len() >= MAX_HEADER_BYTES {
            return Err(Broken::BadResponse("a response head over the limit"));
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
/// gets its answer relayed rather than a body it no longer reads; interim
/// answers (103) are passed on to an HTTP/1.`version` >= 1 client and the
/// body goes on.
async fn send_request(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    up: &mut Upstream,
    head: &[u8],
    body: BodyLength,
    version: u8,
) -> Result<Sent, Broken> {
    if body == BodyLength::Empty {
        up.stream.write_all(head).await.map_err(Broken::Upstream)?;
        return Ok(Sent::Whole);
    }
    let mut early = Early {
        version,
        interim: 0,
    };
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
                let progress = scanner.feed(buf).map_err(|e| {
                    tracing::debug!("refused a chunked request body: {e}");
                    Broken::BadBody("a malformed chunked body")
                })?;
                (progress.consumed, progress.done)
            }
        };
        let bytes: &[u8] = if first.is_empty() {
            &buf[..take]
        } else {
            first.extend_from_slice(&buf[..take]);
            &first
        };
        let sent = early.write(client, up, bytes).await?;
        first = Vec::new();
        if !sent {
            return Ok(Sent::Cut);
        }
        buf.advance(take);
        if done {
            return Ok(Sent::Whole);
        }
        buf.reserve(READ_SIZE);
        let read = tokio::select! {
            biased;
            read = client.read_buf(buf) => read,
            heard = listen(&up.stream, &mut up.buf) => {
                let heard = heard.map_err(Broken::Upstream)?;
                if early.cuts(heard, client, up).await? {
                    return Ok(Sent::Cut);
                }
                continue;
            }
        };
        more(read, "closed mid-body").map_err(Broken::Client)?;
    }
}

/// What the destination said while a request body was going out.
enum Heard {
    /// Nothing (its readiness was stale).
    Nothing,
    /// Bytes, now in its buffer.
    Bytes,
    /// It closed.
    Closed,
}

/// Waits until the destination says something.
async fn listen(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<Heard> {
    stream.readable().await?;
    buf.reserve(READ_SIZE);
    match stream.try_read_buf(buf) {
        Ok(0) => Ok(Heard::Closed),
        Ok(_) => Ok(Heard::Bytes),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Heard::Nothing),
        Err(e) => Err(e),
    }
}

/// What the destination has said before the request body was through.
struct Early {
    /// The client's HTTP/1.`version`.
    version: u8,
    /// Interim answers passed on so far.
    interim: usize,
}

impl Early {
    /// Whether what was `heard` ends the sending: a close, or the head of
    /// a final answer (or bytes that are no head). Interim heads are
    /// passed on to the client and the sending goes on.
    async fn cuts(
        &mut self,
        heard: Heard,
        client: &mut TcpStream,
        up: &mut Upstream,
    ) -> Result<bool, Broken> {
        match heard {
            Heard::Nothing => return Ok(false),
            Heard::Closed => return Ok(true),
            Heard::Bytes => {}
        }
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            let interim = match response.parse(&up.buf) {
                Ok(httparse::Status::Complete(len))
                    if response
                        .code
                        .is_some_and(|c| (100..200).contains(&c) && c != 101) =>
                {
                    len
                }
                // The rest of a head is still coming: the body goes on.
                Ok(httparse::Status::Partial) => return Ok(up.buf.len() >= MAX_HEADER_BYTES),
                // A final answer, or bytes that are none ([`final_head`]
                // says which).
                _ => return Ok(true),
            };
            self.interim += 1;
            if self.interim > MAX_INTERIM {
                return Ok(true);
            }
            if self.version >= 1 {
                client
                    .write_all(&up.buf[..interim])
                    .await
                    .map_err(Broken::Client)?;
            }
            up.buf.advance(interim);
        }
    }

    /// Writes `bytes` to the destination unless it answers first: `false`
    /// then (the rest is not sent).
    async fn write(
        &mut self,
        client: &mut TcpStream,
        up: &mut Upstream,
        mut bytes: &[u8],
    ) -> Result<bool, Broken> {
        while !bytes.is_empty() {
            match up.stream.try_write(bytes) {
                Ok(0) => return Err(Broken::Upstream(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    bytes = &bytes[n..];
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Broken::Upstream(e)),
            }
            // The destination is not reading: it may be answering instead.
            let heard = tokio::select! {
                biased;
                ready = up.stream.writable() => {
                    ready.map_err(Broken::Upstream)?;
                    continue;
                }
                heard = listen(&up.stream, &mut up.buf) => heard.map_err(Broken::Upstream)?,
            };
            if self.cuts(heard, client, up).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }
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
                let progress = scanner.feed(&buf[ahead..]).map_err(|e| {
                    tracing::debug!("a chunked response body refused: {e}");
                    Broken::BadResponse("a malformed chunked body")
                })?;
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

/// Closes a connection after the proxy's last answer, gently: the answer
/// goes out and the proxy's side is shut, then what the client still
/// sends (a body nobody read, a pipelined request) is read and dropped for
/// a moment. Closing with unread bytes would send a reset, which can
/// discard the answer before the client has read it (nginx's
/// `lingering_close`).
async fn linger(mut client: TcpStream) {
    if client.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 16 * 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
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
fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8], framing: &RequestFraming) {
    if name.eq_ignore_ascii_case("transfer-encoding") {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        return;
    }
    if let (true, Some(length)) = (
        name.eq_ignore_ascii_case("content-length"),
        framing.content_length,
    ) {
        out.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
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
        && name.bytes().all(crate::chunked::is_tchar)
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
