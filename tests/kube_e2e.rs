//! End-to-end in Kubernetes mode (root): a real etcd + kube-apiserver, the
//! `tollgate agent --kubernetes` binary with only deploy/'s RBAC, pods in
//! their own network namespaces, nsd and HTTP sites — checked with `dig`,
//! `curl` and `kubectl`, as a cluster user would.
//!
//! The test is the kubelet and the CNI: it creates each pod's namespace and
//! veth, the Pod object with `nodeName`, and patches `status.podIPs`. The
//! API server runs inside the node's network namespace, where the agent is.

#[path = "../egress-bpf/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{eventually, privileged, Pod, Sandbox};

const RESOLVER: &str = "203.0.113.53";
/// A pod of another node: its IP lives in the "ext" namespace.
const REMOTE_POD_IP: &str = "198.51.100.66";
const SETTLE: Duration = Duration::from_secs(20);

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

struct KubeCluster {
    sb: Sandbox,
    dir: PathBuf,
    agent: Option<Child>,
    applied: usize,
}

impl KubeCluster {
    fn new(pods: &[&str]) -> Self {
        let mut sb = Sandbox::new("k8s");
        for p in pods {
            let pod = sb.pod(p);
            let dir = PathBuf::from(format!("/etc/netns/{}", pod.netns));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("resolv.conf"), format!("nameserver {RESOLVER}\n")).unwrap();
        }
        sb.nsd(
            &[RESOLVER],
            &[("test", repo("testdata/zones/test.zone"))],
            ("api.test", "203.0.113.10"),
        );
        let ext = sb.ext.clone();
        sb.sh(
            &ext,
            "for a in 12 13 14; do ip addr add 203.0.113.$a/24 dev eth0; done",
        );
        sb.http_server(&ext, 80, "203.0.113.10");
        sb.http_server(&ext, 443, "203.0.113.10");

        let dir = std::env::temp_dir().join(format!("{}-kube", sb.id));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", sb.node))
            .arg(repo("scripts/kube-testenv.sh"))
            .arg(&dir)
            .output()
            .expect("run kube-testenv.sh");
        assert!(
            out.status.success(),
            "the test API server did not start:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        KubeCluster {
            sb,
            dir,
            agent: None,
            applied: 0,
        }
    }

    fn pod(&self, name: &str) -> Pod {
        self.sb
            .pods
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .clone()
    }

    fn try_kubectl(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.sb.node))
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(self.dir.join("kubeconfig"))
            .args(args)
            .output()
            .unwrap()
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.try_kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&mut self, yaml: &str) {
        self.applied += 1;
        let path = self.dir.join(format!("apply-{}.yaml", self.applied));
        std::fs::write(&path, yaml).unwrap();
        self.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    }

    /// What a kubelet and a CNI plugin report once the pod is networked.
    fn report_pod_ips(&self, name: &str, ips: &[&str]) {
        let list: Vec<String> = ips
            .iter()
            .map(|ip| format!("{{\"ip\":\"{ip}\"}}"))
            .collect();
        let patch = format!(
            "{{\"status\":{{\"podIP\":\"{}\",\"podIPs\":[{}]}}}}",
            ips[0],
            list.join(",")
        );
        self.kubectl(&[
            "patch",
            "pod",
            "-n",
            "prod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    fn start_agent(&mut self) {
        let log = std::fs::File::create(self.dir.join("agent.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.sb.node))
            .arg(env!("CARGO_BIN_EXE_tollgate"))
            .args(["agent", "--kubernetes", "--node-name", "node-a"])
            .arg("--kubeconfig")
            .arg(self.dir.join("agent.kubeconfig"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--pin-dir")
            .arg(&self.sb.pin_dir)
            .args(["--min-ttl", "0", "--ttl-floor", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let start = Instant::now();
        while self.metrics().is_none() {
            if start.elapsed() > SETTLE {
                panic!("the agent did not become healthy:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn metrics(&self) -> Option<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.sb.node))
            .args(["curl", "-sf", "-m", "1", "http://127.0.0.1:9963/metrics"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn metric(&self, name: &str) -> u64 {
        let text = self.metrics().expect("metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn agent_running(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()))
    }

    /// Whether `curl` from the remote pod's address (in "ext") reaches `addr`.
    fn curl_from_remote_pod(&self, source: &str, addr: &str) -> bool {
        self.sb
            .try_sh(
                &self.sb.ext,
                &format!(
                    "curl -s -m 2 -o /dev/null -w '%{{http_code}}' --interface {source} http://{addr}/"
                ),
            )
            .stdout
            .starts_with(b"200")
    }

    fn pids(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("pids"))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect()
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        // SIGKILL: a graceful API server shutdown can stall once etcd is gone.
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        for p in &self.sb.pods {
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", p.netns));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pod_object(name: &str, labels: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: prod, labels: {labels}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, image: example.test/app}}]}}\n"
    )
}

const APP_EGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: app-egress, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toCIDR: [203.0.113.53/32]
    toPorts:
    - ports: [{port: '53', protocol: UDP}, {port: '53', protocol: TCP}]
      rules: {dns: [{matchName: api.test}]}
  - toFQDNs: [{matchName: api.test}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
";

/// Selects by a namespace label: pods named web in namespaces of team shop.
const TEAM_SHOP_EGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: team-shop-egress}
spec:
  endpointSelector:
    matchLabels: {io.cilium.k8s.namespace.labels.team: shop, app: web}
  egress:
  - toCIDR: [203.0.113.10/32]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

const WEB_INGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-ingress, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

#[test]
fn privileged_kube_mode_enforces_what_kubectl_applies() {
    if !privileged() {
        return;
    }
    let mut c = KubeCluster::new(&["app", "web"]);
    let (app, web) = (c.pod("app"), c.pod("web"));
    let web_netns = web.netns.clone();
    c.sb.http_server(&web_netns, 80, &web.v4.to_string());

    // The cluster: CRDs and the agent's RBAC from deploy/, bound to the
    // agent's user (so the agent proves it needs nothing more), a node, a
    // namespace with a team label, two local pods and one on another node.
    c.kubectl(&["apply", "-f", repo("deploy/crds").to_str().unwrap()]);
    c.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/ciliumnetworkpolicies.cilium.io",
        "crd/ciliumclusterwidenetworkpolicies.cilium.io",
    ]);
    c.kubectl(&[
        "apply",
        "-f",
        repo("deploy/namespace.yaml").to_str().unwrap(),
    ]);
    c.kubectl(&["apply", "-f", repo("deploy/rbac.yaml").to_str().unwrap()]);
    c.kubectl(&[
        "create",
        "clusterrolebinding",
        "tollgate-agent",
        "--clusterrole=tollgate",
        "--user=tollgate-agent",
    ]);
    c.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {team: shop}}\n");
    c.apply("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n");
    let mut addresses = vec!["203.0.113.1".to_string()];
    addresses.extend(c.sb.pods.iter().map(|p| p.gateway_v4.to_string()));
    let addresses: Vec<String> = addresses
        .iter()
        .map(|a| format!("{{\"type\":\"InternalIP\",\"address\":\"{a}\"}}"))
        .collect();
    c.kubectl(&[
        "patch",
        "node",
        "node-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!("{{\"status\":{{\"addresses\":[{}]}}}}", addresses.join(",")),
    ]);
    c.apply(&pod_object("app", "{app: app}", "node-a"));
    c.apply(&pod_object("web", "{app: web}", "node-a"));
    c.apply(&pod_object("client", "{app: client}", "node-b"));
    c.report_pod_ips("app", &[&app.v4.to_string(), &app.v6.to_string()]);
    c.report_pod_ips("web", &[&web.v4.to_string(), &web.v6.to_string()]);
    c.report_pod_ips("client", &[REMOTE_POD_IP]);
    c.apply(APP_EGRESS);
    c.start_agent();

    // 1. toFQDNs: the allowed name resolves and connects on its port only;
    //    other names are refused and their IPs stay closed.
    eventually(SETTLE, "app's DNS policy in force", || {
        c.sb.dig(&app, "evil.test").0 == "REFUSED"
    });
    let (status, answers) = c.sb.dig(&app, "api.test");
    assert_eq!(
        (status.as_str(), answers.as_slice()),
        ("NOERROR", &["203.0.113.10".to_string()][..])
    );
    assert!(
        c.sb.curl(&app, "203.0.113.10", 443),
        "api.test:443 is allowed"
    );
    assert!(!c.sb.curl(&app, "203.0.113.10", 80), "only 443 is allowed");
    assert!(
        !c.sb.curl(&app, "203.0.113.12", 443),
        "evil.test's IP stays closed"
    );

    // 2. A label change moves the pod out of the policy and back in.
    c.kubectl(&[
        "label",
        "pod",
        "-n",
        "prod",
        "app",
        "app=other",
        "--overwrite",
    ]);
    eventually(SETTLE, "app unrestricted once relabelled", || {
        c.sb.curl(&app, "203.0.113.12", 443)
    });
    assert_eq!(c.sb.dig(&app, "evil.test").0, "NOERROR");
    c.kubectl(&[
        "label",
        "pod",
        "-n",
        "prod",
        "app",
        "app=app",
        "--overwrite",
    ]);
    eventually(SETTLE, "app restricted again", || {
        !c.sb.curl(&app, "203.0.113.12", 443)
    });
    assert_eq!(c.sb.dig(&app, "evil.test").0, "REFUSED");

    // 3. A namespace-label selector follows the namespace's labels.
    c.apply(TEAM_SHOP_EGRESS);
    eventually(SETTLE, "web restricted by its namespace's team", || {
        !c.sb.curl(&web, "203.0.113.11", 80)
    });
    assert!(c.sb.curl(&web, "203.0.113.10", 80), "web may reach .10:80");
    c.kubectl(&["label", "namespace", "prod", "team=search", "--overwrite"]);
    eventually(
        SETTLE,
        "web unrestricted once prod leaves team shop",
        || c.sb.curl(&web, "203.0.113.11", 80),
    );

    // 4. A remote pod's identity for ingress: only the pod labelled client
    //    (on node-b) may connect to web; relabelled, it may not.
    c.apply(WEB_INGRESS);
    eventually(SETTLE, "web's ingress policy in force", || {
        !c.curl_from_remote_pod("198.51.100.10", &web.v4.to_string())
    });
    assert!(
        c.curl_from_remote_pod(REMOTE_POD_IP, &web.v4.to_string()),
        "the client pod on node-b reaches web"
    );
    c.kubectl(&[
        "label",
        "pod",
        "-n",
        "prod",
        "client",
        "app=stranger",
        "--overwrite",
    ]);
    eventually(SETTLE, "the relabelled remote pod is refused", || {
        !c.curl_from_remote_pod(REMOTE_POD_IP, &web.v4.to_string())
    });

    // 5. An invalid edit is reported on the object and changes nothing: the
    //    last valid version stays in force (never widened, never dropped).
    c.apply(&APP_EGRESS.replace("toFQDNs", "toFQDN"));
    eventually(SETTLE, "an InvalidPolicy event on app-egress", || {
        let out = c.try_kubectl(&[
            "get",
            "events",
            "-n",
            "prod",
            "--field-selector",
            "involvedObject.name=app-egress",
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("InvalidPolicy") && text.contains("unknown field `toFQDN`")
    });
    assert_eq!(c.metric("tollgate_kube_invalid_policies"), 1);
    assert_eq!(c.sb.dig(&app, "evil.test").0, "REFUSED");
    assert_eq!(c.sb.dig(&app, "api.test").0, "NOERROR");
    assert!(
        c.sb.curl(&app, "203.0.113.10", 443),
        "the last valid version still allows api.test:443"
    );
    assert!(!c.sb.curl(&app, "203.0.113.12", 443));
    c.apply(APP_EGRESS);

    // 6. The API server goes away: enforcement stays, the agent stays up,
    //    and it picks up changes once the server is back.
    let apiserver = c.pids()[1].clone();
    assert!(Command::new("kill")
        .args(["-9", &apiserver])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        c.agent_running(),
        "the agent survives the API server going away:\n{}",
        c.log()
    );
    assert_eq!(c.sb.dig(&app, "evil.test").0, "REFUSED");
    assert!(c.sb.curl(&app, "203.0.113.10", 443));
    assert!(!c.sb.curl(&app, "203.0.113.12", 443));
    assert!(c.metric("tollgate_kube_watch_errors_total") > 0);
    let restarted = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.sb.node))
        .arg(c.dir.join("start-apiserver.sh"))
        .output()
        .unwrap();
    let mut pids = std::fs::read_to_string(c.dir.join("pids")).unwrap();
    pids.push_str(&String::from_utf8_lossy(&restarted.stdout));
    std::fs::write(c.dir.join("pids"), pids).unwrap();
    eventually(SETTLE, "the API server back", || {
        c.try_kubectl(&["get", "--raw", "/readyz"]).status.success()
    });

    // 7. A policy delete (seen through the re-established watch).
    c.kubectl(&["delete", "cnp", "-n", "prod", "app-egress"]);
    eventually(
        Duration::from_secs(60),
        "app unrestricted once its policy is deleted",
        || c.sb.curl(&app, "203.0.113.12", 443),
    );
    assert_eq!(c.sb.dig(&app, "evil.test").0, "NOERROR");
    assert!(c.agent_running(), "{}", c.log());
}
