//! Where a chunked request or response body ends (HTTP/1.1 chunked transfer
//! coding, RFC 9112 section 7.1), found as the bytes go by.
//!
//! The proxy forwards chunked bodies verbatim: it never decodes or
//! re-encodes them, so the next hop parses exactly the bytes the sender
//! wrote. That is only safe if the proxy and the next hop agree on where the
//! body ends; if they do not, the bytes after the proxy's idea of the end
//! are a request the proxy never checked (request smuggling). So the
//! scanner accepts only the strict grammar and refuses everything two
//! parsers could read differently: a bare LF or lone CR as a line end,
//! whitespace inside or after a chunk size, sizes too long to be read the
//! same everywhere, control bytes in extensions, obs-fold or malformed
//! field lines in the trailer section.
//!
//! Pure: no I/O. Input may arrive split at any byte; the result is the same
//! as for the bytes fed at once. Chunk data is skipped in one step per
//! [`ChunkedScanner::feed`] call, whatever its size; only size lines and
//! trailers are read byte by byte (and they are bounded).

use std::fmt;

/// At most this many hex digits in a chunk size (leading zeros included):
/// 16 digits always fit a `u64`, and a longer run is either an overflow
/// some parser would wrap or padding no sender needs.
const MAX_SIZE_DIGITS: u8 = 16;

/// At most this many bytes in a chunk size line, size and extensions
/// together (its CRLF not counted): extensions are never read, so a long
/// line is only a way to make the proxy buffer or loop.
const MAX_SIZE_LINE: usize = 4096;

/// At most this many bytes in the trailer section, every CRLF included
/// (the final empty line too).
const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// Where a chunked body ends, found incrementally.
///
/// Feed it the body's bytes in order, from the first byte after the
/// header section; it says how many of them belong to the body and when
/// the body has ended.
#[derive(Debug, Clone, Default)]
pub struct ChunkedScanner {
    state: State,
    /// The chunk size read so far on the current size line.
    size: u64,
    /// How many hex digits of it (leading zeros included).
    digits: u8,
    /// Bytes of the current size line so far (before its CRLF).
    line_len: usize,
    /// Bytes of the trailer section so far.
    trailer_len: usize,
}

/// What one [`ChunkedScanner::feed`] call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// How many of the bytes fed in this call belong to the body (all of
    /// them unless `done`).
    pub consumed: usize,
    /// The body ended (after the last chunk's trailer section and its final
    /// CRLF) at `consumed`: the bytes after it are the next message's.
    pub done: bool,
}

/// Why a chunked body is refused. Each names the first byte that is not
/// strictly well-formed; nothing is repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A size line that does not start with a hex digit, or has anything
    /// but hex digits, `;` (after optional spaces or tabs) or CR after them.
    BadSize,
    /// More than 16 hex digits in a chunk size.
    SizeTooLarge,
    /// A size line (size and extensions) longer than 4096 bytes.
    LineTooLong,
    /// A byte in a chunk extension that is not a token character, `=`,
    /// `;`, `"`, space or tab.
    BadExtension,
    /// A line end that is not exactly CRLF (a bare LF, a CR not followed by
    /// LF), or chunk data not followed by CRLF (data longer than its size).
    BadLineEnd,
    /// A trailer line that is not `token ":" value` (an empty or invalid
    /// name, a space before the colon, a forbidden byte in the value, a
    /// line starting with a space or tab, i.e. obs-fold).
    BadTrailer,
    /// A trailer section larger than 64 KiB.
    TrailersTooLarge,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkError::BadSize => "a chunk size that is not hexadecimal",
            ChunkError::SizeTooLarge => "a chunk size of more than 16 hex digits",
            ChunkError::LineTooLong => "a chunk size line longer than 4096 bytes",
            ChunkError::BadExtension => "a forbidden byte in a chunk extension",
            ChunkError::BadLineEnd => "a line end that is not CRLF",
            ChunkError::BadTrailer => "a malformed trailer field line",
            ChunkError::TrailersTooLarge => "a trailer section larger than 64 KiB",
        })
    }
}

impl std::error::Error for ChunkError {}

/// Where the scanner is in the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// In a size line's hex digits (`digits` of them so far).
    #[default]
    Size,
    /// After spaces or tabs following the size: only more of them or `;`.
    SizeSpace,
    /// In the extensions, up to the line's CR.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// In chunk data, this many bytes left.
    Data {
        remaining: u64,
    },
    /// After chunk data: its CR, then its LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer field name.
    TrailerName,
    /// In a trailer field value, up to the line's CR.
    TrailerValue,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final empty line's CR.
    FinalLf,
    Done,
    /// Refused; the same error is returned for any later call.
    Failed(ChunkError),
}

/// Whether `b` may appear in a chunk extension: a token character, `=`,
/// `;`, `"`, space or tab.
fn is_extension_byte(b: u8) -> bool {
    is_tchar(b) || b"=;\" \t".contains(&b)
}

impl ChunkedScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the body, in order.
    ///
    /// Once the body is done, further calls consume nothing and say `done`
    /// again; once an error is returned, further calls return the same
    /// error. Neither panics (a caller should stop at either, though).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Progress, ChunkError> {
        if let State::Failed(e) = self.state {
            return Err(e);
        }
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                // The body ended inside this call: the rest is not ours.
                State::Done => break,
                // Skip as much data as this call holds in one step: a body
                // may be gigabytes, and the data is never looked at.
                State::Data { remaining } => {
                    let available = bytes.len() - at;
                    // `remaining` may exceed usize on 32-bit targets; then
                    // it is certainly more than `available`.
                    let take = usize::try_from(remaining).map_or(available, |r| r.min(available));
                    at += take;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining }
                    };
                }
                _ => {
                    let byte = bytes[at];
                    at += 1;
                    if let Err(e) = self.step(byte) {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                }
            }
        }
        Ok(Progress {
            consumed: at,
            done: self.is_done(),
        })
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// One byte outside chunk data.
    fn step(&mut self, byte: u8) -> Result<(), ChunkError> {
        use ChunkError::*;
        self.state = match self.state {
            State::Size => match hex_value(byte) {
                Some(value) => {
                    if self.digits == MAX_SIZE_DIGITS {
                        return Err(SizeTooLarge);
                    }
                    self.count_line()?;
                    self.digits += 1;
                    // Exact: at most 16 digits of 4 bits each.
                    self.size = (self.size << 4) | value;
                    State::Size
                }
                // A size needs at least one digit: ";x", " 5" or "\r\n"
                // alone are not sizes.
                None if self.digits == 0 => return Err(BadSize),
                None => match byte {
                    b'\r' => State::SizeLf,
                    b';' => {
                        self.count_line()?;
                        State::Extension
                    }
                    // BWS before `;` (RFC 9112 7.1.1) ...
                    b' ' | b'\t' => {
                        self.count_line()?;
                        State::SizeSpace
                    }
                    b'\n' => return Err(BadLineEnd),
                    _ => return Err(BadSize),
                },
            },
            State::SizeSpace => match byte {
                b' ' | b'\t' => {
                    self.count_line()?;
                    State::SizeSpace
                }
                b';' => {
                    self.count_line()?;
                    State::Extension
                }
                // ... but only before `;`: "5 \r\n" or "5 5" is a size
                // some parsers would read as 5 and others refuse or read
                // as 0x55.
                _ => return Err(BadSize),
            },
            State::Extension => match byte {
                b'\r' => State::SizeLf,
                b'\n' => return Err(BadLineEnd),
                // Extensions are passed on unread: they may hold what
                // `name[=value]` pairs are made of (tokens, `=`, `;`,
                // quotes, blanks) and nothing that could look like a
                // request line (`/`, `:`) to a next hop that mistakes the
                // line for one, end the line, or be a control.
                b if is_extension_byte(b) => {
                    self.count_line()?;
                    State::Extension
                }
                _ => return Err(BadExtension),
            },
            State::SizeLf => match byte {
                b'\n' => {
                    let size = self.size;
                    (self.size, self.digits, self.line_len) = (0, 0, 0);
                    if size == 0 {
                        // The last chunk: no data, the trailer section next.
                        State::TrailerStart
                    } else {
                        State::Data { remaining: size }
                    }
                }
                _ => return Err(BadLineEnd),
            },
            // Only reached via `feed`, which skips the data itself.
            State::Data { .. } => unreachable!("chunk data is skipped in feed"),
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(BadLineEnd),
            },
            State::DataLf => match byte {
                b'\n' => State::Size,
                _ => return Err(BadLineEnd),
            },
            State::TrailerStart
            | State::TrailerName
            | State::TrailerValue
            | State::TrailerLf
            | State::FinalLf => {
                self.trailer_len += 1;
                if self.trailer_len > MAX_TRAILER_BYTES {
                    return Err(TrailersTooLarge);
                }
                self.trailer_byte(byte)?
            }
            // `feed` returns before stepping in these.
            State::Done | State::Failed(_) => unreachable!("stepped after the end"),
        };
        Ok(())
    }

    /// One byte of the trailer section: the state after it.
    fn trailer_byte(&self, byte: u8) -> Result<State, ChunkError> {
        use ChunkError::*;
        Ok(match (self.state, byte) {
            // The empty line that ends the section.
            (State::TrailerStart, b'\r') => State::FinalLf,
            (State::FinalLf, b'\n') => State::Done,
            // A field name: a non-empty token right before the colon
            // (RFC 9112 5.1: no whitespace between name and colon).
            (State::TrailerStart | State::TrailerName, b) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerValue, b'\r') => State::TrailerLf,
            (State::TrailerValue, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => State::TrailerValue,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            // A bare LF anywhere, or a CR not followed by LF.
            (_, b'\n') | (State::TrailerLf | State::FinalLf, _) => return Err(BadLineEnd),
            // Everything else: obs-fold (a line starting with a space or
            // tab), an empty name, a byte not allowed in a name or value, a
            // name ended by a space or a line end.
            _ => return Err(BadTrailer),
        })
    }

    /// Counts one byte of the size line against its limit.
    fn count_line(&mut self) -> Result<(), ChunkError> {
        self.line_len += 1;
        if self.line_len > MAX_SIZE_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(())
    }
}

/// The value of a hex digit (either case).
fn hex_value(byte: u8) -> Option<u64> {
    char::from(byte).to_digit(16).map(u64::from)
}

/// An RFC 9110 `tchar`: a byte of a token such as a field name.
pub(crate) fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The whole input in one call.
    fn scan(bytes: &[u8]) -> Result<Progress, ChunkError> {
        ChunkedScanner::new().feed(bytes)
    }

    /// Where the body ends (`None`: not yet), feeding `bytes` in pieces cut
    /// at `cuts` (sorted offsets), and checking what every call says.
    fn scan_split(bytes: &[u8], cuts: &[usize]) -> Result<Option<usize>, ChunkError> {
        let mut scanner = ChunkedScanner::new();
        let mut start = 0;
        for end in cuts.iter().copied().chain([bytes.len()]) {
            let piece = &bytes[start..end];
            let progress = scanner.feed(piece)?;
            assert_eq!(progress.done, scanner.is_done());
            if progress.done {
                assert!(progress.consumed <= piece.len());
                return Ok(Some(start + progress.consumed));
            }
            assert_eq!(
                progress.consumed,
                piece.len(),
                "not done: all of it is body"
            );
            start = end;
        }
        Ok(None)
    }

    /// `scan`'s answer in `scan_split`'s terms.
    fn scan_whole(bytes: &[u8]) -> Result<Option<usize>, ChunkError> {
        scan(bytes).map(|p| p.done.then_some(p.consumed))
    }

    /// One byte per call: every split at once.
    fn scan_bytewise(bytes: &[u8]) -> Result<Option<usize>, ChunkError> {
        scan_split(bytes, &(0..bytes.len()).collect::<Vec<_>>())
    }

    fn err(bytes: &[u8]) -> ChunkError {
        let whole = scan(bytes).expect_err("refused");
        // The same refusal byte by byte.
        assert_eq!(
            scan_bytewise(bytes),
            Err(whole),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        whole
    }

    /// Where a complete, valid body ends.
    fn end(bytes: &[u8]) -> usize {
        let whole = scan(bytes).expect("accepted");
        assert!(whole.done, "ended");
        assert_eq!(scan_bytewise(bytes), Ok(Some(whole.consumed)));
        whole.consumed
    }

    #[test]
    fn a_simple_body_ends_before_the_next_request() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        let mut bytes = body.to_vec();
        bytes.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            scan(&bytes),
            Ok(Progress {
                consumed: body.len(),
                done: true
            })
        );
        assert_eq!(end(&bytes), body.len());
        assert_eq!(end(body), body.len());
        // The only body that is no chunk but the last.
        assert_eq!(end(b"0\r\n\r\nX"), 5);
    }

    #[test]
    fn an_unfinished_body_is_all_consumed_and_not_done() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        for cut in 0..body.len() {
            assert_eq!(
                scan(&body[..cut]),
                Ok(Progress {
                    consumed: cut,
                    done: false
                }),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn an_empty_feed_consumes_nothing() {
        let mut scanner = ChunkedScanner::new();
        assert_eq!(
            scanner.feed(b""),
            Ok(Progress {
                consumed: 0,
                done: false
            })
        );
        assert_eq!(
            scanner.feed(b"3\r\nab"),
            Ok(Progress {
                consumed: 5,
                done: false
            })
        );
        assert_eq!(
            scanner.feed(b""),
            Ok(Progress {
                consumed: 0,
                done: false
            })
        );
        assert!(!scanner.is_done());
    }

    #[test]
    fn after_the_end_or_an_error_the_answer_stays() {
        let mut scanner = ChunkedScanner::new();
        assert_eq!(
            scanner.feed(b"0\r\n\r\n"),
            Ok(Progress {
                consumed: 5,
                done: true
            })
        );
        assert!(scanner.is_done());
        assert_eq!(
            scanner.feed(b"1\r\nx\r\n"),
            Ok(Progress {
                consumed: 0,
                done: true
            })
        );

        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.feed(b"1\n"), Err(ChunkError::BadLineEnd));
        assert_eq!(scanner.feed(b""), Err(ChunkError::BadLineEnd));
        assert_eq!(scanner.feed(b"0\r\n\r\n"), Err(ChunkError::BadLineEnd));
        assert!(!scanner.is_done());
    }

    #[test]
    fn hex_sizes_in_either_case_with_leading_zeros() {
        let data = [b'x'; 0x1a];
        for size in ["1a", "1A", "001A", "000000000000001a"] {
            let mut bytes = format!("{size}\r\n").into_bytes();
            bytes.extend_from_slice(&data);
            bytes.extend_from_slice(b"\r\n0000\r\n\r\n");
            assert_eq!(end(&bytes), bytes.len(), "{size}");
        }
        // The largest size there is: not an overflow, just a long body.
        let progress = scan(b"ffffffffffffffff\r\nabc").unwrap();
        assert_eq!(
            progress,
            Progress {
                consumed: 21,
                done: false
            }
        );
        let progress = scan(b"FFFFFFFFFFFFFFFF\r\nabc").unwrap();
        assert!(!progress.done);
    }

    #[test]
    fn extensions_and_trailers_are_accepted() {
        for body in [
            &b"5;name=value\r\nhello\r\n0\r\n\r\n"[..],
            b"5 ;x\r\nhello\r\n0\r\n\r\n",
            b"5\t \t;a=\"quoted; str\" ; b ; c=1\r\nhello\r\n0;last\r\n\r\n",
            b"5;\r\nhello\r\n0 ; x=y\r\n\r\n",
            b"1\r\n\n\r\n0\r\nExpires: never\r\n\r\n",
            b"0\r\nX-Sum: abc\r\nx-empty:\r\nA!#$%&'*+-.^_`|~9:  \tv a l\xff\x80 \r\n\r\n",
        ] {
            assert_eq!(end(body), body.len(), "{:?}", String::from_utf8_lossy(body));
        }
        // Data may hold anything, line ends included, once its size says so.
        assert_eq!(end(b"4\r\n\r\n\r\n\r\n0\r\n\r\n"), 14);
    }

    #[test]
    fn malformed_sizes_are_refused() {
        use ChunkError::*;
        for (bytes, want) in [
            (&b"g\r\n"[..], BadSize),
            (b"\r\n", BadSize),
            (b";x\r\n", BadSize),
            (b" 5\r\n", BadSize),
            (b"+5\r\n", BadSize),
            (b"0x5\r\n", BadSize),
            (b"5 \r\n", BadSize),
            (b"5\t\r\n", BadSize),
            (b"5 5\r\n", BadSize),
            (b"5g\r\n", BadSize),
            (b"5\r\nhello\r\n-1\r\n", BadSize),
            // 17 digits, even if the value is small ...
            (b"00000000000000001\r\n", SizeTooLarge),
            // ... or one that does not fit 64 bits.
            (b"10000000000000000\r\n", SizeTooLarge),
            (b"fffffffffffffffff\r\n", SizeTooLarge),
        ] {
            assert_eq!(err(bytes), want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn forbidden_bytes_in_extensions_are_refused() {
        for bytes in [
            &b"5;a\0\r\n"[..],
            b"5;a\x7f\r\n",
            b"5;a\x01\r\n",
            b"5;\xc3\xa9\r\n",
            b"0;a\x0b\r\n\r\n",
            // What could pass for a request line to a confused next hop.
            b"f; /admin HTTP/1.1\r\n",
            b"5;a:b\r\n",
            b"5;a\\b\r\n",
        ] {
            assert_eq!(err(bytes), ChunkError::BadExtension);
        }
    }

    #[test]
    fn every_line_end_must_be_crlf() {
        for bytes in [
            // After the size, with or without extensions.
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5;x\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"5\r\rhello\r\n0\r\n\r\n",
            b"5;x\r;y\r\nhello\r\n0\r\n\r\n",
            // After the data.
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            // Data longer than its size: no CRLF where the size says.
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\rX\n0\r\n\r\n",
            // After the last chunk.
            b"0\n\r\n",
            // In the trailer section, and at its end.
            b"0\r\nX: y\n\r\n",
            b"0\r\nX: y\ry\r\n\r\n",
            b"0\r\nX: y\r\n\n",
            b"0\r\n\n",
            b"0\r\n\r\r\n",
            b"0\r\n\rX",
        ] {
            assert_eq!(
                err(bytes),
                ChunkError::BadLineEnd,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn malformed_trailers_are_refused() {
        for bytes in [
            // A space (or tab) before the colon.
            &b"0\r\nX : y\r\n\r\n"[..],
            b"0\r\nX\t: y\r\n\r\n",
            // obs-fold: a line continuing the previous one.
            b"0\r\nX: y\r\n z\r\n\r\n",
            b"0\r\nX: y\r\n\tz\r\n\r\n",
            b"0\r\n y: z\r\n\r\n",
            // No name, no colon, a name that is not a token.
            b"0\r\n: y\r\n\r\n",
            b"0\r\nX\r\n\r\n",
            b"0\r\nX(1): y\r\n\r\n",
            b"0\r\nX\"y: z\r\n\r\n",
            b"0\r\n\xc3\xa9: z\r\n\r\n",
            // Control bytes in a value.
            b"0\r\nX: a\0b\r\n\r\n",
            b"0\r\nX: a\x7f\r\n\r\n",
            b"0\r\nX: a\x0b\r\n\r\n",
        ] {
            assert_eq!(
                err(bytes),
                ChunkError::BadTrailer,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_size_line_longer_than_4096_bytes_is_refused() {
        let line = |len: usize| {
            let mut bytes = b"5;".to_vec();
            bytes.resize(len, b'x');
            bytes.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
            bytes
        };
        assert_eq!(end(&line(MAX_SIZE_LINE)), MAX_SIZE_LINE + 14);
        assert_eq!(err(&line(MAX_SIZE_LINE + 1)), ChunkError::LineTooLong);
        // Spaces before the `;` count too, on the last chunk as well.
        let mut bytes = b"0".to_vec();
        bytes.resize(MAX_SIZE_LINE + 1, b' ');
        assert_eq!(err(&bytes), ChunkError::LineTooLong);
        // And the limit is per line.
        let mut bytes = Vec::new();
        for _ in 0..3 {
            bytes.extend_from_slice(b"1;");
            bytes.resize(bytes.len() + MAX_SIZE_LINE - 2, b'y');
            bytes.extend_from_slice(b"\r\nz\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(end(&bytes), bytes.len());
    }

    #[test]
    fn a_trailer_section_larger_than_64k_is_refused() {
        // "0\r\n" then "X: " value "\r\n" and the final "\r\n": the trailer
        // section is the value and 7 bytes.
        let body = |section: usize| {
            let mut bytes = b"0\r\nX: ".to_vec();
            bytes.resize(section - 4 + 3, b'v');
            bytes.extend_from_slice(b"\r\n\r\n");
            bytes
        };
        assert_eq!(end(&body(MAX_TRAILER_BYTES)), 3 + MAX_TRAILER_BYTES);
        assert_eq!(
            err(&body(MAX_TRAILER_BYTES + 1)),
            ChunkError::TrailersTooLarge
        );
        // Many small lines add up.
        let mut bytes = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILER_BYTES / 8 {
            bytes.extend_from_slice(b"A: 1234\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        assert_eq!(err(&bytes), ChunkError::TrailersTooLarge);
    }

    #[test]
    fn large_chunks_are_skipped_whole() {
        let size = 3 << 20;
        let mut bytes = format!("{size:x}\r\n").into_bytes();
        bytes.resize(bytes.len() + size, 0);
        bytes.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(scan_whole(&bytes), Ok(Some(bytes.len())));
        assert_eq!(
            scan_split(&bytes, &[4, 1000, 2 << 20]),
            Ok(Some(bytes.len()))
        );
    }

    /// An independent reading of the grammar, line by line over the whole
    /// input, for the scanner to agree with.
    #[derive(Debug, PartialEq, Eq)]
    enum Reference {
        /// A complete body, this long.
        End(usize),
        /// No complete line is wrong, but the body has not ended.
        Incomplete,
        Invalid,
    }

    fn reference(bytes: &[u8]) -> Reference {
        // The next line (without its CRLF) and where the one after starts;
        // `None` if no LF yet. A line end not exactly CRLF is invalid.
        fn line(bytes: &[u8], from: usize) -> Option<Result<(&[u8], usize), ()>> {
            let lf = from + bytes[from..].iter().position(|&b| b == b'\n')?;
            let text = &bytes[from..lf];
            Some(match text.split_last() {
                Some((b'\r', text)) if !text.contains(&b'\r') => Ok((text, lf + 1)),
                _ => Err(()),
            })
        }
        let mut at = 0;
        loop {
            let (text, next) = match line(bytes, at) {
                None => return Reference::Incomplete,
                Some(Err(())) => return Reference::Invalid,
                Some(Ok(line)) => line,
            };
            let digits = text.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            let (size, rest) = text.split_at(digits);
            let spaces = rest
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            let ext = &rest[spaces..];
            let ext_ok = ext.is_empty() && rest.is_empty()
                || ext.first() == Some(&b';') && ext.iter().all(|&b| is_extension_byte(b));
            if !(1..=16).contains(&digits) || !ext_ok || text.len() > MAX_SIZE_LINE {
                return Reference::Invalid;
            }
            let size = u64::from_str_radix(std::str::from_utf8(size).unwrap(), 16).unwrap();
            at = next;
            if size == 0 {
                break;
            }
            let data_end = at.saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
            if data_end >= bytes.len() {
                return Reference::Incomplete;
            }
            match &bytes[data_end..] {
                [b'\r'] => return Reference::Incomplete,
                [b'\r', b'\n', ..] => at = data_end + 2,
                _ => return Reference::Invalid,
            }
        }
        let trailers = at;
        loop {
            let (text, next) = match line(bytes, at) {
                None => return Reference::Incomplete,
                Some(Err(())) => return Reference::Invalid,
                Some(Ok(line)) => line,
            };
            if next - trailers > MAX_TRAILER_BYTES {
                return Reference::Invalid;
            }
            if text.is_empty() {
                return Reference::End(next);
            }
            let Some(colon) = text.iter().position(|&b| b == b':') else {
                return Reference::Invalid;
            };
            let (name, value) = (&text[..colon], &text[colon + 1..]);
            let value_ok = value
                .iter()
                .all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80);
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) || !value_ok {
                return Reference::Invalid;
            }
            at = next;
        }
    }

    /// The scanner and the reference agree on `bytes`.
    fn agrees_with_reference(bytes: &[u8]) -> Result<(), TestCaseError> {
        let whole = scan_whole(bytes);
        match reference(bytes) {
            Reference::End(n) => prop_assert_eq!(whole, Ok(Some(n))),
            Reference::Invalid => prop_assert!(whole.is_err(), "{:?}", whole),
            // An incomplete line may already be refused.
            Reference::Incomplete => prop_assert!(!matches!(whole, Ok(Some(_))), "{:?}", whole),
        }
        Ok(())
    }

    /// Offsets at which to cut `len` bytes, sorted.
    fn cuts(len: usize, at: &[prop::sample::Index]) -> Vec<usize> {
        let mut cuts: Vec<usize> = at.iter().map(|i| i.index(len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    /// A chunk size as a sender might spell it: either case, maybe padded.
    fn size_text(size: usize, upper: bool, zeros: usize) -> String {
        let digits = if upper {
            format!("{size:X}")
        } else {
            format!("{size:x}")
        };
        let zeros = zeros.min(16 - digits.len());
        format!("{}{digits}", "0".repeat(zeros))
    }

    fn extension() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => Just(String::new()),
            1 => "[ \t]{0,2};[A-Za-z0-9!#$%&'*+.^_`|~=;\" \t-]{0,20}",
        ]
    }

    fn trailer() -> impl Strategy<Value = Vec<u8>> {
        let value_byte = prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff];
        (
            "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}",
            proptest::collection::vec(value_byte, 0..30),
        )
            .prop_map(|(name, value)| {
                let mut line = name.into_bytes();
                line.push(b':');
                line.extend(value);
                line.extend_from_slice(b"\r\n");
                line
            })
    }

    /// A well-formed chunked body.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let chunk = (
            proptest::collection::vec(any::<u8>(), 1..300),
            any::<bool>(),
            0usize..3,
            extension(),
        );
        (
            proptest::collection::vec(chunk, 0..6),
            1usize..4,
            extension(),
            proptest::collection::vec(trailer(), 0..4),
        )
            .prop_map(|(chunks, zeros, last_ext, trailers)| {
                let mut bytes = Vec::new();
                for (data, upper, zeros, ext) in chunks {
                    bytes.extend(size_text(data.len(), upper, zeros).bytes());
                    bytes.extend(ext.bytes());
                    bytes.extend_from_slice(b"\r\n");
                    bytes.extend(data);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend("0".repeat(zeros).bytes());
                bytes.extend(last_ext.bytes());
                bytes.extend_from_slice(b"\r\n");
                bytes.extend(trailers.concat());
                bytes.extend_from_slice(b"\r\n");
                bytes
            })
    }

    /// Bytes that are mostly the grammar's own, so that random strings get
    /// past the first byte often.
    fn grammar_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => prop::sample::select(b"0123456789aAfFgG\r\n;: \t=xX".to_vec()),
            1 => any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..200)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A valid body followed by anything ends exactly where it was
        /// encoded to, however it is split.
        #[test]
        fn valid_bodies_end_at_their_length(
            body in body(),
            after in proptest::collection::vec(any::<u8>(), 0..50),
            at in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut bytes = body.clone();
            bytes.extend(after);
            let whole = scan_whole(&bytes);
            prop_assert_eq!(whole, Ok(Some(body.len())));
            prop_assert_eq!(scan_split(&bytes, &cuts(bytes.len(), &at)), whole);
            prop_assert_eq!(scan_bytewise(&bytes), whole);
            // Every strict prefix is unfinished, never refused.
            for cut in [0, body.len() / 2, body.len() - 1] {
                prop_assert_eq!(scan_whole(&body[..cut]), Ok(None));
            }
            agrees_with_reference(&bytes)?;
        }

        /// Any bytes: never a panic, the same answer however they are
        /// split, and the reference's answer.
        #[test]
        fn any_bytes_split_anywhere_agree(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                grammar_bytes(),
            ],
            at in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = scan_whole(&bytes);
            prop_assert_eq!(scan_split(&bytes, &cuts(bytes.len(), &at)), whole);
            prop_assert_eq!(scan_bytewise(&bytes), whole);
            agrees_with_reference(&bytes)?;
        }

        /// A valid body with a few bytes changed, inserted or removed:
        /// near misses, the inputs a strict parser must get right.
        #[test]
        fn mutated_bodies_split_anywhere_agree(
            body in body(),
            edits in proptest::collection::vec(
                (any::<prop::sample::Index>(), 0u8..3, prop::sample::select(b"0aF\r\n; \t:\x00\x7f\xffz".to_vec())),
                1..4,
            ),
            at in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut bytes = body;
            for (i, kind, byte) in edits {
                let i = i.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => { bytes.remove(i); }
                }
            }
            let whole = scan_whole(&bytes);
            prop_assert_eq!(scan_split(&bytes, &cuts(bytes.len(), &at)), whole);
            prop_assert_eq!(scan_bytewise(&bytes), whole);
            agrees_with_reference(&bytes)?;
        }
    }
}
