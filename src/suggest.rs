//! `tollgate policy suggest`'s input side: event lines (as `tollgate
//! observe --output json` prints them, or as the agent's events socket
//! serves them) -> the observations [`policy::suggest`] turns into
//! policies. Pure but for [`read_events`], which only reads what it is
//! given.
//!
//! What counts: traffic that passed. Flows `ALLOWED`, `AUDIT` (would have
//! been dropped, passed in audit mode) and `REDIRECTED` (handed to a
//! proxy); DNS queries `ALLOWED` or `AUDIT` (answered); HTTP requests
//! `ALLOWED` or `ERROR` (allowed, the server unreachable). What was denied,
//! refused or dropped is never suggested: enforcement already said no, and a
//! suggestion must not turn a blocked attempt into a rule. Node -> local
//! pod flows (`host-to-local`) are always allowed and need no rule.

use std::io::BufRead;

use anyhow::{bail, Context};
use policy::suggest::{Observation, Party, L4};
use policy::Direction;

use crate::events::{address_ip, FlowLine, Peer};

/// Which events to use, by their `time`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub since: Option<jiff::Timestamp>,
    pub until: Option<jiff::Timestamp>,
}

impl Window {
    fn contains(&self, line: &FlowLine) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        // An event without a time cannot be placed in a window: left out.
        let Some(t) = line
            .time
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            return false;
        };
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

/// Event lines read from one input, with what was left out.
#[derive(Debug, Default)]
pub struct Events {
    pub lines: Vec<FlowLine>,
    /// Events the agent reported as lost (its `lost` notes).
    pub lost: u64,
    /// Events outside the window.
    pub outside: usize,
}

/// Reads JSON event lines from `input` (named `name` in errors). A line
/// that is not an event is an error naming the input and the line.
pub fn read_events(
    input: impl BufRead,
    name: &str,
    window: Window,
    events: &mut Events,
) -> anyhow::Result<()> {
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{name}: reading line {n}"))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line) {
            Ok(Parsed::Event(e)) => {
                if window.contains(&e) {
                    events.lines.push(*e);
                } else {
                    events.outside += 1;
                }
            }
            Ok(Parsed::Lost(k)) => events.lost += k,
            Err(e) => {
                // A Hubble flow (`--output hubble-json`) is a common mix-up.
                let hint = if line.contains("\"flow\":{") {
                    " (this looks like Hubble's JSON: record with `tollgate observe --output json`)"
                } else {
                    ""
                };
                bail!(
                    "{name}:{n}: not an event line of `tollgate observe --output json`: {e}{hint}"
                )
            }
        }
    }
    Ok(())
}

enum Parsed {
    Event(Box<FlowLine>),
    Lost(u64),
}

fn parse_line(line: &str) -> Result<Parsed, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if value.get("kind").and_then(|k| k.as_str()) == Some("lost") {
        return Ok(Parsed::Lost(
            value.get("lost").and_then(|l| l.as_u64()).unwrap_or(0),
        ));
    }
    let de = serde_path_to_error::deserialize::<_, FlowLine>(value);
    de.map(|e| Parsed::Event(Box::new(e))).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

fn party(peer: Option<&Peer>, address: Option<&str>, pod: Option<&str>) -> Party {
    let mut p = Party {
        ip: address.and_then(address_ip),
        ..Party::default()
    };
    if let Some(peer) = peer {
        p.namespace = peer.namespace.clone();
        p.pod = peer.pod.clone();
        p.labels = peer.labels.clone();
    }
    // The event's own `pod` says who the local side is, even in a line
    // without the peer descriptions.
    if p.namespace.is_none() {
        if let Some((ns, name)) = pod.and_then(|p| p.split_once('/')) {
            p.namespace = Some(ns.to_string());
            p.pod = Some(name.to_string());
        }
    }
    p
}

/// The observation an event line stands for; `None` if it does not count
/// (see the module docs).
pub fn observation(e: &FlowLine) -> Option<Observation> {
    let direction = match e.direction.as_deref() {
        Some("ingress") => Direction::Ingress,
        _ => Direction::Egress,
    };
    let src = party(e.source.as_deref(), e.src.as_deref(), None);
    let dst = party(e.destination.as_deref(), e.dst.as_deref(), None);
    let pod = e.pod.as_deref();
    // The pod whose policy this is, and the other end.
    let (subject, peer) = match direction {
        Direction::Egress => (party(e.source.as_deref(), e.src.as_deref(), pod), dst),
        Direction::Ingress => (party(e.destination.as_deref(), e.dst.as_deref(), pod), src),
    };
    match &*e.kind {
        "flow" => {
            if !matches!(&*e.verdict, "ALLOWED" | "AUDIT" | "REDIRECTED")
                || e.reason == "host-to-local"
            {
                return None;
            }
            let port = e.port?;
            let l4 = match e.protocol.as_deref()? {
                "TCP" => L4::Tcp(port),
                "UDP" => L4::Udp(port),
                "SCTP" => L4::Sctp(port),
                _ => return None,
            };
            Some(Observation::Flow {
                subject,
                direction,
                peer,
                names: e.names.clone(),
                l4,
            })
        }
        "dns" => {
            if !matches!(&*e.verdict, "ALLOWED" | "AUDIT") {
                return None;
            }
            // The resolver's address is what a DNS rule names.
            e.dst.as_deref().and_then(address_ip)?;
            Some(Observation::Dns {
                subject: party(e.source.as_deref(), e.src.as_deref(), pod),
                resolver: peer,
                port: e.port.unwrap_or(53),
                name: e.names.first()?.clone(),
                // Audited names taught nothing, but they still name what follows.
                answers: e.answers.iter().chain(&e.unlearned).copied().collect(),
            })
        }
        "http" => {
            let h = e.http.as_ref()?;
            if !matches!(&*e.verdict, "ALLOWED" | "ERROR")
                || h.method == http_proxy::tls::TLS_METHOD
            {
                return None;
            }
            Some(Observation::Http {
                subject,
                direction,
                peer,
                port: e.port?,
                method: h.method.clone(),
                path: h.path.clone(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    const DNS: &str = r#"{"kind":"dns","pod":"prod/app","verdict":"ALLOWED","reason":"dns-rule (A No Error)","direction":"egress","protocol":"UDP","src":"10.0.1.10","dst":"203.0.113.53:53","port":53,"names":["api.test"],"rule":"prod/obs specs[0].egress[0]","answers":["203.0.113.10"],"time":"2026-12-01T10:00:00Z","sport":40000,"source":{"identity":300,"namespace":"prod","pod":"app","labels":["k8s:app=app"]},"destination":{"identity":2,"labels":["reserved:world"]},"dns":{"qtype":"A","rcode":0}}"#;
    const FLOW: &str = r#"{"kind":"flow","pod":"prod/app","verdict":"AUDIT","reason":"default-deny","direction":"egress","protocol":"TCP","src":"10.0.1.10","dst":"203.0.113.10","port":80,"names":["api.test"],"rule":null,"answers":[],"time":"2026-12-01T10:00:01Z","source":{"identity":300,"namespace":"prod","pod":"app","labels":["k8s:app=app"]},"destination":{"identity":2,"labels":["reserved:world"]}}"#;

    fn read(text: &str, window: Window) -> anyhow::Result<Events> {
        let mut events = Events::default();
        read_events(text.as_bytes(), "events.json", window, &mut events)?;
        Ok(events)
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_the_input_and_the_line() {
        let text = format!("{DNS}\n\n{{\"kind\": \"flow\"\n");
        let err = format!("{:#}", read(&text, Window::default()).unwrap_err());
        assert!(err.starts_with("events.json:3: "), "{err}");
        let text = format!("{DNS}\n{{\"kind\":\"flow\",\"verdict\":1}}\n");
        let err = format!("{:#}", read(&text, Window::default()).unwrap_err());
        assert!(err.starts_with("events.json:2: "), "{err}");
        assert!(err.contains("verdict"), "{err}");
    }

    #[test]
    fn hubble_json_is_refused_with_what_to_record_instead() {
        let text =
            r#"{"flow":{"time":"2026-12-01T10:00:00Z","verdict":"FORWARDED"},"node_name":"n"}"#;
        let err = format!("{:#}", read(text, Window::default()).unwrap_err());
        assert!(err.starts_with("events.json:1: "), "{err}");
        assert!(err.contains("Hubble's JSON"), "{err}");
    }

    #[test]
    fn lost_notes_are_counted_and_the_window_filters_by_time() {
        let text = format!("{DNS}\n{{\"kind\":\"lost\",\"lost\":7}}\n{FLOW}\n");
        let all = read(&text, Window::default()).unwrap();
        assert_eq!((all.lines.len(), all.lost), (2, 7));
        let late = read(
            &text,
            Window {
                since: Some("2026-12-01T10:00:01Z".parse().unwrap()),
                until: None,
            },
        )
        .unwrap();
        assert_eq!((late.lines.len(), late.outside), (1, 1));
        assert_eq!(late.lines[0].kind, "flow");
    }

    #[test]
    fn what_passed_counts_what_was_denied_does_not() {
        let flow: FlowLine = serde_json::from_str(FLOW).unwrap();
        let Some(Observation::Flow {
            subject, peer, l4, ..
        }) = observation(&flow)
        else {
            panic!("an audited flow counts")
        };
        assert_eq!(subject.pod.as_deref(), Some("app"));
        assert_eq!(peer.ip, Some("203.0.113.10".parse().unwrap()));
        assert_eq!(l4, L4::Tcp(80));
        for (verdict, reason) in [("DENIED", "default-deny"), ("ALLOWED", "host-to-local")] {
            let mut f = flow.clone();
            f.verdict = verdict.into();
            f.reason = reason.into();
            assert_eq!(observation(&f), None, "{verdict} {reason}");
        }
        let dns: FlowLine = serde_json::from_str(DNS).unwrap();
        let Some(Observation::Dns {
            name,
            answers,
            resolver,
            ..
        }) = observation(&dns)
        else {
            panic!("an answered query counts")
        };
        assert_eq!(name, "api.test");
        assert_eq!(answers, ["203.0.113.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(resolver.ip, Some("203.0.113.53".parse().unwrap()));
        let mut refused = dns.clone();
        refused.verdict = "REFUSED".into();
        assert_eq!(observation(&refused), None);
    }

    #[test]
    fn an_audited_query_names_its_answer_though_nothing_learned_it() {
        let audited = DNS.replace("\"ALLOWED\"", "\"AUDIT\"").replace(
            "\"answers\":[\"203.0.113.10\"]",
            "\"answers\":[],\"unlearned\":[\"203.0.113.10\"]",
        );
        let line: FlowLine = serde_json::from_str(&audited).unwrap();
        assert_eq!(line.verdict, "AUDIT");
        let Some(Observation::Dns { answers, .. }) = observation(&line) else {
            panic!("an audited query counts")
        };
        assert_eq!(answers, ["203.0.113.10".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn an_ingress_flow_belongs_to_its_destination() {
        let mut flow: FlowLine = serde_json::from_str(FLOW).unwrap();
        flow.direction = Some("ingress".into());
        flow.pod = Some("prod/db".into());
        flow.source = None;
        flow.destination = None;
        let Some(Observation::Flow { subject, peer, .. }) = observation(&flow) else {
            panic!()
        };
        assert_eq!(
            (subject.namespace.as_deref(), subject.pod.as_deref()),
            (Some("prod"), Some("db"))
        );
        assert_eq!(peer.ip, Some("10.0.1.10".parse().unwrap()));
    }
}
