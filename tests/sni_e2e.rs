//! `toPorts.serverNames` (TLS SNI) end to end (root): the agent in local
//! mode, a TLS site in the sandbox's ext namespace with a certificate made
//! at test time, `curl` and `openssl s_client` from the pod. The proxy only
//! reads the ClientHello; the TLS session is between the pod and the site.
//!
//! Semantics as in Cilium (pkg/policy/api/l4.go `PortRule.ServerNames`:
//! "TLS must be present and one of the provided SNIs must be indicated in
//! the TLS handshake"; pkg/policy/l4.go: such a port is redirected to the
//! proxy; cilium/proxy cilium/network_policy.h `SniPattern`: lowercase
//! match). Each refusal is first shown to pass under a control policy
//! without serverNames, so the test fails if enforcement is missing.

use std::time::Duration;

use testkit::cluster::cnp;
use testkit::{eventually, privileged, Cluster, Pod};

/// A dual-stack HTTPS site: answers `sni=NAME from CLIENT` (the server
/// name it was asked for and the client address it saw).
const TLS_SITE: &str = r#"
import http.server, socket, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = getattr(self.request, "sni_seen", None)
        client = self.client_address[0].removeprefix("::ffff:")
        body = ("sni=%s from %s\n" % (name, client)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
def on_sni(sock, name, _):
    sock.sni_seen = name
ctx.sni_callback = on_sni
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def get_request(self):
        sock, addr = self.socket.accept()
        sock.settimeout(5)
        return ctx.wrap_socket(sock, server_side=True), addr
S(("::", int(sys.argv[1])), H).serve_forever()
"#;

/// A TLS client that sends its ClientHello in two TCP segments 300 ms
/// apart, then finishes the handshake and a GET; prints the response body.
const SPLIT_CLIENT: &str = r#"
import socket, ssl, sys, time
host, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
sock = socket.create_connection((addr, port), timeout=5)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = outgoing.read()
sock.sendall(hello[:40]); time.sleep(0.3); sock.sendall(hello[40:])
def pump():
    data = outgoing.read()
    if data:
        sock.sendall(data)
while True:
    try:
        tls.do_handshake()
        pump()
        break
    except ssl.SSLWantReadError:
        pump()
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("closed during the handshake")
        incoming.write(chunk)
tls.write(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
pump()
out = b""
while True:
    try:
        out += tls.read(65536)
    except ssl.SSLWantReadError:
        chunk = sock.recv(65536)
        if not chunk:
            break
        incoming.write(chunk)
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        break
print(out.split(b"\r\n\r\n", 1)[-1].decode().strip())
"#;

/// The TLS site's addresses (on ext; its 443 is redirected to the site's
/// port, 8443, because the sandbox's plain HTTP site already holds 443).
const SITE_V4: &str = "203.0.113.14";
const SITE_V6: &str = "2001:db8::14";
/// The sandbox's plain HTTP site, also on 443.
const PLAIN_V4: &str = "203.0.113.10";

fn policy(server_names: bool) -> String {
    let names = if server_names {
        ", serverNames: [api.test, '*.cdn.test']"
    } else {
        ""
    };
    cnp(
        "app-tls",
        &format!(
            "endpointSelector: {{matchLabels: {{app: app}}}}\negress:\n\
             - toCIDR: [{SITE_V4}/32, '{SITE_V6}/128', {PLAIN_V4}/32]\n  \
             toPorts: [{{ports: [{{port: '443', protocol: TCP}}]{names}}}]"
        ),
    )
}

fn sni_cluster() -> Cluster {
    let mut c = Cluster::new(env!("CARGO_BIN_EXE_tollgate"), "sni", &["app"]);
    let ext = c.sb.ext.clone();
    let dir = c.work.clone();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    c.sb.sh(
        &ext,
        &format!(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
             -subj /CN=api.test -keyout {} -out {} 2>/dev/null",
            key.display(),
            cert.display()
        ),
    );
    c.sb.sh(
        &ext,
        &format!(
            "ip -6 addr add {SITE_V6}/64 dev eth0 nodad; nft -f - <<'EOF'\n\
             table inet tgsni {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    \
             ip daddr {SITE_V4} tcp dport 443 redirect to :8443\n    \
             ip6 daddr {SITE_V6} tcp dport 443 redirect to :8443\n  }}\n}}\nEOF"
        ),
    );
    let script = dir.join("tls_site.py");
    std::fs::write(&script, TLS_SITE).unwrap();
    std::fs::write(dir.join("split_client.py"), SPLIT_CLIENT).unwrap();
    c.sb.spawn(
        &ext,
        &format!(
            "python3 {} 8443 {} {}",
            script.display(),
            cert.display(),
            key.display()
        ),
    );
    eventually(Duration::from_secs(10), "the TLS site", || {
        c.sb.try_sh(
            &ext,
            &format!(
                "curl -sk -m 1 -o /dev/null --resolve api.test:8443:{SITE_V4} https://api.test:8443/"
            ),
        )
        .status
        .success()
    });
    c
}

/// `curl -k` from the pod to `https://NAME/` at `addr`: the body, or
/// `None` if no HTTPS answer came back.
fn https(c: &Cluster, pod: &Pod, name: &str, addr: &str) -> Option<String> {
    let resolve = if addr.contains(':') {
        format!("{name}:443:[{addr}]")
    } else {
        format!("{name}:443:{addr}")
    };
    let out = c.sb.try_sh(
        &pod.netns,
        &format!("curl -sk -m 5 --resolve {resolve} https://{name}/"),
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `openssl s_client` from the pod: whether a TLS session was set up
/// (`args`: `-servername X` or `-noservername`).
fn s_client(c: &Cluster, pod: &Pod, args: &str) -> bool {
    let out = c.sb.try_sh(
        &pod.netns,
        &format!("timeout 5 openssl s_client -connect {SITE_V4}:443 {args} </dev/null 2>&1"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("BEGIN CERTIFICATE") && text.contains("Cipher is")
}

/// Plain HTTP to the plain site's 443: the status, `000` for none.
fn plain_http(c: &Cluster, pod: &Pod) -> String {
    let out = c.sb.try_sh(
        &pod.netns,
        &format!("curl -s -m 5 -o /dev/null -w '%{{http_code}}' http://{PLAIN_V4}:443/"),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn split_hello(c: &Cluster, pod: &Pod, name: &str, addr: &str) -> Option<String> {
    let out = c.sb.try_sh(
        &pod.netns,
        &format!(
            "timeout 10 python3 {} {name} {addr} 443",
            c.work.join("split_client.py").display()
        ),
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn sni_only_the_allowed_server_names_pass_and_the_rest_is_reset() {
    if !privileged() {
        return;
    }
    let mut c = sni_cluster();
    let app = c.pod("app");

    // The control: the same peers and port without serverNames. Everything
    // the rule below must refuse gets through here.
    c.policy("app-tls.yaml", &policy(false));
    c.start();
    assert_eq!(
        https(&c, &app, "evil.test", SITE_V4).as_deref(),
        Some(format!("sni=evil.test from {}", app.v4).as_str()),
        "control: another name reaches the site"
    );
    assert_eq!(plain_http(&c, &app), "200", "control: plain HTTP on 443");
    assert!(s_client(&c, &app, "-noservername"), "control: no SNI");

    // Now with serverNames.
    c.policy("app-tls.yaml", &policy(true));
    eventually(
        Duration::from_secs(10),
        "the serverNames policy in force",
        || https(&c, &app, "evil.test", SITE_V4).is_none(),
    );
    for addr in [SITE_V4, SITE_V6] {
        let client = if addr.contains(':') { app.v6 } else { app.v4 };
        assert_eq!(
            https(&c, &app, "api.test", addr),
            Some(format!("sni=api.test from {client}")),
            "allowed name over {addr}, the site sees the pod's own address"
        );
        assert_eq!(
            https(&c, &app, "x.cdn.test", addr),
            Some(format!("sni=x.cdn.test from {client}")),
            "`*.cdn.test` allows one label"
        );
        assert_eq!(https(&c, &app, "a.b.cdn.test", addr), None, "not two");
        assert_eq!(
            https(&c, &app, "evil.test", addr),
            None,
            "another name over {addr}"
        );
    }
    assert!(
        s_client(&c, &app, "-servername API.Test"),
        "names compare case-insensitively"
    );
    assert!(!s_client(&c, &app, "-noservername"), "no SNI is refused");
    assert_eq!(
        plain_http(&c, &app),
        "000",
        "plain HTTP on a serverNames port"
    );
    assert_eq!(
        split_hello(&c, &app, "api.test", SITE_V4),
        Some(format!("sni=api.test from {}", app.v4)),
        "a ClientHello split across TCP segments is reassembled"
    );
    assert_eq!(split_hello(&c, &app, "evil.test", SITE_V4), None);

    // What an operator sees.
    c.observe_until(
        &["--pod", "prod/app"],
        || {
            https(&c, &app, "evil.test", SITE_V4);
        },
        |l| {
            l.starts_with("HTTP")
                && l.contains("DENIED")
                && l.contains("TLS")
                && l.contains("host=evil.test")
                && l.contains("server name not allowed")
        },
    );
    for (name, least) in [
        ("tollgate_tls_connections_total{verdict=\"allowed\"}", 6),
        ("tollgate_tls_connections_total{verdict=\"denied\"}", 6),
    ] {
        let v = c.metric(name);
        assert!(v >= least, "{name} = {v}, expected at least {least}");
    }
}

/// Ingress `serverNames` (Cilium allows them there too): a pod serving TLS
/// accepts only connections for its own name, from the pods its rule names.
#[test]
fn sni_ingress_a_pod_accepts_only_its_own_name() {
    if !privileged() {
        return;
    }
    let mut c = Cluster::new(env!("CARGO_BIN_EXE_tollgate"), "snii", &["client", "web"]);
    let (client, web) = (c.pod("client"), c.pod("web"));
    let dir = c.work.clone();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    c.sb.sh(
        &web.netns,
        &format!(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
             -subj /CN=web.prod.test -keyout {} -out {} 2>/dev/null",
            key.display(),
            cert.display()
        ),
    );
    let script = dir.join("tls_site.py");
    std::fs::write(&script, TLS_SITE).unwrap();
    c.sb.spawn(
        &web.netns,
        &format!(
            "python3 {} 443 {} {}",
            script.display(),
            cert.display(),
            key.display()
        ),
    );
    let url = format!(
        "--resolve web.prod.test:443:{} https://web.prod.test/",
        web.v4
    );
    eventually(Duration::from_secs(10), "the pod's TLS site", || {
        c.sb.try_sh(&web.netns, &format!("curl -sk -m 1 -o /dev/null {url}"))
            .status
            .success()
    });
    let rule = |names: &str| {
        cnp(
            "web-tls",
            &format!(
                "endpointSelector: {{matchLabels: {{app: web}}}}\ningress:\n\
                 - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n  \
                 toPorts: [{{ports: [{{port: '443', protocol: TCP}}]{names}}}]"
            ),
        )
    };
    // Control: without names, any name reaches the pod.
    c.policy("web-tls.yaml", &rule(""));
    c.start();
    assert_eq!(
        https(&c, &client, "evil.test", &web.v4.to_string()),
        Some(format!("sni=evil.test from {}", client.v4)),
        "control"
    );
    c.policy("web-tls.yaml", &rule(", serverNames: [web.prod.test]"));
    eventually(
        Duration::from_secs(10),
        "the serverNames policy in force",
        || https(&c, &client, "evil.test", &web.v4.to_string()).is_none(),
    );
    for addr in [web.v4.to_string(), web.v6.to_string()] {
        let from = if addr.contains(':') {
            client.v6
        } else {
            client.v4
        };
        assert_eq!(
            https(&c, &client, "web.prod.test", &addr),
            Some(format!("sni=web.prod.test from {from}")),
            "the pod's own name over {addr}, from the client's address"
        );
        assert_eq!(https(&c, &client, "evil.test", &addr), None, "{addr}");
    }
}

/// L7 rules under `toFQDNs`, Cilium's own pairing for an egress gateway
/// (`toFQDNs: api.stripe.com` + `serverNames` or `rules.http`): the learned
/// addresses go through the proxy, not straight through the FQDN map. The
/// attack each part stops: another server name (or another HTTP request)
/// sent to an address the pod legitimately learned. Each is first shown
/// getting through under the same rule without its L7 part.
#[test]
fn sni_and_http_rules_under_to_fqdns_check_the_learned_addresses() {
    if !privileged() {
        return;
    }
    let mut c = sni_cluster();
    let app = c.pod("app");
    // alias.test is a CNAME to www.other., whose address is the TLS site's.
    let fqdn_policy = |l7: bool| {
        let (names, http) = if l7 {
            (
                ", serverNames: [alias.test]",
                "\n    rules: {http: [{method: GET, path: /}]}",
            )
        } else {
            ("", "")
        };
        cnp(
            "app-fqdn-l7",
            &format!(
                "endpointSelector: {{matchLabels: {{app: app}}}}\negress:\n\
                 - toCIDR: [203.0.113.53/32]\n  toPorts: [{{ports: [{{port: '53', protocol: UDP}}], rules: {{dns: [{{matchPattern: '*.test'}}]}}}}]\n\
                 - toFQDNs: [{{matchName: alias.test}}]\n  toPorts: [{{ports: [{{port: '443', protocol: TCP}}]{names}}}]\n\
                 - toFQDNs: [{{matchName: api.test}}]\n  toPorts:\n  - ports: [{{port: '80', protocol: TCP}}]{http}"
            ),
        )
    };
    let post = |c: &Cluster| {
        let out = c.sb.try_sh(
            &app.netns,
            "curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST http://api.test/",
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let by_dns = |c: &Cluster| {
        let out = c.sb.try_sh(&app.netns, "curl -sk -m 5 https://alias.test/");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // The control: toFQDNs without L7 parts. The pod learns both names;
    // another SNI to the learned address, and a POST, get through.
    c.policy("app-fqdn-l7.yaml", &fqdn_policy(false));
    c.start();
    assert_eq!(c.dig(&app, "alias.test").0, "NOERROR");
    assert_eq!(c.dig(&app, "api.test").0, "NOERROR");
    assert_eq!(
        https(&c, &app, "evil.test", SITE_V4).as_deref(),
        Some(format!("sni=evil.test from {}", app.v4).as_str()),
        "control: another name to the learned address"
    );
    assert_eq!(post(&c), "501", "control: the POST reaches the site");

    // With serverNames and HTTP rules under the toFQDNs rules.
    c.policy("app-fqdn-l7.yaml", &fqdn_policy(true));
    eventually(Duration::from_secs(10), "the L7 parts in force", || {
        post(&c) == "403"
    });
    assert_eq!(
        by_dns(&c),
        format!("sni=alias.test from {}", app.v4),
        "the name the pod resolved, through the proxy"
    );
    assert_eq!(
        https(&c, &app, "evil.test", SITE_V4),
        None,
        "another name to the learned address is reset"
    );
    let out = c.sb.try_sh(
        &app.netns,
        "curl -s -m 5 -o /dev/null -w '%{http_code}' http://api.test/",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "GET / is allowed"
    );
    assert_eq!(post(&c), "403", "POST is not");
}
