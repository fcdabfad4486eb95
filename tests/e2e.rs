//! End-to-end (root): the `tollgate agent` binary in local mode in a node
//! namespace, pods in their own namespaces resolving through nsd, "external"
//! HTTP sites — driven only through `dig`, `curl`, the CLI and signals, as a
//! user would. Each scenario builds its own namespaces.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::cluster::{cnp, fqdn_policy};
use testkit::{eventually, privileged, Cluster};

/// A cluster running this build's `tollgate`.
fn cluster(tag: &str, pods: &[&str]) -> Cluster {
    Cluster::new(env!("CARGO_BIN_EXE_tollgate"), tag, pods)
}

#[test]
fn e2e_allowed_name_connects_on_its_ports_and_other_names_are_refused() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2ea", &["app"]);
    let app = c.pod("app");
    c.policy("app.yaml", &fqdn_policy("app", &["api.test"], &[443]));
    c.start();
    let (status, answers) = c.dig(&app, "api.test");
    assert_eq!(
        (status.as_str(), answers.as_slice()),
        ("NOERROR", &["203.0.113.10".to_string()][..])
    );
    assert!(
        c.curl(&app, "203.0.113.10", 443),
        "443 is open for api.test"
    );
    assert!(
        !c.curl(&app, "203.0.113.10", 80),
        "80 is not in the toFQDNs ports"
    );
    let (status, answers) = c.dig(&app, "evil.test");
    assert_eq!(status, "REFUSED");
    assert!(answers.is_empty());
    assert!(
        !c.curl(&app, "203.0.113.12", 443),
        "evil.test's IP dialled directly stays closed"
    );
    // The user can see why, filtered by pod and verdict.
    let refused = c.observe_until(
        &["--pod", "app", "--verdict", "REFUSED"],
        || {
            let _ = c.dig(&app, "evil.test");
        },
        |l| l.contains("prod/app") && l.contains("evil.test") && l.contains("not in the DNS rules"),
    );
    assert!(
        refused.iter().all(|l| l.contains("REFUSED")),
        "only REFUSED events: {refused:?}"
    );
    c.observe_until(
        &["--verdict", "DENIED"],
        || {
            let _ = c.curl(&app, "203.0.113.12", 443);
        },
        |l| l.contains("prod/app") && l.contains("203.0.113.12:443") && l.contains("default-deny"),
    );
}

#[test]
fn e2e_patterns_deep_patterns_and_a_cname_to_another_domain() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2ep", &["app"]);
    let app = c.pod("app");
    c.policy(
        "app.yaml",
        &fqdn_policy("app", &["*.cdn.test", "**.deep.test", "alias.test"], &[80]),
    );
    c.start();
    assert_eq!(
        c.dig(&app, "www.cdn.test").1,
        ["203.0.113.11"],
        "matchPattern through a CNAME"
    );
    assert!(c.curl(&app, "203.0.113.11", 80));
    for deep in ["x.deep.test", "a.b.deep.test"] {
        assert_eq!(
            c.dig(&app, deep).1,
            ["203.0.113.13"],
            "{deep} matches **.deep.test"
        );
    }
    assert!(c.curl(&app, "203.0.113.13", 80));
    assert_eq!(
        c.dig(&app, "deep.test").0,
        "REFUSED",
        "**. needs at least one label"
    );
    let (status, answers) = c.dig(&app, "alias.test");
    assert_eq!(status, "NOERROR");
    assert!(answers.contains(&"203.0.113.14".to_string()), "{answers:?}");
    assert!(
        c.curl(&app, "203.0.113.14", 80),
        "the CNAME target's IP is open for the name the pod asked"
    );
    assert!(!c.curl(&app, "203.0.113.10", 80), "nothing else is");
}

#[test]
fn e2e_short_ttl_expiry_closes_new_connections_not_established_ones() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2et", &["app", "other"]);
    let app = c.pod("app");
    let other = c.pod("other");
    c.policy(
        "app.yaml",
        &fqdn_policy("app", &["short.test"], &[80, 9000]),
    );
    c.policy(
        "other.yaml",
        &fqdn_policy("other", &["short.test"], &[80, 9000]),
    );
    let ext = c.sb.ext.clone();
    c.sb.echo_server(&ext, "203.0.113.10:9000".parse::<SocketAddr>().unwrap());
    c.start();
    assert_eq!(c.dig(&app, "short.test").1, ["203.0.113.10"]);
    let answered = Instant::now();
    let stream = c.sb.stream(&app, "203.0.113.10:9000".parse().unwrap());
    assert!(c.curl(&app, "203.0.113.10", 80));
    assert!(
        !c.curl(&other, "203.0.113.10", 80),
        "one pod's lookup does not open the IP for another"
    );
    // The passage of time is the point: the zone's TTL is 2 s, learned
    // before the answer reached dig; wait it out (plus a margin).
    std::thread::sleep(
        (answered + Duration::from_millis(2_500)).saturating_duration_since(Instant::now()),
    );
    assert!(
        !c.curl(&app, "203.0.113.10", 80),
        "a new connection after expiry fails"
    );
    stream.assert_flowing(Duration::from_millis(1_000), "after the TTL");
    assert_eq!(c.dig(&app, "short.test").1, ["203.0.113.10"]);
    assert!(c.curl(&app, "203.0.113.10", 80), "a new lookup reopens it");
}

#[test]
fn e2e_default_deny_both_directions_and_deny_wins() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2ed", &["locked", "open"]);
    let locked = c.pod("locked");
    let open = c.pod("open");
    let locked_ns = locked.netns.clone();
    c.sb.http_server(&locked_ns, 8080, &locked.v4.to_string());
    c.policy(
        "locked.yaml",
        &cnp(
            "locked",
            "endpointSelector: {matchLabels: {app: locked}}\ningress: []\negress: []",
        ),
    );
    c.policy(
        "open.yaml",
        &cnp(
            "open",
            "endpointSelector: {matchLabels: {app: open}}\negress:\n- toEntities: [world]\negressDeny:\n- toCIDR: [203.0.113.12/32]",
        ),
    );
    c.start();
    assert!(!c.curl(&locked, "203.0.113.10", 80), "egress default deny");
    assert!(
        !c.curl(&open, &locked.v4.to_string(), 8080),
        "ingress default deny"
    );
    assert!(
        c.curl(&open, "203.0.113.10", 80),
        "world is allowed for open"
    );
    assert!(
        !c.curl(&open, "203.0.113.12", 80),
        "the deny rule wins over the world allow"
    );
}

#[test]
fn e2e_live_policy_change_and_an_invalid_file_keeps_the_last_good_policy() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2el", &["app"]);
    let app = c.pod("app");
    c.policy("app.yaml", &fqdn_policy("app", &["api.test"], &[80]));
    c.start();
    assert_eq!(c.dig(&app, "evil.test").0, "REFUSED");
    // Live change: allow evil.test too.
    c.policy(
        "app.yaml",
        &fqdn_policy("app", &["api.test", "evil.test"], &[80]),
    );
    eventually(Duration::from_secs(10), "the new policy to apply", || {
        c.dig(&app, "evil.test").0 == "NOERROR"
    });
    assert!(c.curl(&app, "203.0.113.12", 80));
    // An invalid file: reported, and the last good set stays in force.
    c.policy(
        "broken.yaml",
        &cnp(
            "broken",
            "endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: '99999'}]}]",
        ),
    );
    let check = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["policy", "check"])
        .arg(c.work.join("policies"))
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    eventually(
        Duration::from_secs(10),
        "the agent to report the bad file",
        || c.log().contains("99999 is outside 1-65535"),
    );
    assert!(
        c.log().contains("last good policy set stays in force"),
        "{}",
        c.log()
    );
    assert_eq!(
        c.dig(&app, "evil.test").0,
        "NOERROR",
        "the old policy is still in force"
    );
    assert!(c.curl(&app, "203.0.113.12", 80));
    assert_eq!(c.dig(&app, "www.cdn.test").0, "REFUSED", "and nothing more");
}

#[test]
fn e2e_agent_kill_9_keeps_established_connections_and_names_and_dns_fails_closed() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2ek", &["app"]);
    let app = c.pod("app");
    c.policy("app.yaml", &fqdn_policy("app", &["api.test"], &[80, 9000]));
    let ext = c.sb.ext.clone();
    c.sb.echo_server(&ext, "203.0.113.10:9000".parse::<SocketAddr>().unwrap());
    c.start();
    assert_eq!(c.dig(&app, "api.test").1, ["203.0.113.10"]);
    let stream = c.sb.stream(&app, "203.0.113.10:9000".parse().unwrap());
    eventually(
        Duration::from_secs(5),
        "the stream's first round trips",
        || stream.round_trips.load(std::sync::atomic::Ordering::SeqCst) >= 2,
    );
    c.stop(true); // kill -9: nothing saved, nothing cleaned up
    stream.assert_flowing(Duration::from_millis(800), "with the agent killed");
    assert!(
        c.curl(&app, "203.0.113.10", 80),
        "an unexpired name keeps working while the agent is down"
    );
    assert!(
        !c.curl(&app, "203.0.113.12", 80),
        "and everything else stays denied"
    );
    let (status, answers) = c.dig(&app, "api.test");
    assert!(
        answers.is_empty(),
        "with the proxy down DNS fails closed (got {status} {answers:?})"
    );
    c.start();
    stream.assert_flowing(Duration::from_millis(500), "after the restart");
    assert!(
        c.curl(&app, "203.0.113.10", 80),
        "the restarted agent kept the learned name:\n{}",
        c.log()
    );
    assert_eq!(
        c.dig(&app, "api.test").1,
        ["203.0.113.10"],
        "and answers again"
    );
    assert_eq!(c.dig(&app, "evil.test").0, "REFUSED");
}

#[test]
fn e2e_graceful_restart_restores_the_cache_and_keeps_enforcing() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2er", &["app"]);
    let app = c.pod("app");
    c.policy("app.yaml", &fqdn_policy("app", &["api.test"], &[80]));
    c.start();
    assert_eq!(c.dig(&app, "api.test").1, ["203.0.113.10"]);
    c.stop(false); // SIGTERM: the cache is saved, enforcement stays pinned
    assert!(
        c.curl(&app, "203.0.113.10", 80),
        "the learned name works while the agent is stopped"
    );
    assert!(!c.curl(&app, "203.0.113.12", 80), "nothing else does");
    c.start();
    assert!(c.log().contains("restored the FQDN cache"), "{}", c.log());
    assert!(
        c.curl(&app, "203.0.113.10", 80),
        "and after the restart, without a new lookup"
    );
    let metrics = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.sb.node))
        .args(["curl", "-s", "http://127.0.0.1:9963/metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("tollgate_fqdn_ips 1"),
        "the restored entry is counted:\n{text}"
    );
}
