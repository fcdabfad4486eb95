//! L7 HTTP end to end (root): the agent in local mode, the seed's
//! frontend-to-db-l7 policy and friends, a real HTTP server in the db pod,
//! `curl` from the pods — per request verdicts, keep-alive, big bodies,
//! slow and malformed clients, events and metrics.

use std::time::{Duration, Instant};

use testkit::cluster::cnp;
use testkit::{eventually, privileged, testdata, Cluster, Pod};

/// Answers every method on every path with `METHOD PATH BODY-BYTES from
/// CLIENT-ADDRESS` (and ` x-env=V1|V2` for the X-Env headers it got), keeps
/// connections alive (HTTP/1.1), reads bodies in chunks; dual stack.
const SERVER: &str = r#"
import http.server, socket, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        got = 0
        while got < n:
            chunk = self.rfile.read(min(65536, n - got))
            if not chunk:
                break
            got += len(chunk)
        client = self.client_address[0].removeprefix("::ffff:")
        env = self.headers.get_all("X-Env")
        env = " x-env=" + "|".join(env) if env else ""
        body = ("%s %s %d from %s%s\n" % (self.command, self.path, got, client, env)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
S(("::", int(sys.argv[1])), H).serve_forever()
"#;

/// HTTP rules with a header and a host alternative, for the api pod.
const API_L7: &str = "endpointSelector: {matchLabels: {app: api}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
  toPorts:
  - ports: [{port: '80', protocol: TCP}]
    rules:
      http:
      - headers: ['X-Token: secret']
      - method: GET
        host: 'public\\.api\\.test'";

fn l7_cluster(tag: &str, pods: &[&str]) -> Cluster {
    let mut c = Cluster::new(env!("CARGO_BIN_EXE_tollgate"), tag, pods);
    let script = c.work.join("server.py");
    std::fs::write(&script, SERVER).unwrap();
    for name in ["db", "api"] {
        if let Some(pod) = c.sb.pods.iter().find(|p| p.name == name).cloned() {
            c.sb.spawn(&pod.netns, &format!("python3 {} 80", script.display()));
            let url = format!("http://{}/", pod.v4);
            eventually(Duration::from_secs(10), "the pod's HTTP server", || {
                c.sb.try_sh(&pod.netns, &format!("curl -s -m 1 -o /dev/null {url}"))
                    .status
                    .success()
            });
        }
    }
    let seed = std::fs::read_to_string(testdata("policies/frontend-to-db-l7.yaml")).unwrap();
    c.policy("frontend-to-db-l7.yaml", &seed);
    c
}

/// `curl` from `pod`: the status (`000` when no HTTP answer) and the body.
fn request(c: &Cluster, pod: &Pod, args: &str, url: &str) -> (String, String) {
    let out = c.sb.try_sh(
        &pod.netns,
        &format!("curl -s -m 5 -w '\\n%{{http_code}}' {args} '{url}'"),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_string(), body.trim_end().to_string())
}

fn status(c: &Cluster, pod: &Pod, args: &str, url: &str) -> String {
    request(c, pod, args, url).0
}

#[test]
fn l7_frontend_to_db_only_the_allowed_request_passes() {
    if !privileged() {
        return;
    }
    let mut c = l7_cluster("l7a", &["frontend", "db", "other"]);
    let (frontend, db, other) = (c.pod("frontend"), c.pod("db"), c.pod("other"));
    c.start();
    let base = format!("http://{}", db.v4);

    let (code, body) = request(&c, &frontend, "", &format!("{base}/api/v1/public-data"));
    assert_eq!(code, "200");
    assert_eq!(
        body,
        format!("GET /api/v1/public-data 0 from {}", frontend.v4),
        "forwarded unchanged, and the db sees the frontend's address"
    );
    let (code, body) = request(&c, &frontend, "", &format!("{base}/api/v1/admin"));
    assert_eq!(code, "403", "another path");
    assert_eq!(body.trim(), "Access denied");
    for method in ["POST", "DELETE", "PUT"] {
        assert_eq!(
            status(
                &c,
                &frontend,
                &format!("-X {method}"),
                &format!("{base}/api/v1/public-data")
            ),
            "403",
            "{method} is not GET"
        );
    }
    assert_eq!(
        status(
            &c,
            &frontend,
            "",
            &format!("{base}/api/v1/public-data?all=1")
        ),
        "403",
        "the path regex is anchored and sees the query, as in Cilium"
    );
    // IPv6 goes through the same proxy.
    assert_eq!(
        status(
            &c,
            &frontend,
            "",
            &format!("http://[{}]/api/v1/public-data", db.v6)
        ),
        "200"
    );
    assert_eq!(
        status(
            &c,
            &frontend,
            "",
            &format!("http://[{}]/api/v1/admin", db.v6)
        ),
        "403"
    );

    // A pod without the frontend label gets no HTTP answer at all.
    assert_eq!(
        status(&c, &other, "", &format!("{base}/api/v1/public-data")),
        "000"
    );

    // Keep-alive: one connection, an allowed then a denied then an allowed
    // request, each checked.
    let out = c.sb.try_sh(
        &frontend.netns,
        &format!(
            "curl -s -m 5 -o /dev/null -o /dev/null -o /dev/null -w '%{{http_code}} %{{num_connects}}\\n' \
             {base}/api/v1/public-data {base}/api/v1/admin {base}/api/v1/public-data"
        ),
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        ["200 1", "403 0", "200 0"],
        "one connection, three verdicts"
    );

    // Events and metrics, as an operator reads them.
    c.observe_until(
        &["--pod", "prod/db"],
        || {
            status(
                &c,
                &frontend,
                "-X DELETE",
                &format!("{base}/api/v1/public-data"),
            );
        },
        |l| {
            l.starts_with("HTTP")
                && l.contains("DENIED")
                && l.contains("DELETE /api/v1/public-data")
                && l.contains("403")
                && l.contains("prod/frontend-to-db-l7")
        },
    );
    for (name, least) in [
        ("tollgate_http_requests_total{verdict=\"denied\"}", 7),
        ("tollgate_http_requests_total{verdict=\"allowed\"}", 4),
        ("tollgate_http_connections_refused_total", 1),
    ] {
        let v = c.metric(name);
        assert!(v >= least, "{name} = {v}, expected at least {least}");
    }
}

#[test]
fn l7_header_and_host_rules_and_egress_http_rules() {
    if !privileged() {
        return;
    }
    let mut c = l7_cluster("l7h", &["client", "api", "app"]);
    let (client, api, app) = (c.pod("client"), c.pod("api"), c.pod("app"));
    c.policy("api.yaml", &cnp("api-l7", API_L7));
    c.policy(
        "app.yaml",
        &cnp(
            "app-egress-l7",
            "endpointSelector: {matchLabels: {app: app}}\negress:\n- toCIDR: [203.0.113.10/32]\n  toPorts:\n  \
             - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [{method: GET, path: '/'}]}\n\
             - toEndpoints: [{matchLabels: {app: api}}]\n  toPorts: [{ports: [{port: '80', protocol: TCP}]}]",
        ),
    );
    // headerMatches with a mismatch action: the api pod gets X-Env: prod
    // from the app pod whatever the app sent (Cilium's REPLACE).
    c.policy(
        "api-from-app.yaml",
        &cnp(
            "api-from-app",
            "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEndpoints: [{matchLabels: {app: app}}]\n  \
             toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n    rules:\n      http:\n      \
             - headerMatches: [{name: X-Env, value: prod, mismatch: REPLACE}]",
        ),
    );
    c.start();
    let url = format!("http://{}/data", api.v4);
    assert_eq!(status(&c, &client, "", &url), "403", "no header, no host");
    assert_eq!(status(&c, &client, "-H 'X-Token: secret'", &url), "200");
    assert_eq!(
        status(&c, &client, "-X POST -H 'x-token: secret'", &url),
        "200",
        "header names are case-insensitive; this rule has no method"
    );
    assert_eq!(status(&c, &client, "-H 'X-Token: wrong'", &url), "403");
    assert_eq!(
        status(&c, &client, "-H 'Host: public.api.test'", &url),
        "200"
    );
    assert_eq!(
        status(&c, &client, "-X POST -H 'Host: public.api.test'", &url),
        "403",
        "the host rule is GET only"
    );
    assert_eq!(status(&c, &client, "-H 'Host: evil.api.test'", &url), "403");

    // Egress HTTP rules: the external site's / is allowed, /secret is not
    // (the site would answer 404; the proxy answers first).
    assert_eq!(status(&c, &app, "", "http://203.0.113.10/"), "200");
    assert_eq!(status(&c, &app, "", "http://203.0.113.10/secret"), "403");
    assert_eq!(status(&c, &app, "-X POST", "http://203.0.113.10/"), "403");

    // The header action, through the real datapath and proxy.
    for sent in [
        "",
        "-H 'X-Env: dev'",
        "-H 'X-Env: dev' -H 'X-Env: qa'",
        "-H 'X-Env: prod'",
    ] {
        assert_eq!(
            request(&c, &app, sent, &url),
            (
                "200".to_string(),
                format!("GET /data 0 from {} x-env=prod", app.v4)
            ),
            "{sent}"
        );
    }
    c.observe_until(
        &["--pod", "prod/api"],
        || {
            request(&c, &app, "-H 'X-Env: dev'", &url);
        },
        |l| l.starts_with("HTTP") && l.contains("X-Env: replaced by"),
    );
}

#[test]
fn l7_big_bodies_slow_and_malformed_clients_do_not_wedge_the_proxy() {
    if !privileged() {
        return;
    }
    let mut c = l7_cluster("l7s", &["client", "api"]);
    let (client, api) = (c.pod("client"), c.pod("api"));
    c.policy("api.yaml", &cnp("api-l7", API_L7));
    c.start();
    let url = format!("http://{}/upload", api.v4);

    // Slow clients: connections that send half a request line and stall.
    for _ in 0..20 {
        c.sb.spawn(
            &client.netns,
            &format!(
                "bash -c 'exec 3<>/dev/tcp/{}/80; printf \"POST /upl\" >&3; sleep 60'",
                api.v4
            ),
        );
    }
    eventually(
        Duration::from_secs(10),
        "20 stalled connections at the proxy",
        || c.metric("tollgate_http_connections_total") >= 20,
    );
    // A 64 MiB body streams through while they stall.
    let blob = c.work.join("blob");
    let f = std::fs::File::create(&blob).unwrap();
    f.set_len(64 << 20).unwrap();
    let start = Instant::now();
    let (code, body) = request(
        &c,
        &client,
        &format!(
            "-X POST -H 'X-Token: secret' --data-binary @{}",
            blob.display()
        ),
        &url,
    );
    assert_eq!(code, "200");
    assert_eq!(
        body,
        format!("POST /upload {} from {}", 64 << 20, client.v4),
        "every byte arrived"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // A malformed request gets a 400 on its own connection only.
    let raw = c.work.join("raw.sh");
    std::fs::write(
        &raw,
        format!(
            "exec 3<>/dev/tcp/{}/80; printf 'THIS IS NOT HTTP\\r\\n\\r\\n' >&3; timeout 3 head -c 12 <&3",
            api.v4
        ),
    )
    .unwrap();
    let out =
        c.sb.try_sh(&client.netns, &format!("bash {}", raw.display()));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HTTP/1.1 400");
    assert_eq!(status(&c, &client, "-H 'X-Token: secret'", &url), "200");

    // A header block over the proxy's limit is refused without harming others.
    let huge = "a".repeat(100 * 1024);
    let out = c.sb.try_sh(
        &client.netns,
        &format!(
            "curl -s -m 5 -o /dev/null -w '%{{http_code}}' -H 'X-Token: secret' -H 'X-Big: {huge}' {url}"
        ),
    );
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(code == "431" || code == "000", "{code}");
    assert_eq!(
        status(&c, &client, "-H 'X-Token: secret'", &url),
        "200",
        "agent log:\n{}",
        c.log()
    );
}

#[test]
fn l7_path_tricks_duplicate_headers_and_absolute_targets_are_caught_in_both_directions() {
    if !privileged() {
        return;
    }
    let mut c = l7_cluster("l7n", &["client", "api", "app"]);
    let (client, api, app) = (c.pod("client"), c.pod("api"), c.pod("app"));
    // Ingress (the api pod's rule) and egress (the app pod's rule), both
    // `/api/v1/.*`; the ingress one also needs a header.
    c.policy(
        "api.yaml",
        &cnp(
            "api-l7",
            "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEndpoints: [{matchLabels: {app: client}}]\n  toPorts:\n  \
             - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [{path: '/api/v1/.*', headers: ['X-Token: secret']}]}",
        ),
    );
    c.policy(
        "app.yaml",
        &cnp(
            "app-egress-l7",
            "endpointSelector: {matchLabels: {app: app}}\negress:\n- toEndpoints: [{matchLabels: {app: api}}]\n  toPorts:\n  \
             - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [{path: '/api/v1/.*'}]}",
        ),
    );
    // The api pod admits app too (its own ingress rule would stop it).
    c.policy(
        "api-from-app.yaml",
        &cnp(
            "api-from-app",
            "endpointSelector: {matchLabels: {app: api}}\ningress:\n- fromEndpoints: [{matchLabels: {app: app}}]\n  toPorts:\n  \
             - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [{path: '/.*'}]}",
        ),
    );
    c.start();
    let base = format!("http://{}", api.v4);
    for (pod, args, dir) in [
        (&client, "--path-as-is -H 'X-Token: secret'", "ingress"),
        (&app, "--path-as-is", "egress"),
    ] {
        // Control: the rule admits what is under /api/v1/, and the server
        // sees the path as sent.
        let (code, body) = request(&c, pod, args, &format!("{base}/api/v1/public"));
        assert_eq!(code, "200", "{dir} control");
        assert!(body.starts_with("GET /api/v1/public "), "{dir}: {body}");
        for trick in [
            "/api/v1/../../admin",
            "/api/v1/%2e%2e/admin",
            "/api/v1/%2E%2E/%2e%2e/admin",
        ] {
            assert_eq!(
                status(&c, pod, args, &format!("{base}{trick}")),
                "403",
                "{dir}: {trick} resolves to a path outside the rule"
            );
        }
        assert_eq!(
            status(&c, pod, args, &format!("{base}/api/v1/..%2fadmin")),
            "400",
            "{dir}: an encoded slash cannot be normalised safely"
        );
        // What is forwarded is the normalised form.
        let (code, body) = request(&c, pod, args, &format!("{base}/api/v1/x/..//public"));
        assert_eq!(code, "200", "{dir}");
        assert!(
            body.starts_with("GET /api/v1/public "),
            "{dir}: the server saw {body}"
        );
    }
    // A second copy of the required header cannot smuggle another value.
    assert_eq!(
        status(
            &c,
            &client,
            "-H 'X-Token: secret' -H 'X-Token: forged'",
            &format!("{base}/api/v1/public")
        ),
        "403"
    );
    // Absolute-form target whose authority disagrees with Host.
    assert_eq!(
        status(
            &c,
            &client,
            &format!("--request-target http://evil.test/api/v1/public -H 'Host: {}' -H 'X-Token: secret'", api.v4),
            &format!("{base}/")
        ),
        "400"
    );
}
