//! A sandbox of network namespaces for privileged tests: a "node" namespace
//! (where the programs attach and the agent runs), one namespace per pod
//! joined to the node by a veth pair, and an "ext" namespace standing for
//! the world. Everything it creates (namespaces, helper processes, threads,
//! the pin directory, temporary files) goes when the [`Sandbox`] drops.
//!
//! ```text
//!  pod a (10.0.1.10, fd00:1::10) --veth tgp1-- node --veth ext0-- ext
//!  pod b (10.0.2.10, fd00:2::10) --veth tgp2--/          (203.0.113.10/.11,
//!                                                        198.51.100.10/.66/.200,
//!                                                        2001:db8::10)
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use policy::EndpointKey;

use crate::netns::NetnsGuard;
use crate::process::Helper;
use crate::wait::eventually;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn must(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    must(Command::new("ip").args(args))
}

/// A pod of the sandbox.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    /// Host-side veth in the node namespace.
    pub host_if: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
    pub gateway_v4: IpAddr,
}

/// The namespaces of one test and everything running in them.
pub struct Sandbox {
    /// `tg{pid}{tag}{n}`: the prefix of every name it creates.
    pub id: String,
    pub node: String,
    pub ext: String,
    pub pods: Vec<Pod>,
    /// `/sys/fs/bpf/{id}`, for the datapath under test.
    pub pin_dir: PathBuf,
    /// Every namespace, recorded before it is created, so a half-built
    /// sandbox is torn down too.
    namespaces: Vec<String>,
    /// Directories to remove: scratch space, per-namespace /etc/netns.
    dirs: Vec<PathBuf>,
    helpers: Vec<Helper>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

pub const EXT_V4: [&str; 5] = [
    "203.0.113.10",
    "203.0.113.11",
    "198.51.100.10",
    "198.51.100.66",
    "198.51.100.200",
];
pub const EXT_V6: &str = "2001:db8::10";

impl Sandbox {
    /// The node and ext namespaces, wired; pods come with [`Sandbox::pod`].
    pub fn new(tag: &str) -> Self {
        let id = format!(
            "tg{}{}{}",
            std::process::id() % 100000,
            tag,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let node = format!("{id}-node");
        let ext = format!("{id}-ext");
        let mut sb = Sandbox {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{id}")),
            id,
            node: node.clone(),
            ext: ext.clone(),
            pods: Vec::new(),
            namespaces: Vec::new(),
            dirs: Vec::new(),
            helpers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        sb.add_netns(&node);
        sb.add_netns(&ext);
        for ns in [&node, &ext] {
            sb.sh(ns, "ip link set lo up; sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
        }
        sb.sh(
            &node,
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
        );
        ip(&[
            "-n", &node, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns",
            &ext,
        ]);
        sb.sh(
            &node,
            "ip link set ext0 up; ip addr add 203.0.113.1/24 dev ext0; ip addr add 198.51.100.1/24 dev ext0; \
             ip -6 addr add 2001:db8::1/64 dev ext0 nodad",
        );
        let mut cmds = String::from("ip link set eth0 up; ");
        for a in EXT_V4 {
            cmds.push_str(&format!("ip addr add {a}/24 dev eth0; "));
        }
        cmds.push_str(&format!(
            "ip -6 addr add {EXT_V6}/64 dev eth0 nodad; ip route add default via 203.0.113.1; ip -6 route add default via 2001:db8::1"
        ));
        sb.sh(&ext, &cmds);
        sb
    }

    /// Adds pod number `n` (1-based).
    pub fn pod(&mut self, name: &str) -> Pod {
        let n = self.pods.len() + 1;
        let netns = format!("{}-{name}", self.id);
        let host_if = format!("tgp{n}");
        self.add_netns(&netns);
        self.sh(&netns, "ip link set lo up; sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
        ip(&[
            "-n", &self.node, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ]);
        self.sh(
            &self.node,
            &format!("ip link set {host_if} up; ip addr add 10.0.{n}.1/24 dev {host_if}; ip -6 addr add fd00:{n}::1/64 dev {host_if} nodad"),
        );
        self.sh(
            &netns,
            &format!(
                "ip link set eth0 up; ip addr add 10.0.{n}.10/24 dev eth0; ip -6 addr add fd00:{n}::10/64 dev eth0 nodad; \
                 ip route add default via 10.0.{n}.1; ip -6 route add default via fd00:{n}::1"
            ),
        );
        let pod = Pod {
            name: name.into(),
            netns,
            host_if,
            v4: format!("10.0.{n}.10").parse().unwrap(),
            v6: format!("fd00:{n}::10").parse().unwrap(),
            gateway_v4: format!("10.0.{n}.1").parse().unwrap(),
        };
        self.pods.push(pod.clone());
        pod
    }

    fn add_netns(&mut self, name: &str) {
        self.namespaces.push(name.to_string());
        ip(&["netns", "add", name]);
    }

    /// A directory of this sandbox, `$TMPDIR/{id}-{name}` (created if
    /// needed), removed with it.
    pub fn scratch(&mut self, name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{}-{name}", self.id));
        self.own_dir(&dir);
        dir
    }

    fn own_dir(&mut self, dir: &std::path::Path) {
        if !self.dirs.iter().any(|d| d == dir) {
            self.dirs.push(dir.to_path_buf());
        }
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }

    /// Makes `pod` resolve through `nameserver` (`/etc/netns/NS/resolv.conf`,
    /// which `ip netns exec` binds over /etc/resolv.conf).
    pub fn resolv_conf(&mut self, pod: &Pod, nameserver: &str) {
        let dir = PathBuf::from(format!("/etc/netns/{}", pod.netns));
        self.own_dir(&dir);
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\n"),
        )
        .unwrap();
    }

    /// Runs a shell command in a namespace; panics on failure.
    pub fn sh(&self, netns: &str, script: &str) -> Output {
        must(Command::new("ip").args(["netns", "exec", netns, "sh", "-c", script]))
    }

    /// Runs a shell command in a namespace; returns its output whatever happens.
    pub fn try_sh(&self, netns: &str, script: &str) -> Output {
        run(Command::new("ip").args(["netns", "exec", netns, "sh", "-c", script]))
    }

    /// Starts a background process in a namespace (a [`Helper`]: it and
    /// whatever it forks are stopped with the sandbox). Output is dropped.
    pub fn spawn(&mut self, netns: &str, script: &str) {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            netns,
            "sh",
            "-c",
            &format!("exec {script}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.helpers
            .push(Helper::spawn(format!("{script} in {netns}"), cmd));
    }

    /// An HTTP server (dual stack) on `port` in `netns`; waits until it answers.
    pub fn http_server(&mut self, netns: &str, port: u16, probe_addr: &str) {
        let dir = self.scratch("www");
        std::fs::write(dir.join("index.html"), "hello from tollgate test\n").unwrap();
        self.spawn(
            netns,
            &format!(
                "python3 -m http.server {port} --bind :: --directory {}",
                dir.display()
            ),
        );
        let url = url(probe_addr, port);
        eventually(
            Duration::from_secs(10),
            &format!("HTTP server at {url}"),
            || {
                self.try_sh(netns, &format!("curl -s -m 1 -o /dev/null {url}"))
                    .status
                    .success()
            },
        );
    }

    /// Whether `curl` from `pod` to `addr:port` succeeds (2 s timeout).
    pub fn curl(&self, pod: &Pod, addr: &str, port: u16) -> bool {
        self.try_sh(
            &pod.netns,
            &format!(
                "curl -s -m 2 -o /dev/null -w '%{{http_code}}' {}",
                url(addr, port)
            ),
        )
        .stdout
        .starts_with(b"200")
    }

    /// (status, A/AAAA answers) of `dig NAME [TYPE]` from `pod` through its resolv.conf.
    pub fn dig(&self, pod: &Pod, args: &str) -> (String, Vec<String>) {
        let out = self.try_sh(
            &pod.netns,
            &format!("dig +tries=1 +timeout=2 +noall +comments +answer {args}"),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("NO-ANSWER")
            .to_string();
        let answers = text
            .lines()
            .filter(|l| !l.starts_with(';'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 5 && (f[3] == "A" || f[3] == "AAAA")).then(|| f[4].to_string())
            })
            .collect();
        (status, answers)
    }

    /// Whether one ping from `pod` to `addr` is answered (1 s).
    pub fn ping(&self, pod: &Pod, addr: &str) -> bool {
        self.try_sh(&pod.netns, &format!("ping -c 1 -W 1 {addr}"))
            .status
            .success()
    }

    /// Runs `f` on a thread inside `netns`.
    pub fn in_netns<T: Send + 'static>(
        &self,
        netns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let netns = netns.to_string();
        std::thread::spawn(move || {
            let _guard = NetnsGuard::enter(&netns);
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }

    /// A TCP echo server at `addr` in `netns`, on a thread, until the sandbox drops.
    pub fn echo_server(&mut self, netns: &str, addr: SocketAddr) {
        let stop = self.stop.clone();
        let netns = netns.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let _guard = NetnsGuard::enter(&netns);
            let listener = TcpListener::bind(addr).expect("bind echo server");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let mut workers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let stop = stop.clone();
                        workers.push(std::thread::spawn(move || {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(Duration::from_millis(200)))
                                .unwrap();
                            let mut buf = [0u8; 256];
                            while !stop.load(Ordering::SeqCst) {
                                match conn.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if conn.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("echo server started");
        self.threads.push(handle);
    }

    /// A long-lived TCP stream from `pod` to `addr`: one echo round trip
    /// every 50 ms. Returns the stream's state, shared with its thread.
    pub fn stream(&mut self, pod: &Pod, addr: SocketAddr) -> Arc<StreamStats> {
        let stats = Arc::new(StreamStats::default());
        let s = stats.clone();
        let stop = self.stop.clone();
        let netns = pod.netns.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let _guard = NetnsGuard::enter(&netns);
            let mut conn = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(c) => c,
                Err(e) => {
                    ready_tx.send(Err(e.to_string())).unwrap();
                    return;
                }
            };
            conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            ready_tx.send(Ok(())).unwrap();
            let mut buf = [0u8; 8];
            while !stop.load(Ordering::SeqCst) && !s.stop.load(Ordering::SeqCst) {
                let ok = conn.write_all(b"ping1234").is_ok() && conn.read_exact(&mut buf).is_ok();
                if ok {
                    s.round_trips.fetch_add(1, Ordering::SeqCst);
                } else {
                    s.failed.store(true, Ordering::SeqCst);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("stream thread")
            .unwrap_or_else(|e| {
                panic!("stream from {} to {addr} could not connect: {e}", pod.name)
            });
        self.threads.push(handle);
        stats
    }

    /// nsd in the `ext` namespace, listening on `addrs` (added to ext's
    /// interface), serving `zones` as (origin, zone file). Waits until a
    /// query for `probe` (a name, its expected answer prefix) is answered.
    pub fn nsd(&mut self, addrs: &[&str], zones: &[(&str, PathBuf)], probe: (&str, &str)) {
        // One directory per instance: a test may run two (e.g. a rogue resolver).
        let dir = self.scratch(&format!("nsd-{}", addrs[0].replace(':', "_")));
        let d = dir.display();
        let mut conf = String::from("server:\n");
        for a in addrs {
            conf.push_str(&format!("  ip-address: {a}\n"));
        }
        conf.push_str(&format!(
            "  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  \
             xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  verbosity: 0\n  rrl-ratelimit: 0\n  \
             rrl-whitelist-ratelimit: 0\nremote-control:\n  control-enable: no\n"
        ));
        for (origin, file) in zones {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            std::fs::copy(file, dir.join(&name)).unwrap();
            conf.push_str(&format!(
                "zone:\n  name: \"{origin}\"\n  zonefile: \"{name}\"\n"
            ));
        }
        std::fs::write(dir.join("nsd.conf"), conf).unwrap();
        let ext = self.ext.clone();
        for a in addrs {
            let (len, family) = if a.contains(':') {
                (64, "-6 ")
            } else {
                (24, "")
            };
            let nodad = if a.contains(':') { " nodad" } else { "" };
            self.sh(
                &ext,
                &format!("ip {family}addr add {a}/{len} dev eth0{nodad} 2>/dev/null || true"),
            );
        }
        self.spawn(&ext, &format!("nsd -d -c {d}/nsd.conf"));
        let (name, want) = probe;
        let server = addrs[0];
        eventually(Duration::from_secs(10), "nsd answering", || {
            self.try_sh(
                &ext,
                &format!("dig +short +tries=1 +timeout=1 @{server} {name}"),
            )
            .stdout
            .starts_with(want.as_bytes())
        });
    }

    /// ifindex of an interface in the node namespace.
    pub fn ifindex(&self, interface: &str) -> u32 {
        let out = self.sh(
            &self.node,
            &format!("cat /sys/class/net/{interface}/ifindex"),
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// `pod` as the only local endpoint, `default/a` (the name the one-pod
    /// tests and benchmarks give it in their inventories), in the shape of
    /// the datapath's `Interfaces`: key -> (ifindex, host interface).
    pub fn only_endpoint(&self, pod: &Pod) -> BTreeMap<EndpointKey, (u32, String)> {
        let key = EndpointKey {
            namespace: "default".into(),
            name: "a".into(),
        };
        [(key, (self.ifindex(&pod.host_if), pod.host_if.clone()))].into()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Last started, first stopped: a server outlives its clients.
        while let Some(mut helper) = self.helpers.pop() {
            helper.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Pinned maps and links are plain bpffs files (what the datapath's
        // uninstall removes); the programs go with the veths below.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A long-lived stream's progress.
#[derive(Default)]
pub struct StreamStats {
    pub round_trips: AtomicU64,
    pub failed: AtomicBool,
    pub stop: AtomicBool,
}

impl StreamStats {
    /// Asserts that the stream keeps completing round trips for `window`.
    pub fn assert_flowing(&self, window: Duration, what: &str) {
        let before = self.round_trips.load(Ordering::SeqCst);
        // The passage of time is the point: the stream must keep flowing
        // for all of `window`, not merely once.
        std::thread::sleep(window);
        let after = self.round_trips.load(Ordering::SeqCst);
        assert!(
            !self.failed.load(Ordering::SeqCst),
            "{what}: the established stream broke"
        );
        assert!(
            after > before + 2,
            "{what}: the established stream stalled ({before} -> {after} round trips)"
        );
    }
}

/// `http://ADDR:PORT/`, brackets around an IPv6 address.
pub fn url(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("http://[{addr}]:{port}/")
    } else {
        format!("http://{addr}:{port}/")
    }
}
