//! The agent on a large cluster, against a real etcd + kube-apiserver
//! (issue 18): a generated cluster of NODES nodes and PODS pods in a few
//! hundred namespaces, POLICIES CiliumNetworkPolicies of the kinds users
//! write, 50 of the pods on the measured agent's node (each with a veth
//! and a route, as a CNI leaves them). Then churn: pod label changes at
//! 100/s and a policy edit every second.
//!
//! Reported: the agent's initial sync (start to the local pods' identities
//! in the datapath), its RSS and CPU, and under churn the time from an
//! API write (acknowledged) to the datapath showing it, read from the
//! pinned `tg_ipcache` map the programs use: for a remote pod's relabel
//! (its address gets the new label set's identity) and for a policy edit
//! on a local pod (a new `toCIDR` /32 gets its CIDR identity). Then the
//! API server is killed for 30 s and restarted, and the first write after
//! it is timed the same way (catch-up). No missed update: right after
//! the churn and at the end, the maps must equal a compile from scratch of
//! the cluster as listed then (exit 1 if not).
//!
//! Run with `sudo ./scripts/bench-scale.sh [NODES PODS POLICIES CHURN_SECS]`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use testkit::{ApiServer, NetnsGuard};

const NETNS: &str = "tgscale";
const LOCAL_NODE: &str = "node-0000";
const LOCAL_PODS: usize = 50;
const NAMESPACES: usize = 300;
const APPS_PER_NAMESPACE: usize = 12;
/// Writes in flight while loading the cluster.
const LOAD_CONCURRENCY: usize = 48;
/// The last pods, relabelled only by the remote probe.
const PROBE_PODS: usize = 1_000;

fn main() -> std::process::ExitCode {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("NODES PODS POLICIES CHURN_SECS"))
        .collect();
    let nodes = args.first().copied().unwrap_or(2_000);
    let pods = args.get(1).copied().unwrap_or(50_000);
    let policies = args.get(2).copied().unwrap_or(5_000);
    let churn_secs = args.get(3).copied().unwrap_or(60);
    assert!(
        nodes >= 2 && pods > LOCAL_PODS + PROBE_PODS + 1,
        "at least 2 nodes and {} pods",
        LOCAL_PODS + PROBE_PODS + 2
    );

    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/tollgate");
    let work = std::env::temp_dir().join("tgscale");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let _net = Netns::create(NETNS);
    let mut api = ApiServer::start(work.join("kube"), Some(NETNS), (2379, 6443));
    api.install_crds();
    let _in_node = NetnsGuard::enter(NETNS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(tollgate::kube::client_from_kubeconfig(&api.kubeconfig))
        .unwrap();
    let cluster = Generated::new(nodes, pods, policies);

    let started = Instant::now();
    rt.block_on(cluster.load(&client));
    println!(
        "loaded {nodes} nodes, {pods} pods in {NAMESPACES} namespaces, {policies} policies in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    cluster.plumb_local_pods();

    // The agent, as the DaemonSet runs it, in the node's namespace.
    let pin_dir = PathBuf::from("/sys/fs/bpf/tgscale");
    uninstall(&pin_dir);
    let agent = Agent::start(&bin, &api.kubeconfig, &work, &pin_dir);
    let datapath = Datapath::wait_for(&pin_dir, Duration::from_secs(60));
    let first_local = cluster.pod_ip(0);
    let sync = agent.started.elapsed();
    // A pod's identity, not a reserved one (below 256: world, ...).
    let synced = until(Duration::from_secs(300), || {
        datapath.identity(first_local).is_some_and(|id| id >= 256)
    });
    assert!(synced, "the local pods never reached the datapath");
    let sync_time = agent.started.elapsed();
    let (rss_sync, cpu_sync) = (agent.rss_mib(), agent.cpu_secs());
    println!(
        "initial sync: {:.2} s (datapath open after {:.2} s); RSS {rss_sync:.0} MiB (peak {:.0}), CPU {cpu_sync:.1} s",
        sync_time.as_secs_f64(),
        sync.as_secs_f64(),
        agent.peak_rss_mib()
    );

    // Churn, with probes.
    let (remote, local, changes) = rt.block_on(cluster.churn(&client, &datapath, churn_secs));
    let cpu_churn = agent.cpu_secs() - cpu_sync;
    println!(
        "churn: {changes} changes in {churn_secs} s; agent CPU {cpu_churn:.1} s ({:.2} ms per change); RSS {:.0} MiB (peak {:.0})",
        1000.0 * cpu_churn / changes.max(1) as f64,
        agent.rss_mib(),
        agent.peak_rss_mib()
    );
    report("remote pod relabel -> its identity in tg_ipcache", &remote);
    report(
        "policy edit -> the new toCIDR's identity in tg_ipcache",
        &local,
    );
    // No missed update under the churn, before the outage below ends in a
    // relist (which would repair a missed event; a watch may still relist
    // on its own during the churn, on a 410).
    let after_churn = rt.block_on(missed_updates(&client, &datapath, SETTLE_LIMIT));
    after_churn.print("after the churn");

    // The API server away for 30 s, then back: the first write after.
    api.kill_apiserver();
    std::thread::sleep(Duration::from_secs(30));
    api.restart_apiserver();
    let back = Instant::now();
    let catch_up = rt.block_on(cluster.probe_policy(&client, &datapath, 60_000, CATCH_UP_LIMIT));
    println!(
        "after 30 s without the API server: a policy edit reached the datapath {:.0} ms after the write ({:.1} s after the API server was back)",
        catch_up.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        back.elapsed().as_secs_f64()
    );

    // And after the outage and its relist.
    let at_end = rt.block_on(missed_updates(&client, &datapath, SETTLE_LIMIT));
    at_end.print("at the end");
    agent.stop();
    if after_churn.differ.is_some() || at_end.differ.is_some() {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// How long the agent may take to reflect the last writes before the
/// maps are compared with a compile from scratch.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// What [`missed_updates`] found.
struct MapCheck {
    /// How long listing the cluster and compiling it took.
    compiled: Duration,
    /// How long after that the maps were last compared.
    settled: Duration,
    /// `None`: equal; else which maps differ, by how many entries.
    differ: Option<String>,
}

impl MapCheck {
    fn print(&self, when: &str) {
        let compiled = format!(
            "listed and compiled in {:.1} s",
            self.compiled.as_secs_f64()
        );
        match &self.differ {
            None => println!(
                "{when}: maps == a from-scratch compile of the cluster ({compiled}; equal {:.1} s after that)",
                self.settled.as_secs_f64()
            ),
            Some(differ) => println!(
                "{when}: maps != a from-scratch compile of the cluster ({compiled}): {differ} still differ {:.0} s after that",
                self.settled.as_secs_f64()
            ),
        }
    }
}

/// Compares the agent's maps with a compile from scratch of the cluster as
/// listed now (the one-shot listing, a fresh inventory, no memories or
/// caches), polling up to `limit` for the agent to reflect the last
/// writes. The FQDN map is left out: it holds
/// what DNS taught (nothing here), not the policy. The local pods' veths
/// are the ones the maps' endpoint entries name: finding veths is not
/// what this checks. Limits: the listing is read with the agent's own
/// snapshot code (a bug shared by both sides would not show), and an
/// invalid policy edit would differ (the agent keeps the last valid
/// version, a fresh listing cannot know it; the benchmark makes none).
async fn missed_updates(client: &Client, datapath: &Datapath, limit: Duration) -> MapCheck {
    use egress_bpf::Datapath as _;
    let start = Instant::now();
    let current = || {
        let mut state = datapath.0.current().expect("read the maps");
        state.fqdn.clear();
        state
    };
    let mut snap = tollgate::kube::snapshot(client, LOCAL_NODE)
        .await
        .expect("list the cluster");
    snap.inventory.cluster_name = Some(policy::inventory::DEFAULT_CLUSTER.into());
    let inventory = policy::Inventory::from_spec(snap.inventory).expect("a valid inventory");
    // The local pods' veths, as the maps' endpoint entries name them.
    let veths = |state: &egress_bpf::DesiredState| -> egress_bpf::desired::Interfaces {
        snap.local
            .iter()
            .filter_map(|key| {
                let endpoint = inventory.endpoint(key)?;
                let (ifindex, _) = state
                    .addresses
                    .keys()
                    .find(|(_, ip)| endpoint.ips.contains(ip))?;
                let name = state.endpoints.get(ifindex)?.interface.clone();
                Some((key.clone(), (*ifindex, name)))
            })
            .collect()
    };
    // Compiled for every local pod: a pod whose entries are late yet would
    // be compiled as remote and then differ once they came.
    let mut interfaces = veths(&current());
    while interfaces.len() < snap.local.len() && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        interfaces = veths(&current());
    }
    let resolved = policy::PolicySet::from_shared(snap.policies).resolve_for(
        &inventory,
        policy::ResolveOptions::default(),
        |e| interfaces.contains_key(&e.key),
    );
    let expected = egress_bpf::desired::compile(&resolved, &inventory, &interfaces).state;
    let compiled = start.elapsed();
    // A local pod without its endpoint entries in the maps is a missed
    // update too (compiled without a veth, it would not differ).
    let compare = || {
        let state = current();
        let without_veth = snap.local.len() - veths(&state).len();
        (state.diff(&expected), without_veth)
    };
    let (mut diff, mut without_veth) = compare();
    while (!diff.is_empty() || without_veth > 0) && start.elapsed() < compiled + limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (diff, without_veth) = compare();
    }
    let settled = start.elapsed() - compiled;
    if diff.is_empty() && without_veth == 0 {
        return MapCheck {
            compiled,
            settled,
            differ: None,
        };
    }
    let differ: Vec<String> = (without_veth > 0)
        .then(|| format!("{without_veth} local pods without endpoint entries"))
        .into_iter()
        .chain(
            diff.changes_by_map()
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(map, n)| format!("{map} {n} entries")),
        )
        .collect();
    MapCheck {
        compiled,
        settled,
        differ: Some(differ.join(", ")),
    }
}

fn report(what: &str, samples: &[Option<Duration>]) {
    let mut ms: Vec<f64> = samples
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let missed = samples.iter().filter(|s| s.is_none()).count();
    let q = |f: f64| {
        ms.get(((ms.len() as f64 - 1.0) * f).round() as usize)
            .copied()
    };
    println!(
        "{what}: {} probes, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {missed} not seen within {PROBE_LIMIT:?}",
        samples.len(),
        q(0.5).unwrap_or(f64::NAN),
        q(0.99).unwrap_or(f64::NAN),
        ms.last().copied().unwrap_or(f64::NAN),
    );
}

/// Polls `ok` every 5 ms until it holds or `limit` passes.
fn until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    ok()
}

/// The node's network namespace, removed on drop.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Netns(name.into())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "{script}");
}

/// The pinned datapath the agent writes, read with single lookups.
struct Datapath(egress_bpf::KernelDatapath);

impl Datapath {
    fn wait_for(pin_dir: &Path, limit: Duration) -> Self {
        let opened = until(limit, || pin_dir.join("maps/tg_ipcache").exists());
        assert!(
            opened,
            "the agent pinned no datapath under {}",
            pin_dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
        Datapath(egress_bpf::KernelDatapath::open(pin_dir).expect("open the pinned maps"))
    }

    fn identity(&self, ip: IpAddr) -> Option<u32> {
        self.0.identity_of(ip).ok().flatten()
    }
}

struct Agent {
    child: Child,
    started: Instant,
    pin_dir: PathBuf,
}

impl Agent {
    fn start(bin: &Path, kubeconfig: &Path, work: &Path, pin_dir: &Path) -> Self {
        let log = std::fs::File::create(work.join("agent.log")).unwrap();
        let child = Command::new(bin)
            .args([
                "agent",
                "--kubernetes",
                "--node-name",
                LOCAL_NODE,
                "--kubeconfig",
            ])
            .arg(kubeconfig)
            .arg("--pin-dir")
            .arg(pin_dir)
            .arg("--state-dir")
            .arg(work.join("state"))
            .env(
                "RUST_LOG",
                std::env::var("TG_SCALE_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        Agent {
            child,
            started: Instant::now(),
            pin_dir: pin_dir.into(),
        }
    }

    fn status_kib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") / 1024.0
    }

    fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:") / 1024.0
    }

    /// User + system CPU seconds so far.
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / hz
    }

    fn stop(self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }
}

/// However the benchmark ends, the agent goes and its pins with it: a
/// stray agent would write the next run's maps.
impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let stopped = until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        uninstall(&self.pin_dir);
    }
}

fn uninstall(pin_dir: &Path) {
    let _ = Command::new(env!("CARGO_MANIFEST_DIR").to_string() + "/target/release/tollgate")
        .args(["datapath", "uninstall", "--pin-dir"])
        .arg(pin_dir)
        .output();
}

/// The generated cluster: who is where, with which labels.
struct Generated {
    nodes: usize,
    pods: usize,
    policies: usize,
}

fn resource<K: kube::Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

fn cnp_resource() -> ApiResource {
    ApiResource {
        group: "cilium.io".into(),
        version: "v2".into(),
        api_version: "cilium.io/v2".into(),
        kind: "CiliumNetworkPolicy".into(),
        plural: "ciliumnetworkpolicies".into(),
    }
}

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("a valid object")
}

impl Generated {
    fn new(nodes: usize, pods: usize, policies: usize) -> Self {
        Generated {
            nodes,
            pods,
            policies,
        }
    }

    fn namespace(i: usize) -> String {
        format!("ns-{:03}", i % NAMESPACES)
    }

    fn node_of(&self, pod: usize) -> String {
        if pod < LOCAL_PODS {
            LOCAL_NODE.into()
        } else {
            format!("node-{:04}", 1 + pod % (self.nodes - 1))
        }
    }

    /// Pods from 10.64.0.0/10, one address each.
    fn pod_ip(&self, pod: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + pod as u32 + 1))
    }

    /// The labels of pod `i`: a Deployment's (app, tier, version, team,
    /// pod-template-hash), so pods of one app share an identity.
    fn pod_labels(&self, i: usize) -> Value {
        let app = (i / NAMESPACES) % APPS_PER_NAMESPACE;
        json!({
            "app": format!("app-{app}"),
            "tier": (["web", "api", "db", "cache"][app % 4]),
            "version": "v1",
            "team": format!("team-{}", (i % NAMESPACES) % 20),
            "pod-template-hash": format!("{:08x}", (i % NAMESPACES) * 31 + app),
        })
    }

    fn pod_name(i: usize) -> String {
        format!("pod-{i:05}")
    }

    async fn load(&self, client: &Client) {
        let ns_api: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &resource::<k8s_openapi::api::core::v1::Namespace>(),
        );
        create_all(
            (0..NAMESPACES).map(|i| {
                object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                    "name": Self::namespace(i),
                    "labels": {"team": format!("team-{}", i % 20), "env": (["prod", "staging"][i % 2])}}}))
            }),
            |o| {
                let api = ns_api.clone();
                async move { api.create(&PostParams::default(), &o).await.map(|_| ()) }
            },
        )
        .await;
        let node_api: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &resource::<k8s_openapi::api::core::v1::Node>(),
        );
        create_all(
            (0..self.nodes).map(|i| {
                let ip = Ipv4Addr::from(0xac10_0000 + i as u32 + 1);
                object(json!({"apiVersion": "v1", "kind": "Node", "metadata": {
                    "name": format!("node-{i:04}"),
                    "labels": {"kubernetes.io/hostname": format!("node-{i:04}"),
                               "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
                    "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]}}))
            }),
            |o| create_with_status(node_api.clone(), o),
        )
        .await;
        let pod_resource = resource::<k8s_openapi::api::core::v1::Pod>();
        create_all(
            (0..self.pods).map(|i| {
                object(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": Self::pod_name(i), "namespace": Self::namespace(i),
                    "labels": self.pod_labels(i)},
                    "spec": {"nodeName": self.node_of(i), "serviceAccountName": "default",
                             "containers": [{"name": "app", "image": "example.test/app",
                                             "ports": [{"name": "http", "containerPort": 8080}]}]},
                    "status": {"phase": "Running", "podIP": self.pod_ip(i).to_string(),
                               "podIPs": [{"ip": self.pod_ip(i).to_string()}]}}))
            }),
            |o| {
                let api: Api<DynamicObject> = Api::namespaced_with(
                    client.clone(),
                    o.metadata.namespace.as_deref().unwrap(),
                    &pod_resource,
                );
                create_with_status(api, o)
            },
        )
        .await;
        let cnp = cnp_resource();
        create_all((0..self.policies).map(|i| self.policy(i)), |o| {
            let api: Api<DynamicObject> = Api::namespaced_with(
                client.clone(),
                o.metadata.namespace.as_deref().unwrap(),
                &cnp,
            );
            async move { api.create(&PostParams::default(), &o).await.map(|_| ()) }
        })
        .await;
    }

    /// Policy `i`, of the kinds users write: per namespace a DNS policy
    /// (every pod may ask kube-dns), then app-to-app ingress, toFQDNs
    /// egress and CIDR egress in turn.
    fn policy(&self, i: usize) -> DynamicObject {
        let ns = Self::namespace(i);
        let name = format!("policy-{i:05}");
        let app = |k: usize| format!("app-{}", k % APPS_PER_NAMESPACE);
        let spec = if i < NAMESPACES {
            json!({"endpointSelector": {}, "egress": [{
                "toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s-app": "kube-dns"}}],
                "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}], "rules": {"dns": [{"matchPattern": "*"}]}}]}]})
        } else {
            match i % 3 {
                0 => json!({"endpointSelector": {"matchLabels": {"app": app(i)}}, "ingress": [{
                    "fromEndpoints": [{"matchLabels": {"app": app(i + 1)}}],
                    "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}),
                1 => json!({"endpointSelector": {"matchLabels": {"app": app(i)}}, "egress": [{
                    "toFQDNs": [{"matchName": format!("api-{}.example.com", i % 500)}],
                    "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]}),
                _ => json!({"endpointSelector": {"matchLabels": {"app": app(i)}}, "egress": [{
                    "toCIDR": [format!("203.0.{}.0/24", i % 256)],
                    "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}]}]}),
            }
        };
        object(
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}),
        )
    }

    /// A veth per local pod with a route to its address, as a CNI leaves
    /// them (the agent finds a pod's interface by that route).
    fn plumb_local_pods(&self) {
        let mut script = String::new();
        for i in 0..LOCAL_PODS {
            script.push_str(&format!(
                "link add tgs{i} type veth peer name tgsp{i}\nlink set tgs{i} up\nlink set tgsp{i} up\nroute add {}/32 dev tgs{i}\n",
                self.pod_ip(i)
            ));
        }
        let path = std::env::temp_dir().join("tgscale/plumb.ip");
        std::fs::write(&path, script).unwrap();
        sh(&format!("ip -n {NETNS} -batch {}", path.display()));
    }

    /// `secs` seconds of churn: 100 pod label changes a second (version
    /// v1 <-> v2 on remote pods, written at a steady rate whatever the
    /// probes do) and, each second, two probes: a remote pod given a label
    /// set of its own, and a policy edit on the local pods' app. The probes'
    /// latencies (`None`: the write failed or was not seen in time) and the
    /// number of changes written.
    async fn churn(
        &self,
        client: &Client,
        datapath: &Datapath,
        secs: usize,
    ) -> (Vec<Option<Duration>>, Vec<Option<Duration>>, usize) {
        let end = Instant::now() + Duration::from_secs(secs as u64);
        let written = std::sync::atomic::AtomicUsize::new(0);
        let background = async {
            let pod_resource = resource::<k8s_openapi::api::core::v1::Pod>();
            let tick = tokio::sync::Mutex::new(tokio::time::interval(Duration::from_millis(10)));
            let writes = stream::iter(0usize..)
                .then(|k| {
                    let tick = &tick;
                    async move {
                        tick.lock().await.tick().await;
                        k
                    }
                })
                .take_while(|_| std::future::ready(Instant::now() < end))
                .map(|k| {
                    // Never the probes' pods (the last PROBE_PODS).
                    let span = self.pods - LOCAL_PODS - PROBE_PODS;
                    let i = LOCAL_PODS + (k * 7919) % span;
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(client.clone(), &Self::namespace(i), &pod_resource);
                    let version = if (k / span).is_multiple_of(2) {
                        "v2"
                    } else {
                        "v1"
                    };
                    let written = &written;
                    async move {
                        let patch = json!({"metadata": {"labels": {"version": version}}});
                        if api
                            .patch(
                                &Self::pod_name(i),
                                &PatchParams::default(),
                                &Patch::Merge(patch),
                            )
                            .await
                            .is_ok()
                        {
                            written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
                .buffer_unordered(32);
            writes.for_each(|()| std::future::ready(())).await;
        };
        let probes = async {
            let (mut remote, mut local) = (Vec::new(), Vec::new());
            let mut s = 0;
            while Instant::now() < end {
                let second = Instant::now();
                let (r, l) = tokio::join!(
                    self.probe_remote(client, datapath, s),
                    self.probe_policy(client, datapath, s, PROBE_LIMIT)
                );
                for (probe, out) in [(r, &mut remote), (l, &mut local)] {
                    if probe.is_some() {
                        written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    out.push(probe);
                }
                s += 1;
                if let Some(rest) = Duration::from_secs(1).checked_sub(second.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
            (remote, local)
        };
        let ((), (remote, local)) = tokio::join!(background, probes);
        (remote, local, written.into_inner())
    }

    /// Gives remote pod number `k` (of the last ones) a label set of its
    /// own; how long until its address has a new identity in the datapath.
    async fn probe_remote(
        &self,
        client: &Client,
        datapath: &Datapath,
        k: usize,
    ) -> Option<Duration> {
        let i = self.pods - 1 - (k % PROBE_PODS);
        let ip = self.pod_ip(i);
        let before = datapath.identity(ip);
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &Self::namespace(i),
            &resource::<k8s_openapi::api::core::v1::Pod>(),
        );
        api.patch(
            &Self::pod_name(i),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"probe": format!("p{k}")}}})),
        )
        .await
        .ok()?;
        let written = Instant::now();
        watch(datapath, ip, PROBE_LIMIT, |id| id.is_some() && id != before)
            .await
            .then(|| written.elapsed())
    }

    /// Edits (or creates) the probe policy on the local pods' app with a
    /// new `toCIDR` /32; how long until that address has a CIDR identity.
    async fn probe_policy(
        &self,
        client: &Client,
        datapath: &Datapath,
        k: usize,
        limit: Duration,
    ) -> Option<Duration> {
        let cidr = Ipv4Addr::from(0xc612_0000 + k as u32 + 1); // 198.18.0.0/15
        let labels = self.pod_labels(0);
        let policy = object(
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "probe", "namespace": Self::namespace(0)},
            "spec": {"endpointSelector": {"matchLabels": {"app": labels["app"]}},
                     "egress": [{"toCIDR": [format!("{cidr}/32")],
                                 "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]}}),
        );
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &Self::namespace(0), &cnp_resource());
        let params = PatchParams::apply("scale-bench").force();
        let ip = IpAddr::V4(cidr);
        // Before: what the prefix covering it says (world, reserved).
        let before = datapath.identity(ip);
        api.patch("probe", &params, &Patch::Apply(&policy))
            .await
            .ok()?;
        let written = Instant::now();
        watch(datapath, ip, limit, |id| id.is_some() && id != before)
            .await
            .then(|| written.elapsed())
    }
}

/// How long a probe waits for its change to reach the datapath.
const PROBE_LIMIT: Duration = Duration::from_secs(10);
/// The same after the API server was away: the agent's watches back off.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

/// Polls the datapath's identity of `ip` every 2 ms for up to `limit`.
async fn watch(
    datapath: &Datapath,
    ip: IpAddr,
    limit: Duration,
    done: impl Fn(Option<u32>) -> bool,
) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done(datapath.identity(ip)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// Creates `object`, then writes its status (which a create ignores), as
/// the node's and pod's owners (kubelet, CNI) do.
async fn create_with_status(
    api: Api<DynamicObject>,
    object: DynamicObject,
) -> Result<(), kube::Error> {
    let name = object.metadata.name.clone().unwrap_or_default();
    let status = object.data["status"].clone();
    api.create(&PostParams::default(), &object).await?;
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map(|_| ())
}

/// Creates every object, `LOAD_CONCURRENCY` at a time; a failure is fatal.
async fn create_all<F, Fut>(objects: impl Iterator<Item = DynamicObject>, create: F)
where
    F: Fn(DynamicObject) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let failures: Vec<kube::Error> = stream::iter(objects)
        .map(create)
        .buffer_unordered(LOAD_CONCURRENCY)
        .filter_map(|r| std::future::ready(r.err()))
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} creates failed, first: {:?}",
        failures.len(),
        failures.first()
    );
}
