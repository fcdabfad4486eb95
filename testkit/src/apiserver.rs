//! A real etcd + kube-apiserver for one test (scripts/kube-testenv.sh; the
//! binaries are built offline and cached outside the repository), in this
//! network namespace or in a sandbox's node namespace, with `kubectl`
//! against it. Killed with SIGKILL on drop: a graceful API server shutdown
//! can stall once etcd is gone.

use std::cell::Cell;
use std::path::PathBuf;
use std::process::{Command, Output};

use crate::repo;

pub struct ApiServer {
    pub dir: PathBuf,
    /// Admin credentials.
    pub kubeconfig: PathBuf,
    /// User `tollgate-agent`: no rights until a test binds it.
    pub agent_kubeconfig: PathBuf,
    netns: Option<String>,
    applied: Cell<usize>,
}

impl ApiServer {
    /// Starts one in `dir`: in network namespace `netns` (default ports),
    /// or here on loopback with `ports` (etcd, API) when `netns` is `None`.
    pub fn start(dir: PathBuf, netns: Option<&str>, ports: (u16, u16)) -> Self {
        let _ = std::fs::remove_dir_all(&dir);
        let server = ApiServer {
            kubeconfig: dir.join("kubeconfig"),
            agent_kubeconfig: dir.join("agent.kubeconfig"),
            dir,
            netns: netns.map(String::from),
            applied: Cell::new(0),
        };
        let out = server
            .command(repo("scripts/kube-testenv.sh"))
            .arg(&server.dir)
            .env("ETCD_PORT", ports.0.to_string())
            .env("API_PORT", ports.1.to_string())
            .output()
            .expect("run kube-testenv.sh");
        assert!(
            out.status.success(),
            "the test API server did not start:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        server
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
        ]);
    }

    /// `kubectl apply` of a YAML text.
    pub fn apply(&self, yaml: &str) {
        self.applied.set(self.applied.get() + 1);
        let path = self.dir.join(format!("apply-{}.yaml", self.applied.get()));
        std::fs::write(&path, yaml).unwrap();
        self.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    }

    fn pids(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("pids"))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// Kills the API server (etcd stays): clients lose it mid-watch.
    pub fn kill_apiserver(&self) {
        let pids = self.pids();
        let apiserver = pids.last().expect("an API server pid");
        assert!(Command::new("kill")
            .args(["-9", apiserver])
            .status()
            .unwrap()
            .success());
    }

    /// Starts it again with the same certificates and etcd; waits until ready.
    pub fn restart_apiserver(&self) {
        let out = self
            .command(self.dir.join("start-apiserver.sh"))
            .output()
            .unwrap();
        let mut pids = std::fs::read_to_string(self.dir.join("pids")).unwrap();
        pids.push_str(&String::from_utf8_lossy(&out.stdout));
        std::fs::write(self.dir.join("pids"), pids).unwrap();
        let start = std::time::Instant::now();
        while !self
            .try_kubectl(&["get", "--raw", "/readyz"])
            .status
            .success()
        {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "the API server did not come back"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
