//! Flow events in Hubble's JSON: one `observer.GetFlowsResponse` per line,
//! as `hubble observe -o json` prints them, so existing Hubble tooling and
//! jq recipes read `tollgate observe --output hubble-json`.
//!
//! The schema is cilium's `api/v1/flow/flow.proto` and
//! `api/v1/observer/observer.proto`, vendored under `proto/`; the JSON is
//! the protobuf JSON mapping with the proto field names (`pod_name`,
//! `drop_reason_desc`, `IP`, `Type`), enums by name, and zero values left
//! out, as Hubble's own printer does. The tests decode every kind of event
//! with those .proto files.
//!
//! How Tollgate's events map:
//! - a datapath decision (`flow`) is an L3/L4 flow: a policy verdict
//!   (event type 5), or a drop (event type 1, sub-type the drop reason);
//! - a DNS query and an HTTP request are each one L7 record (event type
//!   129) in the request direction (`source` = the client,
//!   `is_reply: false`) that carries its outcome too: the answer's
//!   addresses and response code, the HTTP status;
//! - a note that the agent dropped events for a slow reader is a
//!   `lost_events` response.
//!
//! Never: I/O. Input is an event line and the node's name, output a value.

use serde_json::{json, Map, Value};

use crate::events::{address_ip, FlowLine, Peer};

/// Cilium monitor message types (`pkg/monitor/api`): `event_type.type`.
const EVENT_DROP: i32 = 1;
const EVENT_POLICY_VERDICT: i32 = 5;
const EVENT_ACCESS_LOG: i32 = 129;

/// Cilium's `PolicyMatchL3L4`: an FQDN grant is for an address and ports.
const POLICY_MATCH_L3_L4: u32 = 2;

/// Hubble's `DropReason` for a Tollgate reason, with its number.
fn drop_reason(reason: &str) -> (&'static str, i32) {
    match reason {
        "deny-rule" => ("POLICY_DENY", 181),
        "spoofed-source" => ("INVALID_SOURCE_IP", 132),
        "icmp-error-unrelated" => ("INVALID_PACKET_DROPPED", 134),
        "l4-unreachable" => ("CT_TRUNCATED_OR_INVALID_HEADER", 135),
        "unsupported" => ("UNKNOWN_L4_PROTOCOL", 142),
        "too many queries in flight for this pod" => ("DROP_RATE_LIMITED", 198),
        // default-deny, no-endpoint, a refused name or request...
        _ => ("POLICY_DENIED", 133),
    }
}

fn verdict(v: &str) -> &'static str {
    match v {
        "ALLOWED" => "FORWARDED",
        "DENIED" | "REFUSED" | "DROPPED" => "DROPPED",
        "AUDIT" => "AUDIT",
        "REDIRECTED" => "REDIRECTED",
        "SERVFAIL" | "ERROR" => "ERROR",
        // VERDICT_UNKNOWN, the zero value: not printed.
        _ => "",
    }
}

/// One event line as a `GetFlowsResponse`; `None` for a line that is not
/// an event (nor a lost-events note).
pub fn response(line: &Value, node_name: &str) -> Option<Value> {
    if line.get("kind").and_then(Value::as_str) == Some("lost") {
        let lost = line.get("lost").and_then(Value::as_u64).unwrap_or(0);
        return Some(json!({
            "lost_events": {
                "source": "OBSERVER_EVENTS_QUEUE",
                // uint64: a string in the protobuf JSON mapping.
                "num_events_lost": lost.to_string(),
            },
            "node_name": node_name,
        }));
    }
    let event: FlowLine = serde_json::from_value(line.clone()).ok()?;
    Some(flow_response(&event, node_name))
}

/// A described event as a `GetFlowsResponse` carrying one `flow.Flow`.
pub fn flow_response(e: &FlowLine, node_name: &str) -> Value {
    let mut resp = Map::new();
    let flow = flow(e, node_name);
    if let Some(t) = flow.get("time") {
        resp.insert("time".into(), t.clone());
    }
    resp.insert("flow".into(), flow);
    resp.insert("node_name".into(), node_name.into());
    Value::Object(resp)
}

fn flow(e: &FlowLine, node_name: &str) -> Value {
    let mut f = Map::new();
    let mut put = |k: &str, v: Value| {
        if !is_zero(&v) {
            f.insert(k.into(), v);
        }
    };
    let time = e
        .time
        .as_deref()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(jiff::Timestamp::now);
    put("time", proto_time(time).into());
    put(
        "emitter",
        json!({"name": "Tollgate", "version": env!("CARGO_PKG_VERSION")}),
    );
    let verdict = verdict(&e.verdict);
    put("verdict", verdict.into());
    let (reason_name, reason_code) = drop_reason(e.reason.split(" (").next().unwrap_or(""));
    let dropped = verdict == "DROPPED";
    if dropped {
        put("drop_reason", reason_code.into());
        put("drop_reason_desc", reason_name.into());
    }
    put("IP", ip(e));
    put("l4", l4(e));
    put("source", endpoint(e.source.as_deref()));
    put("destination", endpoint(e.destination.as_deref()));
    if let Some((namespace, name)) = e
        .service
        .as_ref()
        .and_then(|s| s.name.as_deref())
        .and_then(|n| n.split_once('/'))
    {
        put(
            "destination_service",
            json!({"name": name, "namespace": namespace}),
        );
    }
    let l7 = match &*e.kind {
        "dns" => Some(dns(e)),
        "http" => e.http.as_ref().map(|_| http(e)),
        _ => None,
    };
    put("Type", if l7.is_some() { "L7" } else { "L3_L4" }.into());
    put("node_name", node_name.into());
    let egress = e.direction.as_deref() != Some("ingress");
    if !e.names.is_empty() && e.kind == "flow" {
        // The names the remote address was learned for.
        let names = json!(e.names);
        put(
            if egress {
                "destination_names"
            } else {
                "source_names"
            },
            names,
        );
    }
    if let Some(l7) = l7 {
        put("l7", l7);
    }
    let event_type = if e.kind != "flow" && (e.http.is_some() || e.kind == "dns") {
        json!({ "type": EVENT_ACCESS_LOG })
    } else if dropped {
        json!({ "type": EVENT_DROP, "sub_type": reason_code })
    } else {
        json!({ "type": EVENT_POLICY_VERDICT })
    };
    put("event_type", event_type);
    match e.direction.as_deref() {
        Some("ingress") => put("traffic_direction", "INGRESS".into()),
        Some("egress") => put("traffic_direction", "EGRESS".into()),
        _ => {}
    }
    if e.kind == "flow" && e.reason == "fqdn" {
        put("policy_match_type", POLICY_MATCH_L3_L4.into());
    }
    // Every event is the first packet of a connection or a request.
    f.insert("is_reply".into(), false.into());
    let mut put = |k: &str, v: Value| {
        if !is_zero(&v) {
            f.insert(k.into(), v);
        }
    };
    put("Summary", e.text().into());
    if let Some(policy) = e.rule.as_deref().and_then(policy_ref) {
        let key = match (egress, dropped) {
            (true, false) => "egress_allowed_by",
            (false, false) => "ingress_allowed_by",
            (true, true) => "egress_denied_by",
            (false, true) => "ingress_denied_by",
        };
        // A deciding rule is reported only where it decided: an allow for a
        // flow that passed, a deny rule for one that did not.
        if !dropped || e.reason == "deny-rule" {
            put(key, json!([policy]));
        }
    }
    Value::Object(f)
}

fn ip(e: &FlowLine) -> Value {
    let (Some(src), Some(dst)) = (
        e.src.as_deref().and_then(address_ip),
        e.dst.as_deref().and_then(address_ip),
    ) else {
        return Value::Null;
    };
    let version = if dst.is_ipv4() { "IPv4" } else { "IPv6" };
    json!({"source": src.to_string(), "destination": dst.to_string(), "ipVersion": version})
}

fn l4(e: &FlowLine) -> Value {
    let ports = json!({
        "source_port": e.sport.unwrap_or(0),
        "destination_port": e.port.unwrap_or(0),
    });
    let ports = strip_zero(ports);
    match e.protocol.as_deref() {
        Some("TCP") => json!({ "TCP": ports }),
        Some("UDP") => json!({ "UDP": ports }),
        Some("SCTP") => json!({ "SCTP": ports }),
        Some("ICMP") => json!({ "ICMPv4": {} }),
        Some("ICMPv6") => json!({ "ICMPv6": {} }),
        _ => Value::Null,
    }
}

fn endpoint(p: Option<&Peer>) -> Value {
    let Some(p) = p else { return Value::Null };
    strip_zero(json!({
        "identity": p.identity,
        "namespace": p.namespace.clone().unwrap_or_default(),
        "labels": p.labels,
        "pod_name": p.pod.clone().unwrap_or_default(),
    }))
}

fn dns(e: &FlowLine) -> Value {
    let query = e
        .names
        .first()
        .map(|n| format!("{}.", n.trim_end_matches('.')))
        .unwrap_or_default();
    let (qtypes, rcode) = match &e.dns {
        Some(d) => (vec![d.qtype.clone()], d.rcode),
        None => (Vec::new(), 0),
    };
    let dns = strip_zero(json!({
        "query": query,
        "ips": e.answers.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "rcode": rcode,
        "qtypes": qtypes,
        "observation_source": "proxy",
    }));
    json!({"type": "REQUEST", "dns": dns})
}

fn http(e: &FlowLine) -> Value {
    let h = e.http.as_ref().expect("checked by the caller");
    let host = h.host.clone().or_else(|| e.dst.clone()).unwrap_or_default();
    let http = strip_zero(json!({
        "code": h.status,
        "method": h.method,
        "url": format!("http://{host}{}", h.path),
        "protocol": "HTTP/1.1",
    }));
    json!({"type": "REQUEST", "http": http})
}

/// `prod/name specs[0].egress[1]` -> a `flow.Policy`.
fn policy_ref(rule: &str) -> Option<Value> {
    let (kind, name) = if let Some((name, _)) = rule.split_once(" (NetworkPolicy)") {
        ("NetworkPolicy", name)
    } else if let Some((name, _)) = rule.split_once(" (clusterwide)") {
        ("CiliumClusterwideNetworkPolicy", name)
    } else {
        ("CiliumNetworkPolicy", rule.split(' ').next()?)
    };
    let (namespace, name) = match name.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => ("", name),
    };
    Some(strip_zero(
        json!({"name": name, "namespace": namespace, "kind": kind}),
    ))
}

/// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as the protobuf
/// JSON mapping prints a `Timestamp`.
fn proto_time(t: jiff::Timestamp) -> String {
    let ns = t.subsec_nanosecond();
    let digits = if ns == 0 {
        0
    } else if ns % 1_000_000 == 0 {
        3
    } else if ns % 1_000 == 0 {
        6
    } else {
        9
    };
    format!("{t:.digits$}")
}

/// Zero values are not printed in the protobuf JSON mapping.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(_) => false,
    }
}

fn strip_zero(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !is_zero(v)).collect()),
        v => v,
    }
}
