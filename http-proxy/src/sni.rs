//! The TLS ClientHello's server name (SNI), read from the first bytes a
//! client sends — never decrypted, never answered: the proxy only looks.
//!
//! [`peek_client_hello`] is pure: given the bytes received so far it says
//! "need more", or what the ClientHello names, or why the bytes are not an
//! acceptable ClientHello. Records and handshake messages are parsed with
//! `tls-parser` (rusticata); a ClientHello split over several TCP segments
//! or TLS records is reassembled, up to [`MAX_CLIENT_HELLO_BYTES`] (Envoy's
//! TLS inspector, which Cilium puts in front of `serverNames`, reads at most
//! 64 KiB too). Anything unusual fails closed: the caller refuses the
//! connection unless the answer is [`Hello::ServerName`].

use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_message_handshake, parse_tls_record_header,
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, TlsRecordType, MAX_RECORD_LEN,
};

/// The most bytes a complete ClientHello may take (records' headers
/// included): a hello that needs more is refused as oversized, so the
/// caller never holds more than this.
pub const MAX_CLIENT_HELLO_BYTES: usize = 64 * 1024;

/// What the bytes received so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello may still follow: nothing is decided until at least
    /// this many bytes (in all) have been received (never more than
    /// [`MAX_CLIENT_HELLO_BYTES`]). Every decision other than this one is
    /// final: more bytes never change it.
    NeedMore(usize),
    /// A complete ClientHello with exactly one `host_name`, as sent (not
    /// lowercased, maybe not a valid DNS name: matching decides).
    ServerName(String),
    /// A complete ClientHello without a server name.
    NoServerName,
    /// The first bytes are not a TLS handshake record (plain HTTP, SSLv2, ...).
    NotTls,
    /// TLS, but not a well-formed ClientHello.
    Malformed(&'static str),
    /// The ClientHello would be larger than [`MAX_CLIENT_HELLO_BYTES`].
    TooLarge,
}

impl Hello {
    /// Why a connection with this outcome is refused (`None` for
    /// [`Hello::ServerName`] and [`Hello::NeedMore`]), for events.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Hello::NeedMore(_) | Hello::ServerName(_) => None,
            Hello::NoServerName => Some("no server name (SNI) in the TLS ClientHello".into()),
            Hello::NotTls => Some("not TLS: the first bytes are no ClientHello".into()),
            Hello::Malformed(why) => Some(format!("malformed TLS ClientHello: {why}")),
            Hello::TooLarge => Some(format!(
                "TLS ClientHello larger than {MAX_CLIENT_HELLO_BYTES} bytes"
            )),
        }
    }
}

const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
const CLIENT_HELLO: u8 = 1;
/// Records a ClientHello may be split over. Real clients send one; the cap
/// bounds the work an attacker trickling tiny records can cause.
pub const MAX_RECORDS: usize = 16;

/// Looks at the first bytes of a connection (everything received so far).
pub fn peek_client_hello(buf: &[u8]) -> Hello {
    match peek(buf) {
        Hello::NeedMore(until) if until > MAX_CLIENT_HELLO_BYTES => Hello::TooLarge,
        decided => decided,
    }
}

fn peek(buf: &[u8]) -> Hello {
    // Decide "not TLS" from the first bytes, before waiting for more: a
    // handshake record (22) of TLS/SSL 3.x.
    match buf {
        [] => return Hello::NeedMore(1),
        [t, ..] if *t != u8::from(TlsRecordType::Handshake) => return Hello::NotTls,
        [_] => return Hello::NeedMore(2),
        [_, major, ..] if *major != 3 => return Hello::NotTls,
        _ => {}
    }
    // The handshake stream: the payloads of the records so far.
    let mut handshake: Vec<u8> = Vec::new();
    let mut rest = buf;
    let mut records = 0;
    loop {
        if handshake.len() >= HANDSHAKE_HEADER {
            if handshake[0] != CLIENT_HELLO {
                return Hello::Malformed("the first handshake message is not a ClientHello");
            }
            let len = u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
            if HANDSHAKE_HEADER + len > MAX_CLIENT_HELLO_BYTES {
                return Hello::TooLarge;
            }
            if handshake.len() >= HANDSHAKE_HEADER + len {
                return client_hello(&handshake[..HANDSHAKE_HEADER + len]);
            }
        }
        let offset = buf.len() - rest.len();
        if rest.len() < RECORD_HEADER {
            return Hello::NeedMore(offset + RECORD_HEADER);
        }
        if records == MAX_RECORDS {
            return Hello::Malformed("a ClientHello split over too many records");
        }
        records += 1;
        let Ok((body, header)) = parse_tls_record_header(rest) else {
            return Hello::Malformed("unreadable record header");
        };
        if header.record_type != TlsRecordType::Handshake {
            return Hello::Malformed("a non-handshake record before the ClientHello was complete");
        }
        if header.version.0 >> 8 != 3 {
            return Hello::Malformed("a record version other than 3.x");
        }
        if header.len == 0 {
            // RFC 8446 5.1: zero-length handshake fragments are not allowed.
            return Hello::Malformed("an empty handshake record");
        }
        if header.len > MAX_RECORD_LEN {
            return Hello::Malformed("a record longer than TLS allows");
        }
        let len = usize::from(header.len);
        if body.len() < len {
            return Hello::NeedMore(offset + RECORD_HEADER + len);
        }
        handshake.extend_from_slice(&body[..len]);
        rest = &body[len..];
    }
}

/// One complete ClientHello handshake message (header included).
fn client_hello(message: &[u8]) -> Hello {
    let hello = match parse_tls_message_handshake(message) {
        Ok(([], TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) => hello,
        _ => return Hello::Malformed("the ClientHello cannot be parsed"),
    };
    let Some(raw) = hello.ext else {
        return Hello::NoServerName;
    };
    let extensions = match parse_tls_client_hello_extensions(raw) {
        // A parser that stops early could hide a second server name
        // behind the one it found: every byte must be read.
        Ok(([], extensions)) => extensions,
        _ => return Hello::Malformed("the ClientHello's extensions cannot be parsed"),
    };
    // tls-parser reads the server_name list leniently (bytes after the
    // entries it understands are skipped), so the extension is also read
    // strictly here: nothing may hide behind the name it reports.
    let sni_extensions = extensions
        .iter()
        .filter(|e| matches!(e, TlsExtension::SNI(_)))
        .count();
    match (sni_extensions, server_name_extension(raw)) {
        (_, Err(why)) => Hello::Malformed(why),
        (0, Ok(None)) => Hello::NoServerName,
        (1, Ok(Some(data))) => server_name(data),
        _ => Hello::Malformed("the server_name extension is read differently"),
    }
}

/// The data of the one `server_name` extension (type 0) in a ClientHello's
/// extension block, walked to its last byte.
fn server_name_extension(mut raw: &[u8]) -> Result<Option<&[u8]>, &'static str> {
    let mut found = None;
    while !raw.is_empty() {
        let [t0, t1, l0, l1, rest @ ..] = raw else {
            return Err("a truncated extension header");
        };
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        if rest.len() < len {
            return Err("a truncated extension");
        }
        let (data, next) = rest.split_at(len);
        if [*t0, *t1] == [0, 0] {
            if found.is_some() {
                return Err("two server_name extensions");
            }
            found = Some(data);
        }
        raw = next;
    }
    Ok(found)
}

/// A `server_name` extension's data: as BoringSSL (Envoy's TLS inspector)
/// and RFC 6066 3 have it, a list holding exactly one `host_name` entry,
/// nothing before or after it.
fn server_name(data: &[u8]) -> Hello {
    let [l0, l1, list @ ..] = data else {
        return Hello::Malformed("a truncated server_name list");
    };
    if usize::from(u16::from_be_bytes([*l0, *l1])) != list.len() {
        return Hello::Malformed("a server_name list whose length is not its size");
    }
    if list.is_empty() {
        return Hello::NoServerName;
    }
    let [kind, n0, n1, name @ ..] = list else {
        return Hello::Malformed("a truncated server_name entry");
    };
    let len = usize::from(u16::from_be_bytes([*n0, *n1]));
    if name.len() > len {
        return Hello::Malformed("more than one server name entry");
    }
    if name.len() < len {
        return Hello::Malformed("a truncated server name");
    }
    if *kind != SNIType::HostName.0 {
        return Hello::Malformed("a server name entry that is not a host_name");
    }
    match std::str::from_utf8(name) {
        Ok("") => Hello::Malformed("an empty server name"),
        Ok(name) => Hello::ServerName(name.to_string()),
        Err(_) => Hello::Malformed("a server name that is not text"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello handshake message (header included) with these
    /// extensions (each `(type, data)`).
    fn hello_message(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3]; // client_version TLS 1.2
        body.extend([7u8; 32]); // random
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // compression: null
        if !extensions.is_empty() {
            let mut ext = Vec::new();
            for (t, data) in extensions {
                ext.extend(t.to_be_bytes());
                ext.extend((data.len() as u16).to_be_bytes());
                ext.extend(data);
            }
            body.extend((ext.len() as u16).to_be_bytes());
            body.extend(ext);
        }
        let mut msg = vec![CLIENT_HELLO];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    fn sni_ext(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for (t, name) in names {
            list.push(*t);
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(*name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        (0, data)
    }

    /// `message` in records of at most `fragment` bytes each.
    fn records(message: &[u8], fragment: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(fragment) {
            out.extend([22, 3, 1]);
            out.extend((chunk.len() as u16).to_be_bytes());
            out.extend(chunk);
        }
        out
    }

    fn hello_for(name: &str) -> Vec<u8> {
        records(&hello_message(&[sni_ext(&[(0, name.as_bytes())])]), 16384)
    }

    #[test]
    fn the_server_name_is_read_whole_or_in_any_split() {
        let bytes = hello_for("api.test");
        assert_eq!(
            peek_client_hello(&bytes),
            Hello::ServerName("api.test".into())
        );
        // Every prefix needs more (a ClientHello split across segments).
        for cut in 1..bytes.len() {
            let Hello::NeedMore(until) = peek_client_hello(&bytes[..cut]) else {
                panic!("cut at {cut}: {:?}", peek_client_hello(&bytes[..cut]));
            };
            assert!(
                until > cut && until <= bytes.len(),
                "cut at {cut}: until {until}"
            );
        }
        // The same message split across 7-byte and 16-byte records.
        let message = hello_message(&[sni_ext(&[(0, b"API.Test")])]);
        for fragment in [7, 16, 100] {
            let bytes = records(&message, fragment);
            assert_eq!(
                peek_client_hello(&bytes),
                Hello::ServerName("API.Test".into()),
                "records of {fragment}"
            );
            assert!(matches!(
                peek_client_hello(&bytes[..bytes.len() - 1]),
                Hello::NeedMore(_)
            ));
        }
        // Tiny records beyond the cap: refused, not reassembled.
        assert!(matches!(
            peek_client_hello(&records(&message, 1)),
            Hello::Malformed(_)
        ));
    }

    #[test]
    fn what_is_not_a_single_host_name_is_refused() {
        let refused =
            |exts: &[(u16, Vec<u8>)]| peek_client_hello(&records(&hello_message(exts), 16384));
        assert_eq!(refused(&[]), Hello::NoServerName);
        assert_eq!(refused(&[(43, vec![2, 3, 4])]), Hello::NoServerName);
        assert_eq!(refused(&[sni_ext(&[])]), Hello::NoServerName);
        assert!(matches!(
            refused(&[sni_ext(&[(0, b"a.test"), (0, b"b.test")])]),
            Hello::Malformed(_)
        ));
        assert!(matches!(
            refused(&[sni_ext(&[(0, b"a.test")]), sni_ext(&[(0, b"b.test")])]),
            Hello::Malformed(_)
        ));
        assert!(matches!(
            refused(&[sni_ext(&[(1, b"a.test")])]),
            Hello::Malformed(_)
        ));
        // Bytes after the one entry, inside the list or after it, which a
        // lenient parser skips (tls-parser stops at an entry it cannot read
        // whole): another name could hide there.
        let mut hidden = sni_ext(&[(0, b"api.test")]);
        hidden.1.extend([0, 0, 9]);
        hidden.1.extend(b"evil.tes");
        let list_len = (hidden.1.len() - 2) as u16;
        hidden.1[..2].copy_from_slice(&list_len.to_be_bytes());
        let lenient = tls_parser::parse_tls_extension_sni_content(&hidden.1);
        assert!(
            matches!(&lenient, Ok((_, TlsExtension::SNI(list))) if list.len() == 1),
            "the case the strict reading is for: {lenient:?}"
        );
        assert_eq!(
            refused(&[hidden]),
            Hello::Malformed("more than one server name entry")
        );
        let mut after = sni_ext(&[(0, b"api.test")]);
        after.1.extend([0, 0]);
        assert_eq!(
            refused(&[after]),
            Hello::Malformed("a server_name list whose length is not its size")
        );
        assert!(matches!(
            refused(&[sni_ext(&[(0, b"")])]),
            Hello::Malformed(_)
        ));
        assert!(matches!(
            refused(&[sni_ext(&[(0, b"\xff.test")])]),
            Hello::Malformed(_)
        ));
        // A truncated extension behind the server name (lengths adjusted so
        // that only the extension itself is broken).
        let mut msg = hello_message(&[sni_ext(&[(0, b"api.test")])]);
        msg.extend([0, 16, 0]);
        let len = msg.len() - HANDSHAKE_HEADER;
        msg[1..4].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
        let ext_len = u16::from_be_bytes([msg[45], msg[46]]) + 3;
        msg[45..47].copy_from_slice(&ext_len.to_be_bytes());
        assert!(matches!(
            peek_client_hello(&records(&msg, 16384)),
            Hello::Malformed(_)
        ));
    }

    #[test]
    fn plain_text_and_other_records_are_not_tls() {
        assert_eq!(peek_client_hello(b"G"), Hello::NotTls);
        assert_eq!(peek_client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(peek_client_hello(&[22, 2]), Hello::NotTls, "SSL 2");
        assert_eq!(
            peek_client_hello(&[0x80, 0x2e, 1]),
            Hello::NotTls,
            "SSLv2 hello"
        );
        assert_eq!(peek_client_hello(&[22]), Hello::NeedMore(2));
        // An application-data record first.
        assert!(matches!(
            peek_client_hello(&[23, 3, 3, 0, 1, 0]),
            Hello::NotTls
        ));
        // A handshake record holding a ServerHello.
        let mut msg = hello_message(&[sni_ext(&[(0, b"a.test")])]);
        msg[0] = 2;
        assert!(matches!(
            peek_client_hello(&records(&msg, 16384)),
            Hello::Malformed(_)
        ));
        // A handshake record, then an alert before the hello is complete.
        let msg = hello_message(&[sni_ext(&[(0, b"a.test")])]);
        let mut bytes = records(&msg[..10], 16384);
        bytes.extend([21, 3, 3, 0, 2, 2, 40]);
        assert!(matches!(peek_client_hello(&bytes), Hello::Malformed(_)));
        assert!(matches!(
            peek_client_hello(&[22, 3, 1, 0, 0]),
            Hello::Malformed(_)
        ));
    }

    #[test]
    fn an_oversized_hello_is_refused_before_it_is_read() {
        // The handshake header announces 1 MiB.
        let bytes = [22, 3, 1, 0, 4, CLIENT_HELLO, 0x10, 0, 0];
        assert_eq!(peek_client_hello(&bytes), Hello::TooLarge);
        // A record longer than TLS allows.
        assert!(matches!(
            peek_client_hello(&[22, 3, 1, 0xff, 0xff, CLIENT_HELLO]),
            Hello::Malformed(_)
        ));
        // A hello of the largest length whose records would take more than
        // the cap with their headers: refused once the record that would
        // cross it is announced.
        let mut bytes = records(&[CLIENT_HELLO, 0, 0xff, 0xfc], 4);
        for _ in 0..3 {
            bytes.extend([22, 3, 1, 0x3f, 0xff]);
            bytes.extend([0; 0x3fff]);
        }
        assert!(matches!(peek_client_hello(&bytes), Hello::NeedMore(_)));
        bytes.extend([22, 3, 1, 0x3f, 0xff]);
        assert_eq!(peek_client_hello(&bytes), Hello::TooLarge);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::TestCaseError;

        /// What the reader relies on: a decision on a prefix is final (more
        /// bytes never change it, so a refusal is never premature and an
        /// allow never one that more bytes would refuse), and `NeedMore(n)`
        /// holds for every length below `n` (so it may skip parsing them).
        fn prefixes_agree(bytes: &[u8]) -> Result<(), TestCaseError> {
            let whole = peek_client_hello(bytes);
            let mut waiting_until = 0;
            for cut in 0..=bytes.len() {
                let early = peek_client_hello(&bytes[..cut]);
                if cut < waiting_until {
                    prop_assert!(
                        matches!(early, Hello::NeedMore(_)),
                        "cut {}: {:?}",
                        cut,
                        early
                    );
                }
                match early {
                    Hello::NeedMore(until) => {
                        prop_assert!(until > cut && until <= MAX_CLIENT_HELLO_BYTES);
                        waiting_until = until;
                    }
                    decided => {
                        prop_assert_eq!(&decided, &whole, "cut {}", cut);
                        break;
                    }
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// Random bytes never panic and never come out as a server name
            /// unless they really hold a ClientHello (which random bytes
            /// starting with anything but 22, 3 cannot).
            #[test]
            fn random_bytes_never_allow(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let out = peek_client_hello(&bytes);
                if bytes.len() < 2 || bytes[0] != 22 || bytes[1] != 3 {
                    prop_assert!(!matches!(out, Hello::ServerName(_)), "{out:?}");
                }
            }

            /// A TLS-looking prefix followed by random bytes: never a panic,
            /// and prefixes agree.
            #[test]
            fn random_records_never_panic(
                len in 0u16..600,
                body in proptest::collection::vec(any::<u8>(), 0..700),
            ) {
                let mut bytes = vec![22, 3, 1];
                bytes.extend(len.to_be_bytes());
                bytes.extend(body);
                prefixes_agree(&bytes)?;
            }

            /// A real ClientHello with random bytes flipped: never a panic, and
            /// a name is only ever reported for the name that was sent or for
            /// bytes that really say something else (never invented).
            #[test]
            fn mutated_hellos_never_panic(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                fragment in 4usize..300,
            ) {
                let message = hello_message(&[sni_ext(&[(0, b"api.test")]), (43, vec![2, 3, 4])]);
                let mut bytes = records(&message, fragment);
                for (at, value) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
                prefixes_agree(&bytes)?;
            }

            /// Any split of a valid hello into records is reassembled.
            #[test]
            fn any_record_split_reads_the_name(fragment in 8usize..400, name in "[a-z]{1,20}\\.[a-z]{2,5}") {
                let bytes = records(&hello_message(&[sni_ext(&[(0, name.as_bytes())])]), fragment);
                prop_assert_eq!(peek_client_hello(&bytes), Hello::ServerName(name));
            }
        }
    }
}
