//! Tollgate on a real Kubernetes node (`scripts/realnode.sh`: kubelet,
//! containerd, CNI, kube-proxy, cluster DNS, the DaemonSet from `deploy/`
//! with this build's binary as `localhost/tollgate:dev`), checked the way a
//! user checks a cluster: with `kubectl` only.
//!
//! - the DaemonSet is Ready;
//! - a toolbox pod resolves a name through the kube-dns Service VIP
//!   (`kubectl exec ... dig @10.96.0.10`);
//! - `kubectl delete pod` of the agent: the DaemonSet re-creates it, Ready.
//!
//! Not here yet: policy checks through Service VIPs (a `toEndpoints` rule
//! for kube-dns, the DNS proxy seeing queries sent to 10.96.0.10). They come
//! with the datapath's Service translation (issue 12, item 2, another
//! change); until then a pod under a policy cannot reach a ClusterIP.
//!
//! Needs root. Not part of `scripts/test.sh` (and so not of CI) yet: whether
//! its time fits CI's budget is still to be decided (docs/realnode.md has
//! the figures). Run it with
//!
//! ```sh
//! sudo cargo test --test realnode -- --ignored
//! ```
//!
//! It reuses a node that is already up (and leaves it up); otherwise it
//! brings one up (`TOLLGATE_CNI` picks the layout) and takes it down again,
//! even when a check fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The node under test; takes it down on drop if this test brought it up.
struct RealNode {
    kubeconfig: PathBuf,
    started_here: bool,
}

impl RealNode {
    fn up() -> Self {
        assert!(
            is_root(),
            "the real-node test needs root: sudo cargo test --test realnode -- --ignored"
        );
        let script = repo("scripts/realnode.sh");
        let already = Command::new(&script)
            .arg("status")
            .output()
            .expect("run realnode.sh status")
            .status
            .success();
        let start = Instant::now();
        let out = Command::new(&script)
            .arg("up")
            .env("TOLLGATE_BIN", env!("CARGO_BIN_EXE_tollgate"))
            .output()
            .expect("run realnode.sh up");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "realnode.sh up failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "realnode.sh up took {:.0} s ({})",
            start.elapsed().as_secs_f64(),
            if already { "reused" } else { "from nothing" }
        );
        // The last two lines: NODE_NETNS=..., KUBECONFIG=...
        let lines: Vec<&str> = stdout.lines().collect();
        let last = |prefix: &str| {
            lines
                .iter()
                .rev()
                .take(2)
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in the last two lines of up:\n{stdout}"))
                .to_string()
        };
        assert!(
            !last("NODE_NETNS=").is_empty(),
            "the node has its own netns"
        );
        RealNode {
            kubeconfig: PathBuf::from(last("KUBECONFIG=")),
            started_here: !already,
        }
    }

    fn try_kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.try_kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Retries `check` until it returns `Some` or `within` has passed.
    fn eventually<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() > deadline {
                let pods = self.try_kubectl(&["get", "pods", "-A", "-o", "wide"]);
                panic!(
                    "{what}: not within {within:?}; pods:\n{}",
                    String::from_utf8_lossy(&pods.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn daemonset_ready(&self) -> Option<()> {
        let status = self.kubectl(&[
            "-n",
            "tollgate",
            "get",
            "ds",
            "tollgate",
            "-o",
            "jsonpath={.metadata.generation} {.status.observedGeneration} \
             {.status.desiredNumberScheduled} {.status.numberReady} {.status.updatedNumberScheduled}",
        ]);
        // The controller has seen the current spec, and every scheduled pod
        // is updated and Ready.
        let n: Vec<&str> = status.split(' ').collect();
        (n.len() == 5 && n[0] == n[1] && n[2] != "0" && n[2] == n[3] && n[3] == n[4]).then_some(())
    }

    fn agent_pods(&self) -> Vec<String> {
        self.kubectl(&[
            "-n",
            "tollgate",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=tollgate",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if self.started_here {
            let out = Command::new(repo("scripts/realnode.sh"))
                .arg("down")
                .output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                eprintln!("realnode.sh down failed: {out:?}");
            }
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A toolbox pod (bash, dig, curl, python3, nc) that sleeps; removed on drop.
struct ToolboxPod<'a> {
    node: &'a RealNode,
    name: String,
}

impl<'a> ToolboxPod<'a> {
    fn start(node: &'a RealNode, name: &str) -> Self {
        let _ = node.try_kubectl(&[
            "delete",
            "pod",
            name,
            "--ignore-not-found",
            "--grace-period=1",
            "--wait",
        ]);
        node.kubectl(&[
            "run",
            name,
            "--image=localhost/tollgate-toolbox:latest",
            "--image-pull-policy=Never",
            "--restart=Never",
            "--labels=app=realnode-test",
            "--command",
            "--",
            "sleep",
            "infinity",
        ]);
        node.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=120s",
        ]);
        ToolboxPod {
            node,
            name: name.to_string(),
        }
    }

    fn exec(&self, script: &str) -> Output {
        self.node
            .try_kubectl(&["exec", &self.name, "--", "sh", "-c", script])
    }
}

impl Drop for ToolboxPod<'_> {
    fn drop(&mut self) {
        let _ = self.node.try_kubectl(&[
            "delete",
            "pod",
            &self.name,
            "--grace-period=1",
            "--wait=false",
        ]);
    }
}

#[test]
#[ignore = "real node: sudo cargo test --test realnode -- --ignored (not in CI yet)"]
fn real_node() {
    let node = RealNode::up();
    let start = Instant::now();

    // 1. The DaemonSet from deploy/ is Ready on the node.
    node.eventually(
        "the tollgate DaemonSet is Ready",
        Duration::from_secs(120),
        || node.daemonset_ready(),
    );

    // 2. A pod resolves a name through the kube-dns Service VIP (kube-proxy
    //    DNATs 10.96.0.10 to the kube-dns pod). Retried: right after the
    //    endpoint appears, kube-proxy may still reject the VIP for a second.
    let pod = ToolboxPod::start(&node, "realnode-dig");
    let answer = node.eventually(
        "dig through 10.96.0.10 answers",
        Duration::from_secs(30),
        || {
            let out = pod.exec(
                "dig +short +time=2 +tries=1 @10.96.0.10 kubernetes.default.svc.cluster.local",
            );
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !text.is_empty()).then_some(text)
        },
    );
    assert_eq!(
        answer, "10.96.0.1",
        "kube-dns answers the kubernetes Service's name"
    );
    // The pod's resolv.conf points at the VIP too (kubelet's clusterDNS).
    let out = pod.exec("dig +short +search +time=2 +tries=2 kubernetes.default");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10.96.0.1",
        "the search path through the pod's resolv.conf"
    );

    // 2b. The README's idea on a real node: DNS allowed to kube-dns by its
    //     pods' labels, for one name. Queries go to the kube-dns ClusterIP
    //     (kubelet's clusterDNS); Tollgate sends them to a kube-dns pod
    //     before the policy decides, so the DNS rule applies: the allowed
    //     name is answered, another is REFUSED by the proxy. The control
    //     first: without the policy that other name resolves.
    let status = |name: &str| {
        let out = pod.exec(&format!(
            "dig +time=2 +tries=1 @10.96.0.10 {name} | grep -o 'status: [A-Z]*'"
        ));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        status("kube-dns.kube-system.svc.cluster.local"),
        "status: NOERROR",
        "control: without a policy every name resolves"
    );
    let policy = repo("tests/realnode-dns-policy.yaml");
    node.kubectl(&["apply", "-f", policy.to_str().unwrap()]);
    node.eventually(
        "the DNS policy refuses other names through the ClusterIP",
        Duration::from_secs(30),
        || (status("kube-dns.kube-system.svc.cluster.local") == "status: REFUSED").then_some(()),
    );
    assert_eq!(
        status("kubernetes.default.svc.cluster.local"),
        "status: NOERROR",
        "the allowed name is answered through the ClusterIP"
    );
    let out = pod
        .exec("dig +short +time=2 +tries=1 +tcp @10.96.0.10 kubernetes.default.svc.cluster.local");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10.96.0.1",
        "over TCP too"
    );
    node.kubectl(&["delete", "-f", policy.to_str().unwrap()]);
    drop(pod);

    // 3. The agent's pod deleted: the DaemonSet creates a new one, Ready.
    let before = node.agent_pods();
    assert_eq!(before.len(), 1, "one agent pod on one node: {before:?}");
    let old = before[0].split(' ').next().unwrap().to_string();
    node.kubectl(&[
        "-n",
        "tollgate",
        "delete",
        "pod",
        &old,
        "--wait=true",
        "--timeout=60s",
    ]);
    let new = node.eventually("a new agent pod", Duration::from_secs(60), || {
        let pods = node.agent_pods();
        pods.iter()
            .map(|p| p.split(' ').collect::<Vec<_>>())
            .find(|f| {
                f[0] != old && f.get(1) == Some(&"Running") && f.get(2).is_none_or(|d| d.is_empty())
            })
            .map(|f| f[0].to_string())
    });
    node.eventually(
        "the re-created agent is Ready",
        Duration::from_secs(60),
        || node.daemonset_ready(),
    );
    eprintln!(
        "real-node checks took {:.0} s (new agent pod {new})",
        start.elapsed().as_secs_f64()
    );
}
