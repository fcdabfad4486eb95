//! End-to-end (root): the audit -> observe -> suggest -> enforce workflow
//! (issue 16) on the real datapath. Pods run in audit mode under a
//! visibility policy (DNS through the proxy: api.test allowed and learned,
//! every other name answered as AUDIT and learned by nothing; HTTP to the
//! web pod through the proxy; default deny in both directions reported as
//! AUDIT);
//! `tollgate observe --output json` records their traffic;
//! `tollgate policy suggest` turns the recording into policies, `policy
//! check` accepts them; they replace the visibility policy and the pods
//! leave audit mode (the agent reloads its files). The same traffic still
//! passes; another name, port, path or pod is denied.

use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::cluster::cnp;
use testkit::{eventually, privileged, Cluster, Helper};

/// DNS through the proxy (api.test allowed; other names audited: answered,
/// not learned, so only the DNS events name the flows that follow), app ->
/// web HTTP through the proxy, and both directions in default deny, so
/// every flow is reported.
const VISIBILITY: &str = "endpointSelector: {}
ingress:
- fromEntities: []
egress:
- toCIDR: [203.0.113.53/32]
  toPorts:
  - ports: [{port: '53', protocol: UDP}, {port: '53', protocol: TCP}]
    rules: {dns: [{matchName: api.test}]}
- toEndpoints: [{matchLabels: {app: web}}]
  toPorts:
  - ports: [{port: '8080', protocol: TCP}]
    rules: {http: [{}]}";

fn tollgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .expect("run tollgate")
}

/// The HTTP status `curl` got from `pod` (000: no connection).
fn http_code(c: &Cluster, pod: &testkit::Pod, url: &str) -> String {
    let out = c.sb.try_sh(
        &pod.netns,
        &format!("curl -s -m 2 -o /dev/null -w '%{{http_code}}' {url}"),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn e2e_audit_observe_suggest_enforce_keeps_the_traffic_seen_and_denies_the_rest() {
    if !privileged() {
        return;
    }
    let mut c = Cluster::new(
        env!("CARGO_BIN_EXE_tollgate"),
        "e2esug",
        &["app", "web", "other"],
    );
    let (app, web, other) = (c.pod("app"), c.pod("web"), c.pod("other"));
    let web_url = |path: &str| format!("http://{}:8080{path}", web.v4);
    c.sb.http_server(&web.netns, 8080, &web.v4.to_string());
    // Audit: every pod, in the endpoints file.
    let endpoints = c.work.join("endpoints.yaml");
    let enforcing = std::fs::read_to_string(&endpoints).unwrap();
    let auditing = enforcing.replace("}\n  - {name", ", audit: true}\n  - {name");
    let auditing = auditing.replacen("}\nnodes:", ", audit: true}\nnodes:", 1);
    assert_eq!(auditing.matches("audit: true").count(), 3, "{auditing}");
    std::fs::write(&endpoints, &auditing).unwrap();
    c.policy("observe.yaml", &cnp("observe-all", VISIBILITY));
    c.start();

    // Record while the workloads do their thing.
    let recording = c.work.join("observed.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["observe", "--output", "json", "--state-dir"])
        .arg(c.work.join("state"))
        .stdout(std::fs::File::create(&recording).unwrap())
        .stderr(Stdio::null());
    let mut observer = Helper::spawn("tollgate observe", cmd);
    let recorded = || std::fs::read_to_string(&recording).unwrap_or_default();
    // Subscribed once a lookup shows.
    eventually(Duration::from_secs(15), "observe records a lookup", || {
        assert_eq!(c.dig(&app, "api.test").0, "NOERROR");
        recorded().contains("\"api.test\"")
    });
    let traffic = || {
        assert_eq!(c.dig(&app, "api.test").0, "NOERROR");
        assert!(c.curl(&app, "api.test", 80), "audit mode lets it pass");
        // Three siblings: the suggestion allows *.flood.test.
        for n in ["x", "y", "z"] {
            assert_eq!(c.dig(&app, &format!("{n}.flood.test")).0, "NOERROR");
        }
        let _ =
            c.sb.try_sh(&app.netns, "curl -s -m 1 -o /dev/null http://x.flood.test/");
        assert_eq!(http_code(&c, &app, &web_url("/")), "200");
    };
    // Meanwhile, the same straight from the agent's socket.
    let live = c.work.join("live.yaml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["policy", "suggest", "--from-agent", "--duration", "6"])
        .arg("--state-dir")
        .arg(c.work.join("state"))
        .arg("-o")
        .arg(&live)
        .stderr(Stdio::null());
    let mut follower = Helper::spawn("tollgate policy suggest --from-agent", cmd);
    std::thread::sleep(Duration::from_millis(500));
    traffic();
    eventually(Duration::from_secs(15), "suggest --from-agent ends", || {
        !follower.is_running()
    });
    assert!(follower.stop().success());
    let live = std::fs::read_to_string(&live).unwrap_or_default();
    assert!(
        live.contains("matchName: api.test") && live.contains("'*.flood.test'"),
        "suggest --from-agent:\n{live}"
    );
    eventually(Duration::from_secs(10), "the recording has it all", || {
        let r = recorded();
        r.contains("\"kind\":\"http\"")
            && r.contains("198.51.100.66")
            && r.contains("\"203.0.113.10\"")
            && r.contains("\"port\":8080")
    });
    observer.stop();
    assert!(
        recorded().contains("\"unlearned\":[\"198.51.100.66\"]"),
        "x.flood.test is audited: answered, learned by nothing: {}",
        recorded()
    );

    // Suggest, check, explain.
    let suggested = c.work.join("suggested.yaml");
    let out = tollgate(&[
        "policy",
        "suggest",
        "--events",
        recording.to_str().unwrap(),
        "-o",
        suggested.to_str().unwrap(),
    ]);
    let yaml = std::fs::read_to_string(&suggested).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        recorded()
    );
    let why = format!("suggested:\n{yaml}\nfrom:\n{}", recorded());
    assert!(yaml.contains("matchName: api.test"), "{why}");
    assert!(yaml.contains("matchPattern: '*.flood.test'"), "{why}");
    assert!(
        !yaml.contains("203.0.113.10"),
        "a named destination by address: {why}"
    );
    assert!(
        !yaml.contains("198.51.100.66"),
        "a named destination by address: {why}"
    );
    let check = tollgate(&["policy", "check", suggested.to_str().unwrap()]);
    assert!(
        check.status.success() && check.stderr.is_empty(),
        "policy check: {}\n{why}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Enforce: the suggestion replaces the visibility policy, audit ends.
    std::fs::remove_file(c.work.join("policies/observe.yaml")).unwrap();
    c.policy("suggested.yaml", &yaml);
    std::fs::write(&endpoints, &enforcing).unwrap();
    eventually(Duration::from_secs(10), "the agent enforces", || {
        c.dig(&app, "evil.test").0 == "REFUSED"
    });
    // The same traffic passes ...
    traffic();
    assert_eq!(
        c.dig(&app, "q.flood.test").0,
        "NOERROR",
        "a sibling within the pattern"
    );
    // ... and nothing else does: another name, port, path, pod.
    assert!(!c.curl(&app, "203.0.113.12", 80), "evil.test's address");
    assert!(
        !c.curl(&app, "api.test", 443),
        "api.test on a port it never used"
    );
    assert_eq!(
        http_code(&c, &app, &web_url("/admin")),
        "403",
        "a path never requested"
    );
    assert_eq!(
        http_code(&c, &other, &web_url("/")),
        "000",
        "a pod that never talked to web"
    );
    assert_eq!(
        http_code(&c, &web, &format!("http://{}:8080/", app.v4)),
        "000",
        "web never opened connections"
    );
    assert!(c.agent_running(), "{}", c.log());
}
