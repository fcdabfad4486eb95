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
