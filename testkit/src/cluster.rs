//! The local-mode test cluster shared by the end-to-end suites: a sandbox
//! with nsd, HTTP sites on :80 and :443, pods that resolve through nsd, and
//! the `tollgate agent` binary in the node namespace, driven like a user
//! would (files, signals, `dig`, `curl`, `tollgate observe`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::process::Helper;
use crate::sandbox::{Pod, Sandbox};
use crate::testdata;
use crate::wait::until;

pub const RESOLVER: &str = "203.0.113.53";

/// How long the agent gets to become healthy, and to save its state and
/// exit on SIGTERM.
const AGENT_START: Duration = Duration::from_secs(20);
const AGENT_STOP: Duration = Duration::from_secs(10);

/// A sandbox with nsd, HTTP sites on :80 and :443, and the agent.
pub struct Cluster {
    pub sb: Sandbox,
    /// Policies, the endpoints file, the agent's state and log (removed
    /// with the sandbox).
    pub work: PathBuf,
    tollgate: PathBuf,
    agent: Option<Helper>,
    /// The running agent's source arguments and log file.
    source: Vec<std::ffi::OsString>,
    log_file: PathBuf,
}

impl Cluster {
    /// The sandbox, nsd and the sites (the agent starts with
    /// [`Cluster::start`]). `tollgate` is the binary under test: a suite
    /// passes `env!("CARGO_BIN_EXE_tollgate")`.
    pub fn new(tollgate: &str, tag: &str, pods: &[&str]) -> Self {
        let mut sb = Sandbox::new(tag);
        for p in pods {
            let pod = sb.pod(p);
            sb.resolv_conf(&pod, RESOLVER);
        }
        let work = sb.scratch("e2e");
        std::fs::create_dir_all(work.join("policies")).unwrap();
        sb.nsd(
            &[RESOLVER],
            &[
                ("test", testdata("zones/test.zone")),
                ("other", testdata("zones/other.zone")),
            ],
            ("api.test", "203.0.113.10"),
        );
        let ext = sb.ext.clone();
        sb.sh(
            &ext,
            "for a in 12 13 14; do ip addr add 203.0.113.$a/24 dev eth0; done",
        );
        sb.http_server(&ext, 80, "203.0.113.10");
        sb.http_server(&ext, 443, "203.0.113.10");
        let log_file = work.join("agent.log");
        let mut c = Cluster {
            sb,
            work,
            tollgate: tollgate.into(),
            agent: None,
            source: Vec::new(),
            log_file,
        };
        c.write_endpoints();
        c
    }

    pub fn pod(&self, name: &str) -> Pod {
        self.sb
            .pods
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .clone()
    }

    pub fn write_endpoints(&mut self) {
        let mut y = String::from("namespaces: [{name: prod}]\nendpoints:\n");
        for p in &self.sb.pods {
            y.push_str(&format!(
                "  - {{name: {0}, namespace: prod, labels: {{app: {0}}}, ips: [{1}, \"{2}\"], interface: {3}}}\n",
                p.name, p.v4, p.v6, p.host_if
            ));
        }
        let mut node: Vec<String> = vec!["203.0.113.1".into()];
        node.extend(self.sb.pods.iter().map(|p| p.gateway_v4.to_string()));
        y.push_str(&format!(
            "nodes:\n  - {{name: node, local: true, ips: [{}]}}\n",
            node.join(", ")
        ));
        std::fs::write(self.work.join("endpoints.yaml"), y).unwrap();
    }

    pub fn policy(&self, file: &str, yaml: &str) {
        // Write-then-rename, as kubectl-style tools and editors do.
        let tmp = self.work.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.work.join("policies").join(file)).unwrap();
    }

    /// The agent in local mode, on the files in `work`.
    pub fn start(&mut self) {
        self.start_local(&[]);
    }

    /// The agent in local mode on the files in `work`, with more flags.
    pub fn start_local(&mut self, flags: &[&str]) {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--policies".into(),
            self.work.join("policies").into(),
            "--endpoints".into(),
            self.work.join("endpoints.yaml").into(),
        ];
        args.extend(flags.iter().map(Into::into));
        self.start_with(&args);
    }

    /// The agent with these source arguments (and the test settings); waits
    /// until it is healthy.
    pub fn start_with(&mut self, source: &[std::ffi::OsString]) {
        self.log_file = self.work.join("agent.log");
        self.source = source.to_vec();
        self.agent = Some(self.spawn_agent());
        let healthy = until(AGENT_START, || {
            !self.agent_running()
                || Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{}", self.sb.node))
                    .args(["curl", "-sf", "-m", "1", "http://127.0.0.1:9963/healthz"])
                    .output()
                    .is_ok_and(|o| o.status.success())
        });
        assert!(
            healthy && self.agent_running(),
            "the agent did not become healthy within {AGENT_START:?}:\n{}",
            self.log()
        );
    }

    /// A second agent, started with the same settings while this one runs,
    /// as an upgrade would: once its log says it took the running agent's
    /// sockets over, it is the cluster's agent, and the previous one's
    /// process is returned (still running, for the caller to stop).
    pub fn start_successor(&mut self) -> Helper {
        let previous = self.agent.take().expect("a running agent to succeed");
        self.log_file = self.work.join("agent.successor.log");
        self.agent = Some(self.spawn_agent());
        let took_over = until(AGENT_START, || {
            !self.agent_running() || self.log().contains("took over the sockets")
        });
        assert!(
            took_over && self.agent_running(),
            "the successor did not take over within {AGENT_START:?}:\n{}",
            self.log()
        );
        previous
    }

    /// The agent process on `self.source`, logging to `self.log_file`.
    fn spawn_agent(&self) -> Helper {
        let log = std::fs::File::create(&self.log_file).unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.sb.node))
            .arg(&self.tollgate)
            .arg("agent")
            .args(&self.source)
            .arg("--state-dir")
            .arg(self.work.join("state"))
            .arg("--pin-dir")
            .arg(&self.sb.pin_dir)
            .args(["--min-ttl", "0", "--ttl-floor", "0"])
            .stdout(Stdio::null())
            .stderr(log);
        Helper::spawn("tollgate agent", cmd).grace(AGENT_STOP)
    }

    /// The running agent's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// The agent's process id, once started (nsenter execs it: this is the
    /// agent itself).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Helper::pid)
    }

    /// Whether the agent process is still alive.
    pub fn agent_running(&self) -> bool {
        self.agent.as_ref().is_some_and(Helper::is_running)
    }

    /// One value from the agent's /metrics (the line `NAME VALUE`).
    pub fn metric(&self, name: &str) -> u64 {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.sb.node))
            .args(["curl", "-sf", "-m", "2", "http://127.0.0.1:9963/metrics"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// SIGKILL (no chance to clean up or save) or SIGTERM (SIGKILL if it
    /// has not exited after 10 s).
    pub fn stop(&mut self, kill: bool) {
        if let Some(mut agent) = self.agent.take() {
            if kill {
                agent.kill();
            } else {
                agent.stop();
            }
        }
    }

    pub fn dig(&self, pod: &Pod, args: &str) -> (String, Vec<String>) {
        self.sb.dig(pod, args)
    }

    pub fn curl(&self, pod: &Pod, target: &str, port: u16) -> bool {
        self.sb.curl(pod, target, port)
    }

    /// Follows `tollgate observe ARGS` while doing `action`, until a line
    /// satisfies `seen`; returns the lines read so far. Nothing tells when
    /// the observer is subscribed, so the action is repeated (every second
    /// at most) until its event shows; panics after 15 s without it.
    pub fn observe_until(
        &self,
        args: &[&str],
        mut action: impl FnMut(),
        seen: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut cmd = Command::new(&self.tollgate);
        cmd.args(["observe", "--state-dir"])
            .arg(self.work.join("state"))
            .args(args)
            .stdout(Stdio::piped());
        let mut observer = Helper::spawn("tollgate observe", cmd);
        let stdout = observer.take_stdout().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut lines = Vec::new();
        let (mut found, mut ended) = (false, false);
        while !found && !ended && Instant::now() < deadline {
            action();
            let round = Instant::now() + Duration::from_secs(1);
            loop {
                match rx.recv_timeout(round.saturating_duration_since(Instant::now())) {
                    Ok(line) => {
                        found = seen(&line);
                        lines.push(line);
                        if found {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        ended = true;
                        break;
                    }
                }
            }
        }
        let status = observer.stop(); // its stdout closes: the reader ends
        let _ = reader.join();
        assert!(
            found,
            "`tollgate observe {}` showed no matching line (within 15 s; exited early: {ended}, \
             {status}); it showed {lines:?}",
            args.join(" ")
        );
        lines
    }
}

impl Drop for Cluster {
    /// The agent stops first (SIGTERM, as a node would stop it); the sandbox
    /// then removes the rest, the work directory included.
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// A `CiliumNetworkPolicy` named `name` in namespace prod, `spec` indented
/// under `spec:`.
pub fn cnp(name: &str, spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: prod}}\nspec:\n{body}")
}

/// Egress for `app`: DNS to the resolver for `names`, and those names on `ports`.
pub fn fqdn_policy(app: &str, names: &[&str], ports: &[u16]) -> String {
    let sel: Vec<String> = names
        .iter()
        .map(|n| {
            if n.contains('*') {
                format!("{{matchPattern: '{n}'}}")
            } else {
                format!("{{matchName: '{n}'}}")
            }
        })
        .collect();
    let sel = sel.join(", ");
    let ports: Vec<String> = ports
        .iter()
        .map(|p| format!("{{port: '{p}', protocol: TCP}}"))
        .collect();
    cnp(
        &format!("{app}-egress"),
        &format!(
            "endpointSelector: {{matchLabels: {{app: {app}}}}}\negress:\n- toCIDR: [{RESOLVER}/32]\n  toPorts:\n  \
             - ports: [{{port: '53', protocol: UDP}}, {{port: '53', protocol: TCP}}]\n    rules: {{dns: [{sel}]}}\n\
             - toFQDNs: [{sel}]\n  toPorts: [{{ports: [{}]}}]",
            ports.join(", ")
        ),
    )
}
