//! Just enough of the DNS wire format for the cached-answer fast path
//! ([`crate::Proxy::answer_from_cache`]): reading a plain query without
//! building hickory's message, and finding the TTL fields of an encoded
//! answer so a cached copy can be served with its TTLs counted down.
//!
//! Both are deliberately narrow: anything unusual (more than one question,
//! an opcode other than QUERY, a record other than OPT in the additional
//! section, a name with characters hickory would escape or an IDNA label
//! it would show decoded) is `None`, and the query takes the full hickory
//! path. The fast path may only ever answer what the full path would.

/// A standard query as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainQuery {
    pub id: u16,
    /// The question section, verbatim (echoed in the reply).
    pub question: std::ops::Range<usize>,
    /// The query name in wire form, ASCII-lowercased (the cache key).
    pub name_wire: Vec<u8>,
    /// The query name as hickory displays it lowercased: labels joined
    /// with dots, a trailing dot (what policy checks are made on).
    pub name_text: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The EDNS OPT record, if the query has one.
    pub edns: Option<Edns>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub max_payload: u16,
    pub dnssec_ok: bool,
}

const HEADER: usize = 12;
const OPT: u16 = 41;

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Reads `bytes` as a single-question standard query with plain labels
/// of `[A-Za-z0-9_-]`; `None` for anything else.
pub fn parse_query(bytes: &[u8]) -> Option<PlainQuery> {
    let id = u16_at(bytes, 0)?;
    let flags = u16_at(bytes, 2)?;
    let qr = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    if qr || opcode != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (
        u16_at(bytes, 4)?,
        u16_at(bytes, 6)?,
        u16_at(bytes, 8)?,
        u16_at(bytes, 10)?,
    );
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut i = HEADER;
    let mut name_wire = Vec::with_capacity(32);
    let mut name_text = String::with_capacity(32);
    loop {
        let len = usize::from(*bytes.get(i)?);
        name_wire.push(len as u8);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // a compression pointer or a reserved label type
        }
        let label = bytes.get(i..i + len)?;
        if label.len() >= 4 && label[..4].eq_ignore_ascii_case(b"xn--") {
            return None; // hickory shows IDNA labels decoded
        }
        if label[0] == b'-' {
            return None; // hickory escapes a leading dash
        }
        for &c in label {
            let c = c.to_ascii_lowercase();
            if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_') {
                return None; // hickory would escape it
            }
            name_wire.push(c);
            name_text.push(char::from(c));
        }
        name_text.push('.');
        i += len;
        if name_wire.len() > 255 {
            return None;
        }
    }
    if name_text.is_empty() {
        name_text.push('.');
    }
    let qtype = u16_at(bytes, i)?;
    let qclass = u16_at(bytes, i + 2)?;
    i += 4;
    let question = HEADER..i;
    let edns = if ar == 1 {
        // The one additional record must be an OPT with the root name,
        // EDNS version 0 and no options (options are hickory's to read:
        // a query with a cookie, say, takes the full path).
        if *bytes.get(i)? != 0 || u16_at(bytes, i + 1)? != OPT {
            return None;
        }
        let max_payload = u16_at(bytes, i + 3)?;
        let (extended_rcode, version) = (*bytes.get(i + 5)?, *bytes.get(i + 6)?);
        let ttl_flags = u16_at(bytes, i + 7)?;
        let rdlen = u16_at(bytes, i + 9)?;
        if extended_rcode != 0 || version != 0 || rdlen != 0 {
            return None;
        }
        i += 11;
        Some(Edns {
            max_payload,
            dnssec_ok: ttl_flags & 0x8000 != 0,
        })
    } else {
        None
    };
    if i != bytes.len() {
        return None; // truncated or trailing bytes
    }
    Some(PlainQuery {
        id,
        question,
        name_wire,
        name_text,
        qtype,
        qclass,
        edns,
    })
}

/// The length of the first question's name of an encoded message, if it
/// is uncompressed (as hickory writes the first name of a message).
pub fn parse_query_name_len(b: &[u8]) -> Option<usize> {
    let mut i = HEADER;
    loop {
        let len = usize::from(*b.get(i)?);
        i += 1;
        match len {
            0 => return Some(i - HEADER),
            1..=63 => i += len,
            _ => return None,
        }
    }
}

/// Skips a possibly compressed name starting at `i`; the index after it.
fn skip_name(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *b.get(i)?;
        match len {
            0 => return Some(i + 1),
            1..=63 => i += 1 + usize::from(len),
            0xc0..=0xff => {
                b.get(i + 1)?;
                return Some(i + 2); // a pointer ends the name here
            }
            _ => return None,
        }
    }
}

/// The offsets of the TTL fields of every record in an encoded message
/// but OPT (whose "TTL" carries EDNS flags); `None` if the message does
/// not walk to its exact end.
pub fn ttl_offsets(b: &[u8]) -> Option<Vec<usize>> {
    let qd = u16_at(b, 4)?;
    let records =
        usize::from(u16_at(b, 6)?) + usize::from(u16_at(b, 8)?) + usize::from(u16_at(b, 10)?);
    let mut i = HEADER;
    for _ in 0..qd {
        i = skip_name(b, i)? + 4;
    }
    let mut out = Vec::with_capacity(records);
    for _ in 0..records {
        i = skip_name(b, i)?;
        let rtype = u16_at(b, i)?;
        let rdlen = usize::from(u16_at(b, i + 8)?);
        if rtype != OPT {
            out.push(i + 4);
        }
        i += 10 + rdlen;
    }
    (i == b.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Edns as HickoryEdns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use hickory_proto::serialize::binary::BinEncodable;

    use super::*;

    fn query(name: &str, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(name).unwrap(),
            RecordType::AAAA,
        ));
        if let Some((size, dnssec_ok)) = edns {
            let mut e = HickoryEdns::new();
            e.set_max_payload(size);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn a_plain_query_reads_as_hickory_reads_it() {
        for name in ["API.Stripe.test.", "a-b_c.9.example.", "."] {
            let bytes = query(name, None);
            let q = parse_query(&bytes).expect(name);
            let hickory = Message::from_vec(&bytes).unwrap();
            let lower = hickory.queries[0].name.to_lowercase();
            assert_eq!(q.name_text, lower.to_string(), "{name}");
            assert_eq!(q.name_wire, lower.to_bytes().unwrap(), "{name}");
            assert_eq!(q.id, 0x1234);
            assert_eq!(q.qtype, u16::from(RecordType::AAAA));
            assert_eq!(q.qclass, 1);
            assert_eq!(q.edns, None);
            assert_eq!(&bytes[q.question.clone()], &bytes[12..]);
        }
    }

    #[test]
    fn edns_payload_and_the_do_bit_are_read() {
        let q = parse_query(&query("a.test.", Some((1232, true)))).unwrap();
        assert_eq!(
            q.edns,
            Some(Edns {
                max_payload: 1232,
                dnssec_ok: true
            })
        );
        let q = parse_query(&query("a.test.", Some((4096, false)))).unwrap();
        assert!(!q.edns.unwrap().dnssec_ok);
    }

    #[test]
    fn anything_unusual_takes_the_full_path() {
        // Characters hickory escapes, IDNA labels it shows decoded.
        for name in [
            "a\\.b.test.",
            "xn--bcher-kva.test.",
            "XN--x.test.",
            "a b.test.",
        ] {
            let Ok(n) = Name::from_ascii(name) else {
                continue;
            };
            let mut m = Message::new(1, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(n, RecordType::A));
            assert_eq!(parse_query(&m.to_vec().unwrap()), None, "{name}");
        }
        let good = query("a.test.", None);
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), None, "a response");
        let mut notify = good.clone();
        notify[2] |= 4 << 3;
        assert_eq!(parse_query(&notify), None, "another opcode");
        let mut two = good.clone();
        two[5] = 2;
        assert_eq!(parse_query(&two), None, "two questions");
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(parse_query(&trailing), None, "trailing bytes");
        assert_eq!(parse_query(&good[..good.len() - 1]), None, "truncated");
        let mut pointer = good[..12].to_vec();
        pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(parse_query(&pointer), None, "a compressed question");
    }

    #[test]
    fn ttl_offsets_find_every_ttl_but_opts() {
        use hickory_proto::rr::rdata::{A, CNAME};
        use hickory_proto::rr::{RData, Record};
        let n = |s: &str| Name::from_ascii(s).unwrap();
        let mut m = Message::new(9, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(n("www.test."), RecordType::A));
        m.answers.push(Record::from_rdata(
            n("www.test."),
            300,
            RData::CNAME(CNAME(n("edge.test."))),
        ));
        m.answers.push(Record::from_rdata(
            n("edge.test."),
            60,
            RData::A(A([192, 0, 2, 1].into())),
        ));
        m.set_edns(HickoryEdns::new());
        let bytes = m.to_vec().unwrap();
        let offsets = ttl_offsets(&bytes).unwrap();
        let ttls: Vec<u32> = offsets
            .iter()
            .map(|&o| u32::from_be_bytes(bytes[o..o + 4].try_into().unwrap()))
            .collect();
        assert_eq!(ttls, vec![300, 60]);
        assert_eq!(ttl_offsets(&bytes[..bytes.len() - 1]), None);
    }
}
