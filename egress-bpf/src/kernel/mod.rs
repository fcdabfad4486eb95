//! The real datapath: the two TC programs loaded with aya, their maps and
//! links pinned under one directory (default `/sys/fs/bpf/tollgate`), so a
//! restarted agent adopts them instead of starting over: established
//! connections and unexpired FQDN entries keep working while it is down.
//!
//! Layout of the pin directory:
//! - `maps/<name>`: every map (pinned by name by the loader);
//! - `links/<ifindex>-<interface>-from-pod` / `-to-pod`: the TCX links.
//!
//! ## Layout
//! - this file: loading, map writes and reads, program links;
//! - `monitor`: the read side ([`KernelMonitor`]) opened from the pins;
//! - `pins`: the bpffs mount and removing everything pinned;
//! - `sys`: the two libc calls the agent needs (interface index, clock).

mod monitor;
mod pins;
mod sys;

pub use monitor::KernelMonitor;
pub use pins::uninstall;
pub use sys::{ifindex, monotonic_now_ns};

use pins::{ensure_bpffs, replace_reshaped_pins};

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
};
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;

use crate::abi;
use crate::datapath::{Datapath, DatapathError};
use crate::desired::{
    decode_backends, decode_grants, encode_backends, encode_grants, service_key, DesiredState,
    EndpointEntry, Frontend, PolicyEntry, StateDiff,
};
use crate::redirect::{self, RedirectConfig};

const FROM_POD_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/from_pod.bpf.o"));
const TO_POD_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/to_pod.bpf.o"));

/// Where pins live unless configured otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/tollgate";

/// The two attach points: program name, TC hook, link pin suffix.
const ATTACH_POINTS: [(&str, TcAttachType, &str); 2] = [
    ("tollgate_from_pod", TcAttachType::Ingress, "from-pod"),
    ("tollgate_to_pod", TcAttachType::Egress, "to-pod"),
];

/// The kernel datapath. Dropping it leaves everything pinned and enforcing;
/// [`uninstall`] removes it.
pub struct KernelDatapath {
    pin_dir: PathBuf,
    from_pod: Ebpf,
    to_pod: Ebpf,
    endpoints: HashMap<MapData, u32, abi::Endpoint>,
    addresses: HashMap<MapData, abi::EndpointAddr, u32>,
    policy_rev: Array<MapData, u32>,
    ipcache: LpmTrie<MapData, abi::IpcacheKey, abi::IpcacheValue>,
    allow: LpmTrie<MapData, abi::PolicyKey, abi::PolicyValue>,
    deny: LpmTrie<MapData, abi::PolicyKey, abi::PolicyValue>,
    fqdn: HashMap<MapData, abi::FqdnKey, abi::FqdnValue>,
    services: HashMap<MapData, abi::ServiceKey, abi::ServiceValue>,
    settings: Array<MapData, abi::Settings>,
    reads: KernelMonitor,
    /// The redirect last installed (its routing table is what uninstall
    /// removes).
    redirects: Option<RedirectConfig>,
    /// Maps pinned by another build with another shape, replaced at load.
    replaced_pins: Vec<String>,
    /// Whether this run's programs are in every pinned link (after the
    /// first successful [`Datapath::apply`]).
    links_swapped: bool,
}

/// How many times a program load that the kernel answered with EAGAIN is
/// tried in all. The verifier gives up with EAGAIN when a signal is pending
/// while it works, which says nothing about the program; libbpf tries such a
/// load five times, so does this.
const LOAD_ATTEMPTS: usize = 5;

fn load_retrying_eagain(prog: &mut SchedClassifier) -> Result<(), ProgramError> {
    let mut attempt = 1;
    loop {
        match prog.load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A program operation's error.
fn prog_err<E: std::error::Error + Send + Sync + 'static>(
    program: &'static str,
    action: &str,
) -> impl Fn(E) -> DatapathError {
    let action = action.to_string();
    move |e| DatapathError::Program {
        program,
        action: action.clone(),
        source: Box::new(e),
    }
}

impl KernelDatapath {
    /// Loads the programs, creating or adopting the pinned maps under
    /// `pin_dir`. Needs root (CAP_BPF, CAP_NET_ADMIN) and a bpffs there.
    /// Pins of maps whose shape differs from this build's are replaced
    /// (see [`KernelDatapath::replaced_pins`]): for the agent, which
    /// rewrites what they held.
    pub fn open(pin_dir: impl Into<PathBuf>) -> Result<Self, DatapathError> {
        Self::open_with(pin_dir.into(), true)
    }

    /// As [`KernelDatapath::open`], but every pin is adopted as it is: for
    /// tools that only look (`tollgate datapath status`), which must not
    /// swap the maps under a running agent, perhaps of another version.
    pub fn open_keeping_pins(pin_dir: impl Into<PathBuf>) -> Result<Self, DatapathError> {
        Self::open_with(pin_dir.into(), false)
    }

    fn open_with(pin_dir: PathBuf, replace_reshaped: bool) -> Result<Self, DatapathError> {
        ensure_bpffs(&pin_dir)?;
        let maps_dir = pin_dir.join("maps");
        let links_dir = pin_dir.join("links");
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(DatapathError::pin(dir, "creating"))?;
        }
        let replaced_pins = if replace_reshaped {
            replace_reshaped_pins(
                &maps_dir,
                &[
                    ("from_pod.bpf.o", FROM_POD_OBJ),
                    ("to_pod.bpf.o", TO_POD_OBJ),
                ],
            )?
        } else {
            Vec::new()
        };
        let load = |obj: &[u8], object: &'static str| {
            EbpfLoader::new()
                .default_map_pin_directory(&maps_dir)
                .load(obj)
                .map_err(|e| DatapathError::Load {
                    object,
                    pins: maps_dir.clone(),
                    source: Box::new(e),
                })
        };
        let mut from_pod = load(FROM_POD_OBJ, "from_pod.bpf.o")?;
        let mut to_pod = load(TO_POD_OBJ, "to_pod.bpf.o")?;
        for (bpf, (name, _, _)) in [
            (&mut from_pod, ATTACH_POINTS[0]),
            (&mut to_pod, ATTACH_POINTS[1]),
        ] {
            let prog: &mut SchedClassifier = bpf
                .program_mut(name)
                .ok_or(DatapathError::Missing {
                    kind: "program",
                    name,
                })?
                .try_into()
                .map_err(prog_err(name, "not a TC classifier"))?;
            load_retrying_eagain(prog).map_err(prog_err(name, "loading into the kernel"))?;
        }
        let take = |bpf: &mut Ebpf, name: &'static str| {
            bpf.take_map(name)
                .ok_or(DatapathError::Missing { kind: "map", name })
        };
        Ok(Self {
            endpoints: HashMap::try_from(take(&mut from_pod, "tg_endpoints")?)
                .map_err(DatapathError::map("tg_endpoints", "open"))?,
            addresses: HashMap::try_from(take(&mut from_pod, "tg_endpoint_addrs")?)
                .map_err(DatapathError::map("tg_endpoint_addrs", "open"))?,
            policy_rev: Array::try_from(take(&mut from_pod, "tg_policy_rev")?)
                .map_err(DatapathError::map("tg_policy_rev", "open"))?,
            ipcache: LpmTrie::try_from(take(&mut from_pod, "tg_ipcache")?)
                .map_err(DatapathError::map("tg_ipcache", "open"))?,
            allow: LpmTrie::try_from(take(&mut from_pod, "tg_policy_allow")?)
                .map_err(DatapathError::map("tg_policy_allow", "open"))?,
            deny: LpmTrie::try_from(take(&mut from_pod, "tg_policy_deny")?)
                .map_err(DatapathError::map("tg_policy_deny", "open"))?,
            fqdn: HashMap::try_from(take(&mut from_pod, "tg_fqdn")?)
                .map_err(DatapathError::map("tg_fqdn", "open"))?,
            services: HashMap::try_from(take(&mut from_pod, "tg_services")?)
                .map_err(DatapathError::map("tg_services", "open"))?,
            settings: Array::try_from(take(&mut from_pod, "tg_settings")?)
                .map_err(DatapathError::map("tg_settings", "open"))?,
            reads: KernelMonitor {
                conntrack: HashMap::try_from(take(&mut from_pod, "tg_conntrack")?)
                    .map_err(DatapathError::map("tg_conntrack", "open"))?,
                counters: PerCpuArray::try_from(take(&mut from_pod, "tg_counters")?)
                    .map_err(DatapathError::map("tg_counters", "open"))?,
                events: RingBuf::try_from(take(&mut from_pod, "tg_events")?)
                    .map_err(DatapathError::map("tg_events", "open"))?,
                rev_nat: HashMap::try_from(take(&mut from_pod, "tg_rev_nat")?)
                    .map_err(DatapathError::map("tg_rev_nat", "open"))?,
            },
            redirects: None,
            replaced_pins,
            links_swapped: false,
            pin_dir,
            from_pod,
            to_pod,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The maps whose pins, left by a build with another shape of them,
    /// were replaced at load (their contents lost; see `pins.rs`).
    pub fn replaced_pins(&self) -> &[String] {
        &self.replaced_pins
    }

    fn link_path(&self, ifindex: u32, interface: &str, suffix: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{ifindex}-{interface}-{suffix}"))
    }

    /// Attaches both programs to `interface`, or, if links pinned by an
    /// earlier run exist, atomically swaps this run's programs into them.
    fn attach(&mut self, ifindex: u32, interface: &str) -> Result<(), DatapathError> {
        for (name, hook, suffix) in ATTACH_POINTS {
            let path = self.link_path(ifindex, interface, suffix);
            let bpf = if suffix == "from-pod" {
                &mut self.from_pod
            } else {
                &mut self.to_pod
            };
            let prog: &mut SchedClassifier = bpf
                .program_mut(name)
                .expect("loaded in open()")
                .try_into()
                .map_err(prog_err(name, "not a TC classifier"))?;
            match PinnedLink::from_pin(&path) {
                Ok(pinned) => {
                    let adopting = format!("adopting the link pinned at {}", path.display());
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                        .map_err(prog_err(name, &adopting))?;
                    let id = prog
                        .attach_to_link(link)
                        .map_err(prog_err(name, &adopting))?;
                    // The pin keeps the link; this process holds no reference.
                    drop(prog.take_link(id).map_err(prog_err(name, &adopting))?);
                }
                Err(LinkError::SyscallError(e))
                    if e.io_error.kind() == std::io::ErrorKind::NotFound =>
                {
                    let id = prog
                        .attach_with_options(
                            interface,
                            hook,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(prog_err(name, &format!("attaching to {interface}")))?;
                    let link = prog
                        .take_link(id)
                        .map_err(prog_err(name, "taking the link"))?;
                    let fd =
                        FdLink::try_from(link).map_err(prog_err(name, "expecting a TCX link"))?;
                    fd.pin(&path).map_err(prog_err(
                        name,
                        &format!("pinning the link at {}", path.display()),
                    ))?;
                }
                Err(e) => {
                    return Err(prog_err(
                        name,
                        &format!("reading the link pinned at {}", path.display()),
                    )(e))
                }
            }
        }
        Ok(())
    }

    /// Detaches both programs from an endpoint's interface by removing the pins.
    fn detach(&mut self, ifindex: u32, interface: &str) -> Result<(), DatapathError> {
        for (_, _, suffix) in ATTACH_POINTS {
            let path = self.link_path(ifindex, interface, suffix);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DatapathError::pin(&path, "removing the link pin")(e)),
            }
        }
        Ok(())
    }

    /// The interface names of pinned links, by ifindex.
    fn pinned_interfaces(&self) -> std::collections::BTreeMap<u32, String> {
        let mut out = std::collections::BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(self.pin_dir.join("links")) else {
            return out;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_suffix("-from-pod") else {
                continue;
            };
            if let Some((ifindex, interface)) = rest.split_once('-') {
                if let Ok(i) = ifindex.parse() {
                    out.insert(i, interface.to_string());
                }
            }
        }
        out
    }

    fn put_policy(
        map: &mut LpmTrie<MapData, abi::PolicyKey, abi::PolicyValue>,
        name: &'static str,
        entries: &[(PolicyEntry, abi::PolicyValue)],
    ) -> Result<(), DatapathError> {
        for (entry, value) in entries {
            let (prefix, key) = entry.encode();
            map.insert(&Key::new(prefix, key), value, 0)
                .map_err(DatapathError::map(name, "update"))?;
        }
        Ok(())
    }

    fn del_policy(
        map: &mut LpmTrie<MapData, abi::PolicyKey, abi::PolicyValue>,
        name: &'static str,
        entries: &[PolicyEntry],
    ) -> Result<(), DatapathError> {
        for entry in entries {
            let (prefix, key) = entry.encode();
            ignore_missing(map.remove(&Key::new(prefix, key)))
                .map_err(DatapathError::map(name, "delete"))?;
        }
        Ok(())
    }

    /// Deletes conntrack entries idle for longer than the program honours
    /// (the LRU would evict them eventually anyway).
    pub fn gc_conntrack(&mut self, now_ns: u64) -> Result<usize, DatapathError> {
        let stale: Vec<abi::CtKey> = self
            .reads
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| now_ns.saturating_sub(v.last_seen_ns) > ct_lifetime(k, v))
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            ignore_missing(self.reads.conntrack.remove(k))
                .map_err(DatapathError::map("tg_conntrack", "delete"))?;
        }
        Ok(stale.len())
    }

    /// The policy revision established flows are checked against (see
    /// `tg_policy_rev` in `maps.h`).
    pub fn policy_rev(&self) -> Result<u32, DatapathError> {
        self.policy_rev
            .get(&0, 0)
            .map_err(DatapathError::map("tg_policy_rev", "read"))
    }

    /// The identity the datapath gives `ip` now: the longest prefix in
    /// `tg_ipcache` holding it, as the programs look it up (`None`: no
    /// prefix holds it). One lookup, not a dump: the scale benchmark polls
    /// it to see a change reach the datapath.
    pub fn identity_of(&self, ip: IpAddr) -> Result<Option<u32>, DatapathError> {
        let net = IpNet::from(ip);
        match self.ipcache.get(&ipcache_key(&net), 0) {
            Ok(value) => Ok(Some(value.identity)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DatapathError::map("tg_ipcache", "read")(e)),
        }
    }

    fn bump_policy_rev(&mut self) -> Result<(), DatapathError> {
        let next = self.policy_rev()?.wrapping_add(1);
        self.policy_rev
            .set(0, next, 0)
            .map_err(DatapathError::map("tg_policy_rev", "update"))
    }

    /// Runs one program on `frame` (an Ethernet frame) as if it arrived on
    /// `ifindex` with skb mark `mark`, with `BPF_PROG_TEST_RUN`: the real
    /// maps are read and written (conntrack, counters, events), nothing is
    /// sent. For tests and the parser's fuzz target; `ifindex` must be an
    /// interface of the caller's network namespace.
    pub fn test_run(
        &self,
        direction: u8,
        frame: &[u8],
        ifindex: u32,
        mark: u32,
    ) -> Result<TestRunVerdict, DatapathError> {
        self.test_run_repeat(direction, frame, ifindex, mark, 1)
    }

    /// [`KernelDatapath::test_run`] `repeat` times in the kernel (for the
    /// datapath benchmark): the verdict is the last run's, the duration the
    /// kernel's mean per run (time in the program only, preemption left out).
    pub fn test_run_repeat(
        &self,
        direction: u8,
        frame: &[u8],
        ifindex: u32,
        mark: u32,
        repeat: u32,
    ) -> Result<TestRunVerdict, DatapathError> {
        let (name, bpf) = if direction == abi::DIR_EGRESS {
            (ATTACH_POINTS[0].0, &self.from_pod)
        } else {
            (ATTACH_POINTS[1].0, &self.to_pod)
        };
        let prog: &SchedClassifier = bpf
            .program(name)
            .expect("loaded in open()")
            .try_into()
            .map_err(prog_err(name, "not a TC classifier"))?;
        // struct __sk_buff up to `ifindex`: the fields a test run may set
        // (mark at 8, ifindex at 40), everything else zero.
        let mut ctx_in = [0u8; 44];
        ctx_in[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx_in[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut ctx_out = [0u8; SK_BUFF_SIZE];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(prog_err(name, "BPF_PROG_TEST_RUN"))?;
        Ok(TestRunVerdict {
            passed: result.return_value == TC_ACT_OK,
            return_value: result.return_value,
            mark: u32::from_ne_bytes(ctx_out[8..12].try_into().expect("4 bytes")),
            duration: result.duration,
        })
    }

    /// Number of entries in the conntrack map (for tests and metrics).
    pub fn conntrack_len(&self) -> usize {
        self.reads.conntrack.keys().count()
    }
}

/// `sizeof(struct __sk_buff)` (`<linux/bpf.h>`), the context a TC program
/// test run writes back.
const SK_BUFF_SIZE: usize = 192;
/// `TC_ACT_OK` (`<linux/pkt_cls.h>`): the packet goes on.
const TC_ACT_OK: u32 = 0;

/// What one program did with one packet under [`KernelDatapath::test_run`].
#[derive(Debug, Clone, Copy)]
pub struct TestRunVerdict {
    /// `TC_ACT_OK` (anything else drops it: `TC_ACT_SHOT`).
    pub passed: bool,
    pub return_value: u32,
    /// The skb mark it left (a proxy's mark for a redirected flow).
    pub mark: u32,
    /// Time in the program per run, as the kernel measured it.
    pub duration: std::time::Duration,
}

/// Mirrors `tg_ct_lifetime` in `decide.h`.
fn ct_lifetime(key: &abi::CtKey, value: &abi::CtValue) -> u64 {
    abi::ct_lifetime_ns(value.flags, key.protocol)
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn ipcache_key(net: &IpNet) -> Key<abi::IpcacheKey> {
    let (family, addr) = abi::addr_bytes(net.addr());
    Key::new(
        abi::IPCACHE_FIXED_BITS + u32::from(net.prefix_len()),
        abi::IpcacheKey {
            family,
            pad: [0; 3],
            addr,
        },
    )
}

fn address_key(ifindex: u32, ip: IpAddr) -> abi::EndpointAddr {
    let (family, addr) = abi::addr_bytes(ip);
    abi::EndpointAddr {
        ifindex,
        family,
        pad: [0; 3],
        addr,
    }
}

fn fqdn_key(ifindex: u32, ip: IpAddr) -> abi::FqdnKey {
    let (family, addr) = abi::addr_bytes(ip);
    abi::FqdnKey {
        endpoint: ifindex,
        family,
        pad: [0; 3],
        addr,
    }
}

impl Datapath for KernelDatapath {
    type Monitor = KernelMonitor;

    fn capacities(&self) -> std::collections::BTreeMap<&'static str, u32> {
        DesiredState::default()
            .entries_by_map()
            .iter()
            .filter_map(|(name, _)| {
                let info = aya::maps::MapInfo::from_pin(self.pin_dir.join("maps").join(name));
                info.ok().map(|i| (*name, i.max_entries()))
            })
            .collect()
    }

    fn apply(&mut self, diff: &StateDiff) -> Result<(), DatapathError> {
        // 1. More denial first.
        Self::put_policy(&mut self.deny, "tg_policy_deny", &diff.deny.put)?;
        // 2. Less allowance.
        Self::del_policy(&mut self.allow, "tg_policy_allow", &diff.allow.del)?;
        for (ifindex, ip) in &diff.fqdn.del {
            ignore_missing(self.fqdn.remove(&fqdn_key(*ifindex, *ip)))
                .map_err(DatapathError::map("tg_fqdn", "delete"))?;
        }
        for (ifindex, ip) in &diff.addresses.del {
            ignore_missing(self.addresses.remove(&address_key(*ifindex, *ip)))
                .map_err(DatapathError::map("tg_endpoint_addrs", "delete"))?;
        }
        for frontend in &diff.services.del {
            ignore_missing(self.services.remove(&service_key(frontend)))
                .map_err(DatapathError::map("tg_services", "delete"))?;
        }
        // 3. Identities and endpoints. A departing endpoint is detached
        // before its entry goes (a program without an entry drops all).
        for ifindex in &diff.endpoints.del {
            let interface = self.pinned_interfaces().get(ifindex).cloned();
            if let Some(interface) = interface {
                self.detach(*ifindex, &interface)?;
            }
            ignore_missing(self.endpoints.remove(ifindex))
                .map_err(DatapathError::map("tg_endpoints", "delete"))?;
        }
        for (net, identity) in &diff.ipcache.put {
            let value = abi::IpcacheValue {
                identity: *identity,
                pad: 0,
            };
            self.ipcache
                .insert(&ipcache_key(net), value, 0)
                .map_err(DatapathError::map("tg_ipcache", "update"))?;
        }
        for net in &diff.ipcache.del {
            ignore_missing(self.ipcache.remove(&ipcache_key(net)))
                .map_err(DatapathError::map("tg_ipcache", "delete"))?;
        }
        // 4. More allowance, entries before the programs that read them.
        Self::put_policy(&mut self.allow, "tg_policy_allow", &diff.allow.put)?;
        for ((ifindex, ip), ()) in &diff.addresses.put {
            self.addresses
                .insert(address_key(*ifindex, *ip), 1, 0)
                .map_err(DatapathError::map("tg_endpoint_addrs", "update"))?;
        }
        for (frontend, backends) in &diff.services.put {
            self.services
                .insert(service_key(frontend), encode_backends(backends), 0)
                .map_err(DatapathError::map("tg_services", "update"))?;
        }
        for ((ifindex, ip), grants) in &diff.fqdn.put {
            self.fqdn
                .insert(fqdn_key(*ifindex, *ip), encode_grants(grants), 0)
                .map_err(DatapathError::map("tg_fqdn", "update"))?;
        }
        for (ifindex, entry) in &diff.endpoints.put {
            self.endpoints
                .insert(ifindex, entry.value, 0)
                .map_err(DatapathError::map("tg_endpoints", "update"))?;
            self.attach(*ifindex, &entry.interface)?;
        }
        // 5. Less denial last.
        Self::del_policy(&mut self.deny, "tg_policy_deny", &diff.deny.del)?;
        // 6. Established flows are decided again against all of the above.
        if diff.changes_policy() {
            self.bump_policy_rev()?;
        }
        // 7. Once per run: links pinned by the previous run still hold its
        // programs (an endpoint that did not change is not attached again),
        // and those use its maps, which may have been replaced at load.
        // This run's programs take their place now that the maps hold what
        // they read.
        if !self.links_swapped {
            let interfaces = self.pinned_interfaces();
            for (ifindex, interface) in interfaces {
                let attached_now = diff.endpoints.put.iter().any(|(i, _)| *i == ifindex);
                if !attached_now && self.endpoints.get(&ifindex, 0).is_ok() {
                    self.attach(ifindex, &interface)?;
                }
            }
            self.links_swapped = true;
        }
        Ok(())
    }

    fn current(&self) -> Result<DesiredState, DatapathError> {
        let mut state = DesiredState::default();
        for item in self.addresses.keys() {
            let key = item.map_err(DatapathError::map("tg_endpoint_addrs", "read"))?;
            if let Some(ip) = abi::addr_from_bytes(key.family, &key.addr) {
                state.addresses.insert((key.ifindex, ip), ());
            }
        }
        let interfaces = self.pinned_interfaces();
        for item in self.endpoints.iter() {
            let (ifindex, value) = item.map_err(DatapathError::map("tg_endpoints", "read"))?;
            let interface = interfaces.get(&ifindex).cloned().unwrap_or_default();
            state
                .endpoints
                .insert(ifindex, EndpointEntry { interface, value });
        }
        for item in self.ipcache.iter() {
            let (key, value) = item.map_err(DatapathError::map("tg_ipcache", "read"))?;
            let data = key.data();
            let bits = key.prefix_len().saturating_sub(abi::IPCACHE_FIXED_BITS) as u8;
            if let Some(addr) = abi::addr_from_bytes(data.family, &data.addr) {
                if let Ok(net) = IpNet::new(addr, bits) {
                    state.ipcache.insert(net, value.identity);
                }
            }
        }
        for (map, out) in [
            (&self.allow, &mut state.allow),
            (&self.deny, &mut state.deny),
        ] {
            for item in map.iter() {
                let (key, value) = item.map_err(DatapathError::map("tg_policy", "read"))?;
                out.insert(PolicyEntry::decode(key.prefix_len(), &key.data()), value);
            }
        }
        for item in self.fqdn.iter() {
            let (key, value) = item.map_err(DatapathError::map("tg_fqdn", "read"))?;
            if let Some(ip) = abi::addr_from_bytes(key.family, &key.addr) {
                state.fqdn.insert((key.endpoint, ip), decode_grants(&value));
            }
        }
        for item in self.services.iter() {
            let (key, value) = item.map_err(DatapathError::map("tg_services", "read"))?;
            if let Some(ip) = abi::addr_from_bytes(key.family, &key.addr) {
                let frontend = Frontend {
                    ip,
                    protocol: key.protocol,
                    port: u16::from_be(key.port),
                };
                state
                    .services
                    .insert(frontend, decode_backends(key.family, &value));
            }
        }
        Ok(state)
    }

    fn monitor(&self) -> Result<KernelMonitor, DatapathError> {
        KernelMonitor::open(&self.pin_dir)
    }

    fn set_redirects(&mut self, config: &RedirectConfig) -> Result<(), DatapathError> {
        // The budget before the redirect, so a fresh node never redirects
        // without it. (After an upgrade from a build without the budget,
        // the programs attached by the first `apply` run unbounded until
        // this write: the agent makes it right after.)
        let settings = abi::Settings::dns_datagrams_per_second(config.dns_datagrams_per_second);
        self.settings
            .set(0, settings, 0)
            .map_err(DatapathError::map("tg_settings", "write"))?;
        redirect::install(config)?;
        self.redirects = Some(config.clone());
        Ok(())
    }

    fn uninstall(&mut self) -> Result<(), DatapathError> {
        uninstall(&self.pin_dir)?;
        redirect::uninstall(&self.redirects.take().unwrap_or_default())
    }
}
