//! A real etcd + kube-apiserver for one test, in this network namespace or
//! in a sandbox's node namespace, with `kubectl` against it.
//! `scripts/kube-testenv.sh --prepare` writes the certificates, kubeconfigs
//! and each server's command line (the binaries are built offline and
//! cached outside the repository); the two servers are [`Helper`]s of the
//! test, so they stop with it: the API server first (it stalls on SIGTERM
//! once etcd is gone), then etcd.

use std::cell::Cell;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::process::Helper;
use crate::repo;
use crate::wait::until;

/// How long a fresh or restarted API server gets to become ready.
const READY: Duration = Duration::from_secs(60);

pub struct ApiServer {
    pub dir: PathBuf,
    /// Admin credentials.
    pub kubeconfig: PathBuf,
    /// User `tollgate-agent`: no rights until a test binds it.
    pub agent_kubeconfig: PathBuf,
    netns: Option<String>,
    applied: Cell<usize>,
    apiserver: Option<Helper>,
    etcd: Option<Helper>,
}

impl ApiServer {
    /// Starts one in `dir` (emptied first): in network namespace `netns`
    /// (default ports), or here on loopback with `ports` (etcd, API) when
    /// `netns` is `None`. Waits until it is ready.
    pub fn start(dir: PathBuf, netns: Option<&str>, ports: (u16, u16)) -> Self {
        let _ = std::fs::remove_dir_all(&dir);
        let mut server = ApiServer {
            kubeconfig: dir.join("kubeconfig"),
            agent_kubeconfig: dir.join("agent.kubeconfig"),
            dir,
            netns: netns.map(String::from),
            applied: Cell::new(0),
            apiserver: None,
            etcd: None,
        };
        let out = Command::new(repo("scripts/kube-testenv.sh"))
            .arg("--prepare")
            .arg(&server.dir)
            .env("ETCD_PORT", ports.0.to_string())
            .env("API_PORT", ports.1.to_string())
            .output()
            .expect("run kube-testenv.sh");
        assert!(
            out.status.success(),
            "kube-testenv.sh --prepare failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        server.etcd = Some(server.spawn("etcd"));
        server.start_apiserver();
        server
    }

    /// `DIR/run-NAME.sh` (which execs the server) as a helper in the
    /// server's network namespace, its output appended to `DIR/NAME.log`.
    fn spawn(&self, name: &str) -> Helper {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap();
        let mut cmd = self.command(self.dir.join(format!("run-{name}.sh")));
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        Helper::spawn(name, cmd)
    }

    fn start_apiserver(&mut self) {
        self.apiserver = Some(self.spawn("apiserver"));
        let ready = until(READY, || {
            self.apiserver.as_ref().is_some_and(Helper::is_running)
                && self
                    .try_kubectl(&["get", "--raw", "/readyz"])
                    .status
                    .success()
        });
        assert!(
            ready,
            "the API server was not ready within {READY:?}; {}:\n{}",
            self.dir.join("apiserver.log").display(),
            self.log_tail("apiserver.log")
        );
    }

    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `program`, run in the server's network namespace.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    pub fn try_kubectl(&self, args: &[&str]) -> Output {
        self.command("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.try_kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// deploy/'s CRDs, applied and established.
    pub fn install_crds(&self) {
        self.kubectl(&["apply", "-f", repo("deploy/crds").to_str().unwrap()]);
        self.kubectl(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout=30s",
            "crd/ciliumnetworkpolicies.cilium.io",
            "crd/ciliumclusterwidenetworkpolicies.cilium.io",
            "crd/ciliumcidrgroups.cilium.io",
        ]);
    }

    /// `kubectl apply` of a YAML text.
    pub fn apply(&self, yaml: &str) {
        self.applied.set(self.applied.get() + 1);
        let path = self.dir.join(format!("apply-{}.yaml", self.applied.get()));
        std::fs::write(&path, yaml).unwrap();
        self.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    }

    /// Kills the API server with SIGKILL (etcd stays): clients lose it
    /// mid-watch.
    pub fn kill_apiserver(&mut self) {
        self.apiserver.take().expect("an API server to kill").kill();
    }

    /// Starts it again with the same certificates and etcd; waits until
    /// ready.
    pub fn restart_apiserver(&mut self) {
        assert!(self.apiserver.is_none(), "the API server is still running");
        self.start_apiserver();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.stop();
        }
        if let Some(mut etcd) = self.etcd.take() {
            etcd.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
