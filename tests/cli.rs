//! The command-line contract: exit codes and messages of `policy check`,
//! `fqdn match` and `policy explain`, run as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .expect("run tollgate")
}

fn testdata(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_accepts_the_seed_policies() {
    let out = tollgate(&["policy", "check", &testdata("policies")]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 policies valid"));
}

#[test]
fn check_rejects_an_invalid_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad: PathBuf = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: oops, namespace: prod}\n\
         spec:\n  endpointSelector: {}\n  egress:\n  - toPorts: [{ports: [{port: '99999'}]}]\n",
    )
    .unwrap();
    let out = tollgate(&[
        "policy",
        "check",
        &testdata("policies"),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}: policy oops: spec.egress[0].toPorts[0].ports[0].port: 99999 is outside 0-65535",
            bad.display()
        )),
        "stderr: {err}"
    );
}

#[test]
fn check_warns_about_fqdns_without_dns_but_passes() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.yaml");
    std::fs::write(
        &f,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: w}\n\
         spec:\n  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: api.example.com}]\n",
    )
    .unwrap();
    let out = tollgate(&["policy", "check", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("warning:") && stderr(&out).contains("no IP will ever be learned")
    );
}

#[test]
fn check_reports_a_missing_path() {
    let out = tollgate(&["policy", "check", "/nonexistent/policy.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/policy.yaml: cannot read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn fqdn_match_exit_codes() {
    assert_eq!(
        tollgate(&["fqdn", "match", "*.x.io", "a.x.io"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        tollgate(&["fqdn", "match", "*.x.io", "a.b.x.io"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        tollgate(&["fqdn", "match", "**.x.io", "a.b.x.io"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        tollgate(&["fqdn", "match", "*x.io", "X.IO."]).status.code(),
        Some(0)
    );
    let bad = tollgate(&["fqdn", "match", "a.**.io", "a.b.io"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("`**` is only valid as a whole leading label"),
        "{}",
        stderr(&bad)
    );
    assert_eq!(
        tollgate(&["fqdn", "match", "a$b", "ab"]).status.code(),
        Some(2)
    );
}

#[test]
fn explain_prints_the_deciding_rule() {
    let out = tollgate(&[
        "policy",
        "explain",
        "--policies",
        &testdata("policies"),
        "--endpoints",
        &testdata("endpoints.yaml"),
        "--from",
        "prod/payments",
        "--to",
        "api.stripe.com",
        "--port",
        "443/TCP",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ALLOWED by prod/restrict-egress-to-stripe spec.egress[1]"),
        "{text}"
    );
}

#[test]
fn explain_rejects_unknown_peers_and_bad_ports() {
    let base = [
        "policy",
        "explain",
        "--policies",
        &testdata("policies"),
        "--endpoints",
        &testdata("endpoints.yaml"),
    ];
    let unknown = tollgate(
        &[
            &base[..],
            &["--from", "prod/nobody", "--to", "1.1.1.1", "--port", "443"],
        ]
        .concat(),
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("not an endpoint"),
        "{}",
        stderr(&unknown)
    );
    let port = tollgate(
        &[
            &base[..],
            &[
                "--from",
                "payments",
                "--to",
                "1.1.1.1",
                "--port",
                "99999/TCP",
            ],
        ]
        .concat(),
    );
    assert_eq!(port.status.code(), Some(2));
    assert!(stderr(&port).contains("--port"), "{}", stderr(&port));
    let neither = tollgate(
        &[
            &base[..],
            &["--from", "1.1.1.1", "--to", "8.8.8.8", "--port", "53/UDP"],
        ]
        .concat(),
    );
    assert_eq!(neither.status.code(), Some(2));
}

#[test]
fn explain_reports_a_bad_endpoints_file_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("eps.yaml");
    std::fs::write(&f, "endpoints:\n  - name: a\n    ips: [not-an-ip]\n").unwrap();
    let out = tollgate(&[
        "policy",
        "explain",
        "--policies",
        &testdata("policies"),
        "--endpoints",
        f.to_str().unwrap(),
        "--from",
        "a",
        "--to",
        "1.1.1.1",
        "--port",
        "443",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("endpoints[0].ips[0]"),
        "{}",
        stderr(&out)
    );
}

/// `policy suggest` on a recording (testdata/suggest/observed.json, made by
/// tests/suggest_e2e.rs): valid policies under which `policy explain`
/// allows every flow of the recording, and not its neighbours.
#[test]
fn suggest_turns_a_recording_into_policies_that_allow_every_flow_seen() {
    let dir = tempfile::tempdir().unwrap();
    let recording = testdata("suggest/observed.json");
    let out = tollgate(&["policy", "suggest", "--events", &recording]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    // Deterministic: the same recording, the same bytes.
    let again = tollgate(&["policy", "suggest", "--events", &recording]);
    assert_eq!(again.stdout, out.stdout);
    for expected in [
        "name: suggested-app",
        "name: suggested-web",
        "matchName: api.test",
        "matchPattern: '*.flood.test'",
        "- 203.0.113.53/32",
        "path: /",
    ] {
        assert!(yaml.contains(expected), "{expected:?} missing:\n{yaml}");
    }
    for never in ["203.0.113.10", "198.51.100.66"] {
        assert!(
            !yaml.contains(never),
            "named destination {never} by address:\n{yaml}"
        );
    }
    let file = dir.path().join("suggested.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let check = tollgate(&["policy", "check", file.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "{}\n{yaml}", stderr(&check));
    assert!(check.stderr.is_empty(), "warnings: {}", stderr(&check));

    let endpoints = testdata("suggest/endpoints.yaml");
    let explain = |from: &str, to: &str, port: &str| {
        let out = tollgate(&[
            "policy",
            "explain",
            "--policies",
            file.to_str().unwrap(),
            "--endpoints",
            &endpoints,
            "--from",
            from,
            "--to",
            to,
            "--port",
            port,
        ]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // Every flow, query and request of the recording.
    let text = std::fs::read_to_string(&recording).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // What the pod was told each address is (audited queries taught
    // nothing, but told it all the same): a flow there is to that name.
    let mut told = std::collections::BTreeMap::new();
    for e in events.iter().filter(|e| e["kind"] == "dns") {
        for ip in e["answers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(e["unlearned"].as_array().into_iter().flatten())
        {
            told.insert(
                ip.as_str().unwrap().to_string(),
                e["names"][0].as_str().unwrap().to_string(),
            );
        }
    }
    assert!(
        told.contains_key("198.51.100.66"),
        "the recording has an audited name"
    );
    let mut checked = 0;
    for e in &events {
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        let to = match (s("kind").as_str(), e["names"].as_array()) {
            ("dns", _) => s("dst").split(':').next().unwrap().to_string(),
            (_, Some(names)) if !names.is_empty() => names[0].as_str().unwrap().to_string(),
            _ => told.get(&s("dst")).cloned().unwrap_or_else(|| s("dst")),
        };
        let protocols = if s("kind") == "dns" {
            vec!["UDP".to_string(), "TCP".to_string()]
        } else {
            vec![s("protocol")]
        };
        for proto in protocols {
            let port = format!("{}/{proto}", e["port"]);
            // An ingress event is the other way round.
            let (from, to) = if s("direction") == "ingress" {
                (s("src"), s("pod"))
            } else {
                (s("pod"), to.clone())
            };
            let (code, out) = explain(&from, &to, &port);
            assert_eq!(
                code,
                Some(0),
                "{} -> {to} {port} denied:\n{out}\n{yaml}",
                s("pod")
            );
            checked += 1;
        }
    }
    assert!(checked >= 21, "{checked}");
    // Not another name, port or pod.
    for (from, to, port) in [
        ("prod/app", "evil.test", "80/TCP"),
        ("prod/app", "api.test", "443/TCP"),
        ("prod/app", "203.0.113.53", "5353/UDP"),
        ("prod/other", "prod/web", "8080/TCP"),
        ("prod/web", "prod/app", "8080/TCP"),
    ] {
        let (code, out) = explain(from, to, port);
        assert_eq!(
            code,
            Some(1),
            "{from} -> {to} {port} allowed:\n{out}\n{yaml}"
        );
    }
}

#[test]
fn suggest_names_the_input_and_line_of_a_bad_event_and_an_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    let good = std::fs::read_to_string(testdata("suggest/observed.json")).unwrap();
    let first = good.lines().next().unwrap();
    std::fs::write(&bad, format!("{first}\nnot json\n")).unwrap();
    let out = tollgate(&["policy", "suggest", "--events", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{}:2: ", bad.display())),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "no half a suggestion");
    let missing = dir.path().join("missing.json");
    let out = tollgate(&["policy", "suggest", "--events", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&missing.display().to_string()),
        "{}",
        stderr(&out)
    );
    let out = tollgate(&[
        "policy",
        "suggest",
        "--events",
        &testdata("suggest/observed.json"),
        "--since",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--since"), "{}", stderr(&out));
}

/// An agent's /healthz on a local port, answering as the agent of `pod`
/// (one connection per call).
fn fake_agent(pod: Option<&'static str>) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 512];
        let _ = conn.read(&mut request);
        let body = match pod {
            Some(pod) => format!("ok\npod: {pod}\n"),
            None => "ok\n".to_string(),
        };
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    (addr, server)
}

/// The DaemonSet's readiness probe: ready only when the agent answering is
/// this pod's. During an upgrade the previous agent answers on the same
/// port until the new one has taken the sockets over (docs/upgrades.md).
#[test]
fn healthz_is_ready_only_for_the_pod_whose_agent_answers() {
    let probe = |addr: std::net::SocketAddr, pod: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["healthz", "--metrics-addr", &addr.to_string()])
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("TOLLGATE_METRICS_ADDR");
        if let Some(pod) = pod {
            cmd.env("POD_NAMESPACE", "tollgate").env("POD_NAME", pod);
        }
        cmd.output().unwrap()
    };
    let (addr, server) = fake_agent(Some("tollgate/tollgate-new"));
    let out = probe(addr, Some("tollgate-new"));
    server.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let (addr, server) = fake_agent(Some("tollgate/tollgate-old"));
    let out = probe(addr, Some("tollgate-new"));
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is pod tollgate/tollgate-old's, not tollgate/tollgate-new's"),
        "{}",
        stderr(&out)
    );

    // Without a pod (local mode, a liveness check) any agent will do.
    let (addr, server) = fake_agent(None);
    let out = probe(addr, None);
    server.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Nobody there.
    let out = probe(addr, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no agent answers"),
        "{}",
        stderr(&out)
    );
}
