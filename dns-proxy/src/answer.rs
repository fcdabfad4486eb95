//! What an answer teaches: the addresses on the CNAME chain that starts at
//! the query name, each with the smallest TTL along the way.
//!
//! Records for names that are not on the chain are ignored — an upstream (or
//! an attacker racing it) cannot make the pod's policy open an address for a
//! name the pod did not ask about. That is the cache-poisoning guard.

use std::net::IpAddr;

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RData};

/// Longest CNAME chain followed (loops and absurd chains stop here).
pub const MAX_CHAIN: usize = 16;

/// The addresses an answer gives for `qname`, with effective TTLs.
pub fn learned_addresses(qname: &Name, response: &Message) -> Vec<(IpAddr, u32)> {
    let mut current = qname.to_lowercase();
    let mut chain_ttl = u32::MAX;
    let mut out: Vec<(IpAddr, u32)> = Vec::new();
    for _ in 0..=MAX_CHAIN {
        for r in response
            .answers
            .iter()
            .filter(|r| r.name.to_lowercase() == current)
        {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            let ttl = r.ttl.min(chain_ttl);
            match out.iter_mut().find(|(i, _)| *i == ip) {
                Some(existing) => existing.1 = existing.1.max(ttl),
                None => out.push((ip, ttl)),
            }
        }
        let next = response.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name.to_lowercase() == current => {
                Some((target.0.to_lowercase(), r.ttl))
            }
            _ => None,
        });
        match next {
            Some((target, ttl)) => {
                chain_ttl = chain_ttl.min(ttl);
                current = target;
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::Record;

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn a(n: &str, ip: [u8; 4], ttl: u32) -> Record {
        Record::from_rdata(name(n), ttl, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn cname(n: &str, target: &str, ttl: u32) -> Record {
        Record::from_rdata(name(n), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn response(records: Vec<Record>) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.insert_answers(records);
        m
    }

    #[test]
    fn follows_the_chain_and_takes_the_minimum_ttl() {
        let m = response(vec![
            cname("www.shop.test.", "edge.cdn.test.", 60),
            cname("edge.cdn.test.", "node1.cdn.test.", 300),
            a("node1.cdn.test.", [198, 51, 100, 1], 600),
            Record::from_rdata(
                name("node1.cdn.test."),
                20,
                RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
            ),
        ]);
        let got = learned_addresses(&name("WWW.shop.test."), &m);
        assert_eq!(
            got,
            vec![
                ("198.51.100.1".parse().unwrap(), 60),
                ("::1".parse().unwrap(), 20)
            ]
        );
    }

    #[test]
    fn records_off_the_chain_are_ignored() {
        let m = response(vec![
            a("api.stripe.test.", [203, 0, 113, 10], 60),
            a("evil.test.", [6, 6, 6, 6], 60),
            cname("other.test.", "evil.test.", 60),
        ]);
        assert_eq!(
            learned_addresses(&name("api.stripe.test."), &m),
            vec![("203.0.113.10".parse().unwrap(), 60)]
        );
    }

    #[test]
    fn cname_loops_end() {
        let m = response(vec![
            cname("a.test.", "b.test.", 60),
            cname("b.test.", "a.test.", 60),
        ]);
        assert!(learned_addresses(&name("a.test."), &m).is_empty());
    }
}
