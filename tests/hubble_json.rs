//! `tollgate observe --output hubble-json` against Hubble's own schema: the
//! .proto files vendored under `proto/` (cilium's `api/v1`) are compiled
//! here with protox (no protoc), and every line is decoded as an
//! `observer.GetFlowsResponse` with the protobuf JSON mapping, unknown
//! fields refused. Decoding and printing again with proto field names must
//! give the same JSON back: a misspelt field, a wrong enum name, a number
//! where the mapping wants a string would each fail.
//!
//! The events come from the same constructors the agent uses (a datapath
//! decision, a DNS query, an HTTP request) described with an inventory, and
//! the CLI test feeds them through a fake agent's events socket.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

use dns_proxy::{DnsEvent, DnsOutcome, Transport};
use egress_bpf::desired::RuleTable;
use egress_bpf::{FlowEvent, FlowReason, FlowVerdict};
use policy::rules::Direction;
use policy::{EndpointKey, Inventory};
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value as PValue,
};
use serde_json::{json, Value};
use tollgate::events::FlowLine;

const ENDPOINTS: &str = "
namespaces:
  - {name: prod, labels: {team: shop}}
endpoints:
  - {name: payments, namespace: prod, labels: {app: payments}, ips: [10.0.1.30]}
  - {name: db, namespace: prod, labels: {app: db}, ips: [10.0.1.20]}
  - {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}, ips: [10.0.0.53]}
services:
  - {name: kube-dns, namespace: kube-system, ips: [10.96.0.10], ports: [{port: 53, protocol: UDP}], selector: {k8s-app: kube-dns}}
";

const TIME: &str = "2026-12-01T18:00:00.123456789Z";

fn pool() -> DescriptorPool {
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    protox::Compiler::new([proto])
        .expect("the proto include dir")
        .open_files(["observer/observer.proto"])
        .expect("Hubble's vendored .proto files compile")
        .descriptor_pool()
}

fn get_flows_response(pool: &DescriptorPool) -> MessageDescriptor {
    pool.get_message_by_name("observer.GetFlowsResponse")
        .expect("observer.GetFlowsResponse is in observer.proto")
}

/// Decodes `line` as a GetFlowsResponse (unknown fields refused) and checks
/// that printing it again gives the same JSON.
fn decode(desc: &MessageDescriptor, line: &Value) -> DynamicMessage {
    let msg = DynamicMessage::deserialize_with_options(
        desc.clone(),
        line.clone(),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .unwrap_or_else(|e| panic!("not a valid GetFlowsResponse: {e}\n{line:#}"));
    let again = msg
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new().use_proto_field_name(true),
        )
        .unwrap();
    assert_eq!(
        &again, line,
        "the protobuf JSON mapping prints this GetFlowsResponse differently"
    );
    msg
}

/// A field by path (`flow.source.pod_name`) of a decoded message.
fn field(msg: &DynamicMessage, path: &str) -> PValue {
    let mut parts = path.split('.').peekable();
    let mut cur = msg.clone();
    while let Some(p) = parts.next() {
        let v = cur
            .get_field_by_name(p)
            .unwrap_or_else(|| panic!("no field {p} in {path}"))
            .into_owned();
        if parts.peek().is_none() {
            return v;
        }
        cur = v.as_message().expect("a message").clone();
    }
    unreachable!()
}

fn enum_name(desc: &MessageDescriptor, msg: &DynamicMessage, path: &str) -> String {
    let n = field(msg, path).as_enum_number().expect("an enum");
    let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
    let owner = if parent.is_empty() {
        desc.clone()
    } else {
        field(msg, parent).as_message().unwrap().descriptor()
    };
    let kind = owner.get_field_by_name(last).unwrap().kind();
    kind.as_enum()
        .unwrap()
        .get_value(n)
        .map(|v| v.name().to_string())
        .unwrap_or_else(|| n.to_string())
}

fn strings(v: PValue) -> Vec<String> {
    v.as_list()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn inventory() -> Inventory {
    Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap()
}

fn described(line: FlowLine) -> FlowLine {
    line.described(&inventory(), TIME.parse().unwrap())
}

fn payments() -> EndpointKey {
    EndpointKey {
        namespace: "prod".into(),
        name: "payments".into(),
    }
}

fn flow_event(verdict: FlowVerdict, reason: FlowReason, dst: &str, dport: u16) -> FlowEvent {
    FlowEvent {
        time_ns: 1,
        ifindex: 7,
        direction: Direction::Egress,
        protocol: 6,
        src: "10.0.1.30".parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport: 40000,
        dport,
        identity: 2,
        rule_id: 0,
        verdict,
        reason,
    }
}

/// An FQDN-allowed connection: FORWARDED, the names, the pod with labels.
#[test]
fn an_allowed_fqdn_flow_is_a_forwarded_l3_l4_flow_with_destination_names() {
    let pool = pool();
    let desc = get_flows_response(&pool);
    let line = described(FlowLine::from_flow(
        &flow_event(FlowVerdict::Allowed, FlowReason::Fqdn, "203.0.113.10", 443),
        Some(&payments()),
        &RuleTable::default(),
        vec!["api.test".into()],
    ));
    let v = tollgate::hubble::flow_response(&line, "node-1");
    let msg = decode(&desc, &v);
    assert_eq!(enum_name(&desc, &msg, "flow.verdict"), "FORWARDED");
    assert_eq!(enum_name(&desc, &msg, "flow.Type"), "L3_L4");
    assert_eq!(enum_name(&desc, &msg, "flow.traffic_direction"), "EGRESS");
    assert_eq!(strings(field(&msg, "flow.destination_names")), ["api.test"]);
    assert_eq!(
        field(&msg, "flow.source.pod_name").as_str(),
        Some("payments")
    );
    assert_eq!(field(&msg, "flow.source.namespace").as_str(), Some("prod"));
    let labels = strings(field(&msg, "flow.source.labels"));
    assert!(
        labels.contains(&"k8s:app=payments".to_string())
            && labels.contains(&"k8s:io.kubernetes.pod.namespace=prod".to_string()),
        "the pod's identity labels, Cilium-style: {labels:?}"
    );
    let pod_identity = inventory().identity_of("10.0.1.30".parse().unwrap()).0;
    assert_eq!(
        field(&msg, "flow.source.identity").as_u32(),
        Some(pod_identity)
    );
    assert_eq!(field(&msg, "flow.destination.identity").as_u32(), Some(2));
    assert_eq!(
        strings(field(&msg, "flow.destination.labels")),
        ["reserved:world"]
    );
    assert_eq!(
        field(&msg, "flow.IP.destination").as_str(),
        Some("203.0.113.10")
    );
    assert_eq!(
        field(&msg, "flow.l4.TCP.destination_port").as_u32(),
        Some(443)
    );
    assert_eq!(field(&msg, "flow.l4.TCP.source_port").as_u32(), Some(40000));
    assert_eq!(field(&msg, "flow.node_name").as_str(), Some("node-1"));
    assert_eq!(field(&msg, "node_name").as_str(), Some("node-1"));
    assert_eq!(field(&msg, "flow.policy_match_type").as_u32(), Some(2));
    assert_eq!(v["flow"]["time"], TIME);
    assert_eq!(v["time"], TIME);
}

/// Drops carry Hubble's drop reason; a deny rule names its policy.
#[test]
fn drops_carry_the_drop_reason_and_deny_rules_their_policy() {
    let pool = pool();
    let desc = get_flows_response(&pool);
    for (reason, expected) in [
        (FlowReason::DefaultDeny, "POLICY_DENIED"),
        (FlowReason::DenyRule, "POLICY_DENY"),
        (FlowReason::Spoofed, "INVALID_SOURCE_IP"),
    ] {
        let mut line = described(FlowLine::from_flow(
            &flow_event(FlowVerdict::Denied, reason, "10.0.1.20", 5432),
            Some(&payments()),
            &RuleTable::default(),
            vec![],
        ));
        if reason == FlowReason::DenyRule {
            line.rule = Some("prod/no-db specs[0].egressDeny[0]".into());
        }
        let v = tollgate::hubble::flow_response(&line, "node-1");
        let msg = decode(&desc, &v);
        assert_eq!(enum_name(&desc, &msg, "flow.verdict"), "DROPPED");
        assert_eq!(enum_name(&desc, &msg, "flow.drop_reason_desc"), expected);
        assert_eq!(
            field(&msg, "flow.event_type.type").as_i32(),
            Some(1),
            "a drop is Cilium's drop event"
        );
        assert_eq!(
            field(&msg, "flow.destination.pod_name").as_str(),
            Some("db")
        );
        if reason == FlowReason::DenyRule {
            assert_eq!(
                v["flow"]["egress_denied_by"],
                json!([{"name": "no-db", "namespace": "prod", "kind": "CiliumNetworkPolicy"}])
            );
        }
    }
}

fn dns_event(qname: &str, outcome: DnsOutcome, rcode: u16, learned: &[&str]) -> DnsEvent {
    DnsEvent {
        endpoint: Some(payments()),
        source: "10.0.1.30:53000".parse::<SocketAddr>().unwrap(),
        resolver: "10.0.0.53:53".parse().unwrap(),
        qname: format!("{qname}."),
        qtype: "A",
        outcome,
        rcode: "",
        rcode_value: rcode,
        transport: Transport::Udp,
        learned: learned.iter().map(|a| a.parse().unwrap()).collect(),
        unlearned: Vec::new(),
        rule: None,
    }
}

/// A DNS query is an L7 record with the query, the answer and the rcode.
#[test]
fn dns_queries_are_l7_dns_records() {
    let pool = pool();
    let desc = get_flows_response(&pool);
    let ok = described(FlowLine::from_dns(&dns_event(
        "api.test",
        DnsOutcome::Allowed,
        0,
        &["203.0.113.10"],
    )));
    let msg = decode(&desc, &tollgate::hubble::flow_response(&ok, "n"));
    assert_eq!(enum_name(&desc, &msg, "flow.Type"), "L7");
    assert_eq!(enum_name(&desc, &msg, "flow.verdict"), "FORWARDED");
    assert_eq!(field(&msg, "flow.l7.dns.query").as_str(), Some("api.test."));
    assert_eq!(strings(field(&msg, "flow.l7.dns.ips")), ["203.0.113.10"]);
    assert_eq!(strings(field(&msg, "flow.l7.dns.qtypes")), ["A"]);
    assert_eq!(
        field(&msg, "flow.l4.UDP.destination_port").as_u32(),
        Some(53)
    );
    assert_eq!(
        field(&msg, "flow.destination.pod_name").as_str(),
        Some("coredns")
    );
    assert_eq!(field(&msg, "flow.event_type.type").as_i32(), Some(129));
    assert_eq!(
        field(&msg, "flow.destination_service.name").as_str(),
        Some(""),
        "sent to the pod itself: no Service"
    );

    // Sent to the kube-dns ClusterIP and translated to the pod: the
    // destination is the pod, the Service is named.
    let mut via = FlowLine::from_dns(&dns_event(
        "api.test",
        DnsOutcome::Allowed,
        0,
        &["203.0.113.10"],
    ));
    via.service = Some(tollgate::events::ServiceLine {
        address: "10.96.0.10:53".into(),
        name: None,
    });
    let via = described(via);
    assert!(
        via.text().contains(
            "asked 10.0.0.53:53 (Service kube-system/kube-dns 10.96.0.10:53) for api.test"
        ),
        "{}",
        via.text()
    );
    let msg = decode(&desc, &tollgate::hubble::flow_response(&via, "n"));
    assert_eq!(
        field(&msg, "flow.destination_service.name").as_str(),
        Some("kube-dns")
    );
    assert_eq!(
        field(&msg, "flow.destination_service.namespace").as_str(),
        Some("kube-system")
    );
    assert_eq!(
        field(&msg, "flow.destination.pod_name").as_str(),
        Some("coredns")
    );

    let refused = described(FlowLine::from_dns(&dns_event(
        "evil.test",
        DnsOutcome::RefusedName,
        5,
        &[],
    )));
    let msg = decode(&desc, &tollgate::hubble::flow_response(&refused, "n"));
    assert_eq!(enum_name(&desc, &msg, "flow.verdict"), "DROPPED");
    assert_eq!(field(&msg, "flow.l7.dns.rcode").as_u32(), Some(5));
    assert_eq!(
        field(&msg, "flow.l7.dns.query").as_str(),
        Some("evil.test.")
    );

    let audit = described(FlowLine::from_dns(&dns_event(
        "evil.test",
        DnsOutcome::Audit { name: true },
        0,
        &[],
    )));
    let msg = decode(&desc, &tollgate::hubble::flow_response(&audit, "n"));
    assert_eq!(enum_name(&desc, &msg, "flow.verdict"), "AUDIT");
}

/// An HTTP request is an L7 record with method, URL and status; a 403
/// is DROPPED.
#[test]
fn http_requests_are_l7_http_records() {
    let pool = pool();
    let desc = get_flows_response(&pool);
    let event = http_proxy::HttpEvent {
        parties: std::sync::Arc::new(http_proxy::Parties {
            client: "10.0.1.30:41000".parse().unwrap(),
            server: "10.0.1.20:80".parse().unwrap(),
            source: None,
            destination: None,
            pod: Some("prod/db".into()),
            direction: "ingress",
        }),
        method: Some(http_proxy::Method::DELETE),
        path: "/".into(),
        host: Some("db".into()),
        verdict: http_proxy::HttpVerdict::Denied,
        status: 403,
        rule: Some("prod/frontend-to-db specs[1].ingress[0]".into()),
        header_edits: Vec::new(),
    };
    let line = described(FlowLine::from_http(event));
    let v = tollgate::hubble::flow_response(&line, "n");
    let msg = decode(&desc, &v);
    assert_eq!(enum_name(&desc, &msg, "flow.verdict"), "DROPPED");
    assert_eq!(enum_name(&desc, &msg, "flow.traffic_direction"), "INGRESS");
    assert_eq!(field(&msg, "flow.l7.http.code").as_u32(), Some(403));
    assert_eq!(field(&msg, "flow.l7.http.method").as_str(), Some("DELETE"));
    assert_eq!(field(&msg, "flow.l7.http.url").as_str(), Some("http://db/"));
    assert_eq!(
        field(&msg, "flow.destination.pod_name").as_str(),
        Some("db")
    );
    assert_eq!(
        field(&msg, "flow.source.pod_name").as_str(),
        Some("payments")
    );
}

/// The CLI: a fake agent's events socket, `observe --output hubble-json`,
/// every printed line decoded; filters apply; lost events are reported.
#[test]
fn observe_prints_hubble_json_from_the_events_socket() {
    let pool = pool();
    let desc = get_flows_response(&pool);
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("events.sock")).unwrap();
    let lines = [
        described(FlowLine::from_flow(
            &flow_event(FlowVerdict::Allowed, FlowReason::Fqdn, "203.0.113.10", 443),
            Some(&payments()),
            &RuleTable::default(),
            vec!["api.test".into()],
        )),
        described(FlowLine::from_flow(
            &flow_event(
                FlowVerdict::Denied,
                FlowReason::DefaultDeny,
                "203.0.113.12",
                80,
            ),
            Some(&payments()),
            &RuleTable::default(),
            vec![],
        )),
        described(FlowLine::from_dns(&dns_event(
            "evil.test",
            DnsOutcome::RefusedName,
            5,
            &[],
        ))),
    ];
    let feeder = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        for l in &lines {
            writeln!(conn, "{}", serde_json::to_string(l).unwrap()).unwrap();
        }
        writeln!(conn, "{{\"kind\":\"lost\",\"lost\":7}}").unwrap();
        // An old agent's line (no time, peers or DNS details) still prints.
        writeln!(
            conn,
            r#"{{"kind":"flow","pod":"prod/payments","verdict":"DENIED","reason":"default-deny","direction":"egress","protocol":"TCP","src":"10.0.1.30","dst":"10.0.1.20","port":5432,"names":[],"rule":null,"answers":[]}}"#
        )
        .unwrap();
        // Keep the connection open: observe stops on --count.
        std::thread::sleep(std::time::Duration::from_secs(5));
    });
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["observe", "--output", "hubble-json", "--verdict", "DENIED"])
        .args(["--count", "2", "--node-name", "node-7", "--state-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .output()
        .expect("running tollgate observe");
    assert!(out.status.success(), "observe failed: {out:?}");
    let printed: Vec<Value> = BufReader::new(&out.stdout[..])
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).expect("one JSON object per line"))
        .collect();
    assert_eq!(
        printed.len(),
        3,
        "the DENIED flow, the lost-events note and the old-format DENIED flow: {printed:#?}"
    );
    for v in &printed {
        let msg = decode(&desc, v);
        assert_eq!(field(&msg, "node_name").as_str(), Some("node-7"));
    }
    assert_eq!(printed[0]["flow"]["verdict"], "DROPPED");
    assert_eq!(printed[0]["flow"]["IP"]["destination"], "203.0.113.12");
    assert_eq!(printed[1]["lost_events"]["num_events_lost"], "7");
    assert_eq!(printed[2]["flow"]["drop_reason_desc"], "POLICY_DENIED");
    drop(feeder);
}
