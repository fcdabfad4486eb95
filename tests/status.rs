//! `tollgate status` against an agent running in-process (local mode, fake
//! datapath, a scripted upstream): the CLI binary reads the agent's status
//! socket and shows what an operator asks first — is the agent up, which
//! policies are in force and from where, the node's pods, names learned,
//! map fill, the last reload and its errors, recent drops — and says so
//! plainly when the agent is down.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use egress_bpf::{FakeDatapath, FlowEvent, FlowReason, FlowVerdict};
use hickory_proto::op::ResponseCode;
use tollgate::agent::{self, Binds};
use tollgate::status::Report;

mod support;

use support::in_process::{ask, config, OneName, ENDPOINTS, POLICY};

/// Runs `tollgate status` and returns (exit code, stdout).
async fn status(dir: &Path, json: bool) -> (i32, String) {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.arg("status")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--pin-dir")
            .arg(dir.join("pins"))
            .env_remove("TOLLGATE_STATE_DIR")
            .env_remove("TOLLGATE_PIN_DIR");
        if json {
            cmd.args(["--output", "json"]);
        }
        let out = cmd.output().expect("running tollgate status");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    })
    .await
    .unwrap()
}

/// Polls `tollgate status` until `cond` holds on its screen.
async fn status_until(dir: &Path, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (code, out) = status(dir, false).await;
        if code == 0 && cond(&out) {
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not within 10 s: {what}; last screen (exit {code}):\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_node_and_says_when_the_agent_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/payments.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("endpoints.yaml"), ENDPOINTS).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let config = config(dir);
    let dp = FakeDatapath {
        fqdn_capacity: Some(1000),
        ..FakeDatapath::default()
    };
    dp.monitor.set_interface("veth-payments", 7);
    let status_listener = tokio::net::UnixListener::bind(agent::status_socket(&config)).unwrap();
    let agent = agent::build(
        config,
        dp,
        OneName,
        Binds {
            status: Some(status_listener),
            ..Binds::default()
        },
    )
    .await
    .expect("the agent builds on the fake datapath");
    let dns = agent.dns().clone();
    let monitor = agent.node().inspect(|dp, _| dp.monitor.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));

    // A connection dropped: the datapath's events are queued, so this one
    // is seen whenever the event pump starts; once it is on screen the
    // pump also hears the DNS proxy (whose events are not queued).
    monitor.push_event(FlowEvent {
        time_ns: 1,
        ifindex: 7,
        direction: policy::Direction::Egress,
        protocol: 6,
        src: "10.0.1.10".parse().unwrap(),
        dst: "198.51.100.99".parse().unwrap(),
        sport: 41000,
        dport: 80,
        identity: 2,
        rule_id: 0,
        verdict: FlowVerdict::Denied,
        reason: FlowReason::DefaultDeny,
    });
    status_until(dir, "the dropped connection is listed", |s| {
        s.contains("198.51.100.99:80")
    })
    .await;
    // A name learned, a name refused.
    assert_eq!(ask(&dns, "api.test.").await, ResponseCode::NoError);
    assert_eq!(ask(&dns, "evil.example.").await, ResponseCode::Refused);
    let screen = status_until(dir, "the refused query is listed too", |s| {
        s.contains("evil.example")
    })
    .await;
    for expected in [
        "Agent:      up",
        "Source:     files: policies",
        "Reload:     OK",
        "Policies in force: 1",
        "prod/payments-egress",
        "payments.yaml",
        "Endpoints on this node: 1",
        "veth-payments",
        "enforce",
        "egress",
        "Names learned: 1 name(s), 1 address(es)",
        "/ 1000",
        "map write errors: 0",
        "REFUSED  prod/payments asked 10.96.0.10:53 for evil.example",
        "DENIED   prod/payments egress to 198.51.100.99:80",
    ] {
        assert!(
            screen.contains(expected),
            "the status screen lacks {expected:?}:\n{screen}"
        );
    }
    let pod_line = screen
        .lines()
        .find(|l| l.contains("veth-payments"))
        .unwrap();
    assert!(
        pod_line.trim_end().ends_with(" 1"),
        "one learned address for the pod: {pod_line}"
    );
    let fqdn = screen.lines().find(|l| l.contains("tg_fqdn")).unwrap();
    assert!(fqdn.contains("1 / 1000"), "tg_fqdn fill: {fqdn}");

    // JSON for scripts: the same report.
    let (code, json) = status(dir, true).await;
    assert_eq!(code, 0);
    let report: Report = serde_json::from_str(&json).expect("status --output json is a Report");
    assert_eq!(report.policies.len(), 1);
    assert_eq!(report.endpoints[0].pod, "prod/payments");
    assert_eq!(report.names_learned, 1);

    // A broken edit: reported with its error, the last good set in force.
    std::fs::write(
        dir.join("policies/broken.yaml"),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: broken, namespace: prod}\nspec: {endpointSelector: {matchLabels: {app: x}}, egress: [{toPorts: [{ports: [{port: \"99999\"}]}]}]}\n",
    )
    .unwrap();
    let screen = status_until(dir, "the rejected reload is shown", |s| {
        s.contains("Reload:     FAILED")
    })
    .await;
    assert!(
        screen.contains("broken.yaml")
            && screen.contains("the last good policy set stays in force"),
        "the error names the file and says what stays:\n{screen}"
    );
    assert!(
        screen.contains("Policies in force: 1") && screen.contains("prod/payments-egress"),
        "the last good set stays listed:\n{screen}"
    );
    std::fs::remove_file(dir.join("policies/broken.yaml")).unwrap();
    status_until(dir, "the fixed reload is shown", |s| {
        s.contains("Reload:     OK")
    })
    .await;

    // The agent stops: status says so, and exits 1.
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let (code, screen) = status(dir, false).await;
    assert_eq!(code, 1, "status exits 1 when the agent does not answer");
    assert!(screen.contains("Agent:      DOWN"), "{screen}");
    assert!(
        screen.contains("nothing pinned"),
        "no pinned datapath here: {screen}"
    );
}

/// Prints one screen for a look (`cargo test --test status -- --nocapture show`).
#[test]
fn show_a_screen() {
    let report: Report = serde_json::from_value(serde_json::json!({
        "version": "0.1.0", "started_at": 1000, "now": 8200,
        "source": {"kind": "files", "policies": "/etc/tollgate/policies", "endpoints": "/etc/tollgate/endpoints.yaml"},
        "last_reload": {"at": 8100, "ok": false, "errors": ["/etc/tollgate/policies/x.yaml: policy prod/x: specs[0].egress[0].toPorts[0].ports[0].port: 99999 is not a port (1-65535)"]},
        "policies": [{"kind": "CiliumNetworkPolicy", "namespace": "prod", "name": "payments-egress", "file": "/etc/tollgate/policies/payments.yaml"}],
        "endpoints": [{"pod": "prod/payments", "interface": "veth-payments", "ifindex": 7, "identity": 13709965, "audit": false, "ingress_enforced": false, "egress_enforced": true, "fqdn_addresses": 2}],
        "names_learned": 1, "addresses_learned": 2,
        "maps": [{"map": "tg_fqdn", "entries": 2, "capacity": 65536}, {"map": "tg_endpoints", "entries": 1, "capacity": null}],
        "write_errors": 0, "counters": {"drop_default_deny": 3},
        "recent_drops": []
    }))
    .unwrap();
    let text = report.text();
    println!("{text}");
    assert!(text.contains("started 2h00m ago"), "{text}");
    assert!(text.contains("FAILED 100s ago (1 error(s))"), "{text}");
    assert!(text.contains("3 packet(s) dropped"), "{text}");
}
