//! The Grafana dashboard and the Prometheus alerting rules under
//! `deploy/monitoring/` use only what the agent exports: every query is
//! parsed as PromQL, and every metric it selects must be in the `/metrics`
//! of an agent running in-process (local mode, fake datapath), with every
//! label value its `=` matchers (and each branch of a `a|b` regex matcher)
//! name. A renamed metric, a misspelt outcome, a dashboard query that no
//! longer parses: each fails here instead of as an empty panel or an alert
//! that never fires.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use dns_proxy::{Transport, Upstream, UpstreamError};
use egress_bpf::{Counters, FakeDatapath};
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::agent::{self, AgentConfig, Binds};

// Only the agent configuration is shared with this suite.
#[allow(dead_code)]
mod support;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Series Prometheus makes itself for every target, not the agent.
const PROMETHEUS_OWN: &[&str] = &["up"];

/// Labels Prometheus adds to every series of a target at scrape time.
const TARGET_LABELS: &[&str] = &["instance", "job", "__name__"];

/// Exported only in Kubernetes mode (the in-process agent runs in local
/// mode); checked against the renderer's source instead.
const KUBE_ONLY_PREFIX: &str = "tollgate_kube_";

struct NoUpstream;

#[async_trait::async_trait]
impl Upstream for NoUpstream {
    async fn exchange(
        &self,
        server: std::net::SocketAddr,
        _: Transport,
        _: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        Err(UpstreamError::Timeout(server))
    }
}

fn config(dir: &Path) -> AgentConfig {
    AgentConfig {
        pin_dir: dir.join("pins-unused"),
        ..support::in_process::config(dir)
    }
}

/// `name -> every label set it is exported with`, scraped from a running
/// agent's /metrics.
async fn scrape_agent() -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("endpoints.yaml"),
        "endpoints:\n  - {name: payments, namespace: prod, labels: {app: payments}, ips: [10.0.1.10], interface: veth-payments}\n",
    )
    .unwrap();
    let dp = FakeDatapath {
        fqdn_capacity: Some(65536),
        ..FakeDatapath::default()
    };
    dp.monitor.set_interface("veth-payments", 7);
    // The kernel reports every counter; so does the fake here.
    dp.monitor.set_counters(Counters(
        egress_bpf::abi::COUNTERS.iter().map(|c| (*c, 0)).collect(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let agent = agent::build(
        config(dir.path()),
        dp,
        NoUpstream,
        Binds {
            metrics: Some(listener),
            ..Binds::default()
        },
    )
    .await
    .expect("the agent builds on the fake datapath");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).await.unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "scrape failed: {body}");
    parse_exposition(body.split_once("\r\n\r\n").unwrap().1)
}

/// The Prometheus text format's samples (comments skipped).
fn parse_exposition(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let label = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)""#).unwrap();
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, _value) = line.rsplit_once(' ').expect("`series value`");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                label
                    .captures_iter(rest)
                    .map(|c| (c[1].to_string(), c[2].to_string()))
                    .collect(),
            ),
            None => (series, BTreeMap::new()),
        };
        out.entry(name.to_string()).or_default().push(labels);
    }
    out
}

/// Every vector selector in a PromQL expression.
fn selectors(expr: &str) -> Vec<VectorSelector> {
    struct Collect(Vec<VectorSelector>);
    impl ExprVisitor for Collect {
        type Error = ();
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
            match e {
                Expr::VectorSelector(vs) => self.0.push(vs.clone()),
                Expr::MatrixSelector(ms) => self.0.push(ms.vs.clone()),
                _ => {}
            }
            Ok(true)
        }
        fn post_visit(&mut self, _: &Expr) -> Result<bool, ()> {
            Ok(true)
        }
    }
    let ast = parser::parse(expr).unwrap_or_else(|e| panic!("not PromQL: {e}\n{expr}"));
    let mut c = Collect(Vec::new());
    walk_expr(&mut c, &ast).unwrap();
    c.0
}

/// Grafana's variables, as Grafana would substitute them.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$instance", ".*")
}

/// Every query of the dashboard: panels (rows included) and variables.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title}: a target without expr"));
                out.push((format!("panel {title:?}"), grafana_to_promql(expr)));
            }
            panels(&p["panels"], out);
        }
    }
    panels(&dashboard["panels"], &mut out);
    let label_values = regex::Regex::new(r"^label_values\((.+),\s*[a-zA-Z_]+\)$").unwrap();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = v["query"]["query"].as_str() {
            let metric = label_values
                .captures(q)
                .unwrap_or_else(|| panic!("variable query not label_values(metric, label): {q}"));
            out.push((format!("variable {}", v["name"]), metric[1].to_string()));
        }
    }
    out
}

fn alert_queries(rules: &serde_yaml::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let groups = rules["groups"].as_sequence().expect("groups: [...]");
    for g in groups {
        for r in g["rules"].as_sequence().expect("rules: [...]") {
            let name = r["alert"].as_str().expect("every rule is an alert");
            assert!(
                r["labels"]["severity"].as_str().is_some(),
                "alert {name} has no severity label"
            );
            assert!(
                r["annotations"]["summary"].as_str().is_some(),
                "alert {name} has no summary"
            );
            let expr = r["expr"].as_str().expect("expr");
            out.push((format!("alert {name}"), expr.to_string()));
        }
    }
    out
}

/// Checks one query's selectors against the exported series; returns the
/// problems found.
fn check(
    what: &str,
    expr: &str,
    exported: &BTreeMap<String, Vec<BTreeMap<String, String>>>,
    kube_source: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for vs in selectors(expr) {
        let name = vs
            .name
            .clone()
            .unwrap_or_else(|| panic!("{what}: a selector without a metric name in {expr}"));
        if PROMETHEUS_OWN.contains(&name.as_str()) {
            continue;
        }
        if name.starts_with(KUBE_ONLY_PREFIX) {
            if !kube_source.contains(&format!("\"{name}\"")) {
                problems.push(format!("{what}: {name} is not a metric of Kubernetes mode"));
            }
            continue;
        }
        let Some(series) = exported.get(&name) else {
            problems.push(format!("{what}: the agent exports no metric {name}"));
            continue;
        };
        for m in &vs.matchers.matchers {
            if TARGET_LABELS.contains(&m.name.as_str()) {
                continue;
            }
            let values: BTreeSet<&str> = series
                .iter()
                .filter_map(|l| l.get(&m.name).map(String::as_str))
                .collect();
            let missing: Vec<String> = match &m.op {
                MatchOp::Equal => (!values.contains(m.value.as_str()))
                    .then(|| m.value.clone())
                    .into_iter()
                    .collect(),
                MatchOp::Re(re) => {
                    if m.value
                        .chars()
                        .all(|c| c.is_alphanumeric() || "_|".contains(c))
                    {
                        // A list of values: each must exist.
                        m.value
                            .split('|')
                            .filter(|v| !values.contains(v))
                            .map(String::from)
                            .collect()
                    } else if values.iter().any(|v| re.is_match(v)) {
                        Vec::new()
                    } else {
                        vec![m.value.clone()]
                    }
                }
                _ => Vec::new(),
            };
            for v in missing {
                problems.push(format!(
                    "{what}: {name} has no series with {}={v:?} (it has {values:?})",
                    m.name
                ));
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_use_only_exported_metrics() {
    let exported = scrape_agent().await;
    for must in [
        "tollgate_datapath_map_entries",
        "tollgate_datapath_map_capacity",
        "tollgate_datapath_write_errors_total",
        "tollgate_agent_start_time_seconds",
        "tollgate_policy_last_reload_success",
    ] {
        assert!(exported.contains_key(must), "/metrics lacks {must}");
    }
    let maps = |name: &str| -> BTreeSet<String> {
        exported[name]
            .iter()
            .filter_map(|l| l.get("map").cloned())
            .collect()
    };
    assert_eq!(
        maps("tollgate_datapath_map_entries").len(),
        6,
        "entries of every map the agent writes"
    );
    assert!(
        maps("tollgate_datapath_map_capacity").contains("tg_fqdn"),
        "the capacity the datapath reports"
    );
    let kube_source = std::fs::read_to_string(format!("{ROOT}/src/agent/metrics.rs")).unwrap();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/monitoring/tollgate-dashboard.json"))
            .unwrap(),
    )
    .expect("the dashboard is JSON");
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/monitoring/tollgate-alerts.yaml")).unwrap(),
    )
    .expect("the rules are YAML");

    let panels = dashboard_queries(&dashboard);
    let alerts = alert_queries(&rules);
    assert!(
        panels.len() >= 15,
        "the dashboard has its queries: {panels:?}"
    );
    assert!(
        alerts.len() >= 10,
        "the rules have their alerts: {alerts:?}"
    );
    let problems: Vec<String> = panels
        .iter()
        .chain(&alerts)
        .flat_map(|(what, expr)| check(what, expr, &exported, &kube_source))
        .collect();
    assert!(
        problems.is_empty(),
        "metrics the agent does not export:\n{}",
        problems.join("\n")
    );

    // What the issue asks the operator to see, each covered.
    let all: String = panels
        .iter()
        .chain(&alerts)
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "refused_name",
        "servfail_upstream",
        "tollgate_datapath_write_errors_total",
        "tollgate_datapath_map_capacity",
        "drop_",
        "tollgate_http_requests_total{verdict=\"denied\"}",
        "tollgate_agent_start_time_seconds",
    ] {
        assert!(all.contains(needle), "nothing watches {needle}");
    }
}

/// The checker itself: a metric or label value the agent does not export
/// is caught, each branch of an alternation on its own.
#[test]
fn the_check_catches_unknown_metrics_and_label_values() {
    let exported = parse_exposition(
        "# HELP x y\ntollgate_dns_queries_total{outcome=\"allowed\"} 1\ntollgate_dns_queries_total{outcome=\"refused_name\"} 0\n",
    );
    let ok = check(
        "t",
        "sum(rate(tollgate_dns_queries_total{outcome=~\"allowed|refused_name\"}[5m]))",
        &exported,
        "",
    );
    assert!(ok.is_empty(), "{ok:?}");
    for bad in [
        "rate(tollgate_dns_query_total[5m])",
        "tollgate_dns_queries_total{outcome=\"refused\"}",
        "tollgate_dns_queries_total{outcome=~\"allowed|refused\"}",
        "tollgate_dns_queries_total{outcome=~\"serv.*\"}",
        "tollgate_kube_nothing_total",
    ] {
        assert!(
            !check("t", bad, &exported, "").is_empty(),
            "not caught: {bad}"
        );
    }
}
