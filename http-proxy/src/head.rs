//! Message heads: what a request or response head says about its body and
//! its connection, decided strictly.
//!
//! The proxy forwards bytes: the destination gets the request head as the
//! rules saw it and the body as the client sent it; the client gets the
//! response as the destination sent it. That is only safe if the proxy and
//! the destination agree on where each message ends. So whatever two
//! parsers could read differently is refused here rather than forwarded:
//! `Transfer-Encoding` beside `Content-Length`, a transfer coding other than
//! `chunked`, more than one `Content-Length`, a length that is not digits,
//! more than one `Host`. Header lines themselves are parsed by `httparse`,
//! which refuses obs-fold, whitespace before the colon and control bytes.
//! (RFC 9112 sections 6.1-6.3 and 9.3; the cases are those of the HTTP
//! request smuggling literature: CL.TE, TE.CL, TE.TE.)

use httparse::Header;

/// Most header lines a head may have (hyper's and Envoy's default: 100).
pub const MAX_HEADERS: usize = 100;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding: the body ends with its last chunk.
    Chunked,
    /// (Responses only) until the destination closes the connection.
    UntilClose,
}

/// What a request head says beyond its request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFraming {
    pub body: BodyLength,
    /// The `Content-Length` sent, as a number.
    pub content_length: Option<u64>,
    /// The client keeps the connection open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before the body.
    pub expects_continue: bool,
    /// An `Upgrade` header was sent.
    pub upgrade: bool,
}

/// What a response head says about its body and the upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFraming {
    pub body: BodyLength,
    /// The destination keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Whether `name` is `wanted` (header names are case-insensitive).
fn is(header: &Header<'_>, wanted: &str) -> bool {
    header.name.eq_ignore_ascii_case(wanted)
}

/// What the `Connection` lines seen so far say, token by token.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
}

impl ConnectionTokens {
    /// Adds one `Connection` line's comma-separated value.
    fn add(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            self.close |= token.eq_ignore_ascii_case(b"close");
            self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }

    /// Whether the connection stays open after the message, for
    /// HTTP/1.`version`.
    fn persist(&self, version: u8) -> bool {
        !self.close && (version >= 1 || self.keep_alive)
    }
}

/// Whether the connection stays open after the message, for HTTP/1.`version`.
fn keep_alive(version: u8, headers: &[Header<'_>]) -> bool {
    let mut tokens = ConnectionTokens::default();
    headers
        .iter()
        .filter(|h| is(h, "connection"))
        .for_each(|h| tokens.add(h.value));
    tokens.persist(version)
}

/// The one `Content-Length`, if any: 1 to 18 digits (so every parser,
/// signed 64-bit ones too, reads the same number).
fn content_length(headers: &[Header<'_>]) -> Result<Option<u64>, &'static str> {
    let mut lengths = headers.iter().filter(|h| is(h, "content-length"));
    let Some(first) = lengths.next() else {
        return Ok(None);
    };
    if lengths.next().is_some() {
        return Err("more than one Content-Length");
    }
    length_value(first.value).map(Some)
}

/// A `Content-Length` value: 1 to 18 digits.
fn length_value(value: &[u8]) -> Result<u64, &'static str> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err("a Content-Length that is not a number");
    }
    Ok(std::str::from_utf8(digits)
        .expect("ASCII digits")
        .parse()
        .expect("18 digits fit a u64"))
}

/// Whether `name` is a framing header spelt with `_` for `-`
/// (`Content_Length`): servers that fold `_` into `-` would frame the body
/// by a header the proxy does not (Puma refuses these for that reason).
fn framing_lookalike(name: &str) -> bool {
    name.contains('_')
        && ["content-length", "transfer-encoding"].iter().any(|f| {
            f.len() == name.len()
                && f.bytes()
                    .zip(name.bytes())
                    .all(|(f, n)| f == n.to_ascii_lowercase() || (f == b'-' && n == b'_'))
        })
}

/// The request's framing and connection, or why it is refused (a 400).
pub fn request_framing(
    version: u8,
    headers: &[Header<'_>],
) -> Result<RequestFraming, &'static str> {
    if headers.iter().any(|h| framing_lookalike(h.name)) {
        return Err("a Content-Length or Transfer-Encoding spelt with '_'");
    }
    let length = content_length(headers)?;
    let mut codings = headers.iter().filter(|h| is(h, "transfer-encoding"));
    let body = match (codings.next(), length) {
        (None, None) => BodyLength::Empty,
        (None, Some(0)) => BodyLength::Empty,
        (None, Some(n)) => BodyLength::Length(n),
        (Some(_), Some(_)) => return Err("both Transfer-Encoding and Content-Length"),
        (Some(_), None) if version == 0 => return Err("Transfer-Encoding in an HTTP/1.0 request"),
        (Some(coding), None) => {
            if codings.next().is_some()
                || !coding.value.trim_ascii().eq_ignore_ascii_case(b"chunked")
            {
                return Err("a transfer coding other than chunked");
            }
            BodyLength::Chunked
        }
    };
    let expects_continue = version >= 1
        && headers
            .iter()
            .any(|h| is(h, "expect") && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    Ok(RequestFraming {
        body,
        content_length: length,
        keep_alive: keep_alive(version, headers),
        expects_continue,
        upgrade: headers.iter().any(|h| is(h, "upgrade")),
    })
}

/// The response's framing, for a request with method `method`, or why the
/// response cannot be relayed (a 502). 1xx responses are not asked about.
/// One pass over the header lines (it runs for every response): the same
/// decisions as the request side's helpers make in several.
pub fn response_framing(
    method: &str,
    status: u16,
    version: u8,
    headers: &[Header<'_>],
) -> Result<ResponseFraming, &'static str> {
    const BAD_LENGTH: &str = "a bad or repeated Content-Length";
    let mut length = None;
    // The last Transfer-Encoding line: its final coding decides.
    let mut last_coding: Option<&[u8]> = None;
    let mut connection = ConnectionTokens::default();
    for h in headers {
        if is(h, "content-length") {
            if length.is_some() {
                return Err(BAD_LENGTH);
            }
            length = Some(length_value(h.value).map_err(|_| BAD_LENGTH)?);
        } else if is(h, "transfer-encoding") {
            last_coding = Some(h.value);
        } else if is(h, "connection") {
            connection.add(h.value);
        }
    }
    let chunked = match last_coding {
        None => None,
        Some(_) if length.is_some() => {
            return Err("both Transfer-Encoding and Content-Length");
        }
        // Chunked only if it is the final coding of the last header line;
        // any other coding runs until the close (RFC 9112 6.3 item 4).
        Some(value) => Some(
            value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked")),
        ),
    };
    let body = if method == "HEAD" || status == 204 || status == 304 {
        BodyLength::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => BodyLength::Chunked,
            (Some(false), _) => BodyLength::UntilClose,
            (None, Some(0)) => BodyLength::Empty,
            (None, Some(n)) => BodyLength::Length(n),
            (None, None) => BodyLength::UntilClose,
        }
    };
    Ok(ResponseFraming {
        body,
        keep_alive: body != BodyLength::UntilClose && connection.persist(version),
    })
}

/// The host a request is for: its absolute-form authority or its Host
/// header — which must agree when both are sent, and Host at most once.
pub fn request_host<'b>(
    authority: Option<&'b str>,
    headers: &[Header<'b>],
) -> Result<Option<&'b str>, &'static str> {
    let mut hosts = headers.iter().filter(|h| is(h, "host"));
    let header = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(h), None) => Some(
            std::str::from_utf8(h.value.trim_ascii())
                .ok()
                .filter(|v| v.is_empty() || is_authority(v))
                .ok_or("a Host header that is not a host and port")?,
        ),
        (Some(_), Some(_)) => return Err("more than one Host header"),
    };
    match (authority, header) {
        (Some(authority), Some(header)) if !authority.eq_ignore_ascii_case(header) => {
            Err("the request target's authority and the Host header differ")
        }
        (Some(authority), _) => Ok(Some(authority)),
        (None, header) => Ok(header),
    }
}

/// A request target split into what is forwarded and matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'b> {
    /// `scheme://authority` of an absolute-form target ("" otherwise),
    /// forwarded in front of the path as it was sent.
    pub prefix: &'b str,
    pub authority: Option<&'b str>,
    /// The path and query (`/` if an absolute-form target has none), or `*`.
    pub path: &'b str,
}

/// Whether `s` is a plain `host[:port]`: a name or IPv4 address (letters,
/// digits, `-`, `.`, `_`, `~`) or a bracketed IPv6 literal, and at most
/// five port digits. Anything else (`#`, `\`, `@`, `%`, spaces) is where
/// URI parsers part ways on where the host ends.
pub fn is_authority(s: &str) -> bool {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((literal, port)) if !literal.is_empty() => {
                if !literal
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                {
                    return false;
                }
                ("x", port)
            }
            _ => return false,
        },
        None => match s.find(':') {
            Some(colon) => s.split_at(colon),
            None => (s, ""),
        },
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        && port_ok
}

/// Splits the request line's target. Origin-form (`/a?b`), absolute-form
/// (`http://host/a?b`) and `*` are served; authority-form (CONNECT's) and
/// anything else is refused: a tunnel would carry bytes no rule sees.
pub fn split_target(target: &str) -> Result<Target<'_>, &'static str> {
    // A fragment is never sent; servers that drop what follows `#` would
    // act on less than the rules saw (a suffix rule `.*\.css` would admit
    // `/admin#.css`). Envoy refuses these too.
    if target.contains('#') {
        return Err("a fragment ('#') in the request target");
    }
    if target.starts_with('/') || target == "*" {
        return Ok(Target {
            prefix: "",
            authority: None,
            path: target,
        });
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err("a request target that is neither a path nor an absolute URI");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("a request target with a scheme other than http");
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if !is_authority(authority) {
        return Err("an absolute-form target without a plain host and port");
    }
    let path = &rest[end..];
    if path.starts_with('?') {
        // `http://h?q` has the empty path, which the rules see as `/`:
        // refused rather than rewritten.
        return Err("an absolute-form target with a query but no path");
    }
    Ok(Target {
        prefix: &target[..scheme.len() + 3 + end],
        authority: Some(authority),
        path: if path.is_empty() { "/" } else { path },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a str) -> Header<'a> {
        Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn request_bodies_are_delimited_by_one_unambiguous_header() {
        let framing = |v, hs: &[Header<'_>]| request_framing(v, hs).map(|f| f.body);
        assert_eq!(framing(1, &[]), Ok(BodyLength::Empty));
        assert_eq!(
            framing(1, &[h("Content-Length", " 12 ")]),
            Ok(BodyLength::Length(12))
        );
        assert_eq!(
            framing(1, &[h("transfer-encoding", "Chunked")]),
            Ok(BodyLength::Chunked)
        );
        for refused in [
            vec![h("Content-Length", "5"), h("Transfer-Encoding", "chunked")],
            vec![h("Content-Length", "5"), h("Content-Length", "5")],
            vec![h("Content-Length", "5, 5")],
            vec![h("Content-Length", "+5")],
            vec![h("Content-Length", "")],
            vec![h("Content-Length", "99999999999999999999")],
            vec![h("Content-Length", "9223372036854775808")],
            vec![h("Content_Length", "5")],
            vec![h("transfer_encoding", "chunked")],
            vec![h("Transfer-Encoding", "gzip, chunked")],
            vec![
                h("Transfer-Encoding", "chunked"),
                h("Transfer-Encoding", "chunked"),
            ],
            vec![h("Transfer-Encoding", "xchunked")],
        ] {
            assert!(framing(1, &refused).is_err(), "{refused:?}");
        }
        assert!(framing(0, &[h("Transfer-Encoding", "chunked")]).is_err());
    }

    #[test]
    fn connections_persist_by_version_and_connection_tokens() {
        let keep = |v, hs: &[Header<'_>]| request_framing(v, hs).unwrap().keep_alive;
        assert!(keep(1, &[]));
        assert!(!keep(1, &[h("Connection", "Upgrade, Close")]));
        assert!(!keep(0, &[]));
        assert!(keep(0, &[h("connection", "keep-alive")]));
        let response = |m, s, v, hs: &[Header<'_>]| response_framing(m, s, v, hs).unwrap();
        assert_eq!(
            response("GET", 200, 1, &[]),
            ResponseFraming {
                body: BodyLength::UntilClose,
                keep_alive: false
            }
        );
        assert_eq!(
            response("HEAD", 200, 1, &[h("Content-Length", "9")]),
            ResponseFraming {
                body: BodyLength::Empty,
                keep_alive: true
            }
        );
        assert_eq!(
            response("GET", 304, 1, &[]).body,
            BodyLength::Empty,
            "no body, whatever the headers"
        );
        assert_eq!(
            response("GET", 200, 1, &[h("Transfer-Encoding", "gzip, chunked")]).body,
            BodyLength::Chunked
        );
        assert_eq!(
            response("GET", 200, 1, &[h("Transfer-Encoding", "chunked, gzip")]).body,
            BodyLength::UntilClose
        );
        assert!(response_framing(
            "GET",
            200,
            1,
            &[h("Content-Length", "1"), h("Transfer-Encoding", "chunked")]
        )
        .is_err());
        assert!(response_framing(
            "GET",
            200,
            1,
            &[h("Content-Length", "1"), h("Content-Length", "2")]
        )
        .is_err());
        assert!(response_framing("GET", 200, 1, &[h("Content-Length", "1x")]).is_err());
        // The last Transfer-Encoding line's final coding decides.
        assert_eq!(
            response(
                "GET",
                200,
                1,
                &[
                    h("Transfer-Encoding", "gzip"),
                    h("Transfer-Encoding", "chunked")
                ]
            )
            .body,
            BodyLength::Chunked
        );
        assert_eq!(
            response(
                "GET",
                200,
                1,
                &[
                    h("Transfer-Encoding", "chunked"),
                    h("Transfer-Encoding", "gzip")
                ]
            )
            .body,
            BodyLength::UntilClose
        );
        // The destination's Connection tokens, by version.
        let length = [h("Content-Length", "5")];
        let with = |token| [h("Content-Length", "5"), h("Connection", token)];
        assert_eq!(
            response("GET", 200, 1, &with("keep-alive, close")),
            ResponseFraming {
                body: BodyLength::Length(5),
                keep_alive: false
            }
        );
        assert!(response("GET", 200, 1, &length).keep_alive);
        assert!(!response("GET", 200, 0, &length).keep_alive);
        assert!(response("GET", 200, 0, &with("Keep-Alive")).keep_alive);
    }

    #[test]
    fn the_host_is_one_and_agrees_with_the_target() {
        assert_eq!(request_host(None, &[h("Host", "a")]), Ok(Some("a")));
        assert_eq!(request_host(Some("A"), &[h("Host", "a")]), Ok(Some("A")));
        assert!(request_host(Some("b"), &[h("Host", "a")]).is_err());
        assert!(request_host(None, &[h("Host", "a"), h("host", "a")]).is_err());
        assert!(request_host(None, &[h("Host", "a\u{7f}")]).is_err());
        for bad in [
            "h#",
            "h\\x",
            "a b",
            "u@h",
            "h:99999999",
            "[zz]",
            "h:8x",
            "h:1:2",
        ] {
            assert!(request_host(None, &[h("Host", bad)]).is_err(), "{bad}");
        }
        for good in ["db", "db.prod.svc:8080", "10.0.0.1:80", "[fd00::1]:80", ""] {
            assert!(request_host(None, &[h("Host", good)]).is_ok(), "{good}");
        }
    }

    #[test]
    fn targets_split_into_prefix_authority_and_path() {
        assert_eq!(
            split_target("http://db:80/x?y"),
            Ok(Target {
                prefix: "http://db:80",
                authority: Some("db:80"),
                path: "/x?y"
            })
        );
        assert_eq!(split_target("HTTP://db").unwrap().path, "/");
        assert_eq!(split_target("*").unwrap().path, "*");
        for refused in [
            "db:443",
            "ftp://db/x",
            "http://user@db/x",
            "http:///x",
            "http://db?x",
            "http://h#/public",
            "http://h\\admin#/public",
            "/admin#.css",
            "/api#?readonly=1",
            "x",
        ] {
            assert!(split_target(refused).is_err(), "{refused}");
        }
    }
}
