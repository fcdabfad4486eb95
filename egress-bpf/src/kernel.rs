//! The real datapath: the two TC programs loaded with aya, their maps and
//! links pinned under one directory (default `/sys/fs/bpf/tollgate`), so a
//! restarted agent adopts them instead of starting over: established
//! connections and unexpired FQDN entries keep working while it is down.
//!
//! Layout of the pin directory:
//! - `maps/<name>`: every map (pinned by name by the loader);
//! - `links/<ifindex>-<interface>-from-pod` / `-to-pod`: the TCX links.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;

use crate::abi;
use crate::datapath::{Counters, Datapath, DatapathError, FlowEvent, Monitor};
use crate::desired::{
    decode_grants, encode_grants, DesiredState, EndpointEntry, PolicyEntry, StateDiff,
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
    ipcache: LpmTrie<MapData, abi::IpcacheKey, abi::IpcacheValue>,
    allow: LpmTrie<MapData, abi::PolicyKey, abi::PolicyValue>,
    deny: LpmTrie<MapData, abi::PolicyKey, abi::PolicyValue>,
    fqdn: HashMap<MapData, abi::FqdnKey, abi::FqdnValue>,
    reads: KernelMonitor,
    /// The redirect last installed (its routing table is what uninstall
    /// removes).
    redirects: Option<RedirectConfig>,
}

/// The read side: its own handles on the conntrack, counter and event
/// maps (opened from their pins), so reading needs no lock the writer holds.
pub struct KernelMonitor {
    conntrack: HashMap<MapData, abi::CtKey, abi::CtValue>,
    counters: PerCpuArray<MapData, u64>,
    events: RingBuf<MapData>,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| DatapathError::Map {
        map,
        message: e.to_string(),
    }
}

fn prog_err(program: &str) -> impl Fn(aya::programs::ProgramError) -> DatapathError + '_ {
    move |e| DatapathError::Program {
        program: program.to_string(),
        message: format!("{e}{}", source_chain(&e)),
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(&format!(": {s}"));
        cur = s.source();
    }
    out
}

fn pin_err(path: &Path) -> impl Fn(std::io::Error) -> DatapathError + '_ {
    move |e| DatapathError::Pin {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl KernelDatapath {
    /// Loads the programs, creating or adopting the pinned maps under
    /// `pin_dir`. Needs root (CAP_BPF, CAP_NET_ADMIN) and a bpffs there.
    pub fn open(pin_dir: impl Into<PathBuf>) -> Result<Self, DatapathError> {
        let pin_dir = pin_dir.into();
        ensure_bpffs(&pin_dir)?;
        let maps_dir = pin_dir.join("maps");
        std::fs::create_dir_all(&maps_dir).map_err(pin_err(&maps_dir))?;
        std::fs::create_dir_all(pin_dir.join("links")).map_err(pin_err(&pin_dir))?;
        let load = |obj: &[u8], name: &str| {
            EbpfLoader::new()
                .default_map_pin_directory(&maps_dir)
                .load(obj)
                .map_err(|e| DatapathError::Program {
                    program: name.to_string(),
                    message: format!(
                        "{e}{} (maps pinned under {} by an incompatible version can be removed with `tollgate datapath uninstall`)",
                        source_chain(&e),
                        maps_dir.display()
                    ),
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
                .ok_or_else(|| DatapathError::Program {
                    program: name.into(),
                    message: "missing from the object".into(),
                })?
                .try_into()
                .map_err(prog_err(name))?;
            prog.load().map_err(prog_err(name))?;
        }
        let take = |bpf: &mut Ebpf, name: &'static str| {
            bpf.take_map(name).ok_or(DatapathError::Map {
                map: name,
                message: "missing from the object".into(),
            })
        };
        Ok(Self {
            endpoints: HashMap::try_from(take(&mut from_pod, "tg_endpoints")?)
                .map_err(map_err("tg_endpoints"))?,
            ipcache: LpmTrie::try_from(take(&mut from_pod, "tg_ipcache")?)
                .map_err(map_err("tg_ipcache"))?,
            allow: LpmTrie::try_from(take(&mut from_pod, "tg_policy_allow")?)
                .map_err(map_err("tg_policy_allow"))?,
            deny: LpmTrie::try_from(take(&mut from_pod, "tg_policy_deny")?)
                .map_err(map_err("tg_policy_deny"))?,
            fqdn: HashMap::try_from(take(&mut from_pod, "tg_fqdn")?).map_err(map_err("tg_fqdn"))?,
            reads: KernelMonitor {
                conntrack: HashMap::try_from(take(&mut from_pod, "tg_conntrack")?)
                    .map_err(map_err("tg_conntrack"))?,
                counters: PerCpuArray::try_from(take(&mut from_pod, "tg_counters")?)
                    .map_err(map_err("tg_counters"))?,
                events: RingBuf::try_from(take(&mut from_pod, "tg_events")?)
                    .map_err(map_err("tg_events"))?,
            },
            redirects: None,
            pin_dir,
            from_pod,
            to_pod,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
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
                .map_err(prog_err(name))?;
            match PinnedLink::from_pin(&path) {
                Ok(pinned) => {
                    let link =
                        SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| {
                            DatapathError::Program {
                                program: name.into(),
                                message: format!("adopting {}: {e}", path.display()),
                            }
                        })?;
                    let id = prog.attach_to_link(link).map_err(prog_err(name))?;
                    // The pin keeps the link; this process holds no reference.
                    drop(prog.take_link(id).map_err(prog_err(name))?);
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
                        .map_err(prog_err(name))?;
                    let link = prog.take_link(id).map_err(prog_err(name))?;
                    let fd = FdLink::try_from(link).map_err(|e| DatapathError::Program {
                        program: name.into(),
                        message: format!("TCX link expected: {e}"),
                    })?;
                    fd.pin(&path).map_err(|e| DatapathError::Pin {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                }
                Err(e) => {
                    return Err(DatapathError::Pin {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })
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
                Err(e) => return Err(pin_err(&path)(e)),
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
                .map_err(map_err(name))?;
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
            ignore_missing(map.remove(&Key::new(prefix, key))).map_err(map_err(name))?;
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
            ignore_missing(self.reads.conntrack.remove(k)).map_err(map_err("tg_conntrack"))?;
        }
        Ok(stale.len())
    }

    /// Number of entries in the conntrack map (for tests and metrics).
    pub fn conntrack_len(&self) -> usize {
        self.reads.conntrack.keys().count()
    }
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

    fn apply(&mut self, diff: &StateDiff) -> Result<(), DatapathError> {
        // 1. More denial first.
        Self::put_policy(&mut self.deny, "tg_policy_deny", &diff.deny.put)?;
        // 2. Less allowance.
        Self::del_policy(&mut self.allow, "tg_policy_allow", &diff.allow.del)?;
        for (ifindex, ip) in &diff.fqdn.del {
            ignore_missing(self.fqdn.remove(&fqdn_key(*ifindex, *ip)))
                .map_err(map_err("tg_fqdn"))?;
        }
        // 3. Identities and endpoints. A departing endpoint is detached
        // before its entry goes (a program without an entry drops all).
        for ifindex in &diff.endpoints.del {
            let interface = self.pinned_interfaces().get(ifindex).cloned();
            if let Some(interface) = interface {
                self.detach(*ifindex, &interface)?;
            }
            ignore_missing(self.endpoints.remove(ifindex)).map_err(map_err("tg_endpoints"))?;
        }
        for (net, identity) in &diff.ipcache.put {
            let value = abi::IpcacheValue {
                identity: *identity,
                pad: 0,
            };
            self.ipcache
                .insert(&ipcache_key(net), value, 0)
                .map_err(map_err("tg_ipcache"))?;
        }
        for net in &diff.ipcache.del {
            ignore_missing(self.ipcache.remove(&ipcache_key(net)))
                .map_err(map_err("tg_ipcache"))?;
        }
        // 4. More allowance, entries before the programs that read them.
        Self::put_policy(&mut self.allow, "tg_policy_allow", &diff.allow.put)?;
        for ((ifindex, ip), grants) in &diff.fqdn.put {
            self.fqdn
                .insert(fqdn_key(*ifindex, *ip), encode_grants(grants), 0)
                .map_err(map_err("tg_fqdn"))?;
        }
        for (ifindex, entry) in &diff.endpoints.put {
            self.endpoints
                .insert(ifindex, entry.value, 0)
                .map_err(map_err("tg_endpoints"))?;
            self.attach(*ifindex, &entry.interface)?;
        }
        // 5. Less denial last.
        Self::del_policy(&mut self.deny, "tg_policy_deny", &diff.deny.del)?;
        Ok(())
    }

    fn current(&self) -> Result<DesiredState, DatapathError> {
        let mut state = DesiredState::default();
        let interfaces = self.pinned_interfaces();
        for item in self.endpoints.iter() {
            let (ifindex, value) = item.map_err(map_err("tg_endpoints"))?;
            let interface = interfaces.get(&ifindex).cloned().unwrap_or_default();
            state
                .endpoints
                .insert(ifindex, EndpointEntry { interface, value });
        }
        for item in self.ipcache.iter() {
            let (key, value) = item.map_err(map_err("tg_ipcache"))?;
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
                let (key, value) = item.map_err(map_err("tg_policy"))?;
                out.insert(PolicyEntry::decode(key.prefix_len(), &key.data()), value);
            }
        }
        for item in self.fqdn.iter() {
            let (key, value) = item.map_err(map_err("tg_fqdn"))?;
            if let Some(ip) = abi::addr_from_bytes(key.family, &key.addr) {
                state.fqdn.insert((key.endpoint, ip), decode_grants(&value));
            }
        }
        Ok(state)
    }

    fn monitor(&self) -> Result<KernelMonitor, DatapathError> {
        KernelMonitor::open(&self.pin_dir)
    }

    fn set_redirects(&mut self, config: &RedirectConfig) -> Result<(), DatapathError> {
        redirect::install(config)?;
        self.redirects = Some(config.clone());
        Ok(())
    }

    fn uninstall(&mut self) -> Result<(), DatapathError> {
        uninstall(&self.pin_dir)?;
        redirect::uninstall(&self.redirects.take().unwrap_or_default())
    }
}

impl KernelMonitor {
    /// Opens the read side's maps from their pins under `pin_dir` (where
    /// [`KernelDatapath::open`] put them).
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let maps = pin_dir.join("maps");
        let pinned = |name: &'static str| {
            MapData::from_pin(maps.join(name)).map_err(|e| DatapathError::Map {
                map: name,
                message: format!("opening the pin under {}: {e}", maps.display()),
            })
        };
        Ok(Self {
            conntrack: HashMap::try_from(aya::maps::Map::HashMap(pinned("tg_conntrack")?))
                .map_err(map_err("tg_conntrack"))?,
            counters: PerCpuArray::try_from(aya::maps::Map::PerCpuArray(pinned("tg_counters")?))
                .map_err(map_err("tg_counters"))?,
            events: RingBuf::try_from(aya::maps::Map::RingBuf(pinned("tg_events")?))
                .map_err(map_err("tg_events"))?,
        })
    }
}

/// The datapath's own read handle, for callers that hold it directly
/// (tests, `tollgate datapath status`).
impl Monitor for KernelDatapath {
    fn interface_index(&self, name: &str) -> Option<u32> {
        ifindex(name)
    }

    fn counters(&self) -> Result<Counters, DatapathError> {
        self.reads.counters()
    }

    fn live_connections(&self) -> Result<BTreeSet<(u32, IpAddr)>, DatapathError> {
        self.reads.live_connections()
    }

    fn poll_events(&mut self, max: usize) -> Result<Vec<FlowEvent>, DatapathError> {
        self.reads.poll_events(max)
    }
}

impl Monitor for KernelMonitor {
    fn interface_index(&self, name: &str) -> Option<u32> {
        ifindex(name)
    }

    fn counters(&self) -> Result<Counters, DatapathError> {
        let mut out = Counters::default();
        for (i, name) in abi::COUNTERS.iter().enumerate() {
            let values = self
                .counters
                .get(&(i as u32), 0)
                .map_err(map_err("tg_counters"))?;
            out.0.insert(name, values.iter().sum());
        }
        Ok(out)
    }

    fn live_connections(&self) -> Result<BTreeSet<(u32, IpAddr)>, DatapathError> {
        let now = monotonic_now_ns();
        let mut out = BTreeSet::new();
        for item in self.conntrack.iter() {
            let (key, value) = item.map_err(map_err("tg_conntrack"))?;
            if value.direction != abi::DIR_EGRESS
                || now.saturating_sub(value.last_seen_ns) > ct_lifetime(&key, &value)
            {
                continue;
            }
            if let Some(remote) = abi::addr_from_bytes(key.family, &key.daddr) {
                out.insert((key.ifindex, remote));
            }
        }
        Ok(out)
    }

    fn poll_events(&mut self, max: usize) -> Result<Vec<FlowEvent>, DatapathError> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.events.next() else {
                break;
            };
            if let Some(event) = abi::FlowEvent::from_bytes(&item)
                .as_ref()
                .and_then(FlowEvent::decode)
            {
                out.push(event);
            }
        }
        Ok(out)
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Pins need a bpffs. A fresh machine may not have one at /sys/fs/bpf:
/// mount it there (as Cilium does) when `pin_dir` lies below it.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), DatapathError> {
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) || is_bpffs(root) {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: mount(2) with valid C strings and no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::Pin {
            path: root.display().to_string(),
            message: format!(
                "no bpffs mounted and mounting one failed: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The ifindex of `interface` in the caller's network namespace (sysfs may
/// belong to another namespace, e.g. under `nsenter --net`).
pub fn ifindex(interface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(interface).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()` and
/// of every expiry in the maps.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Removes everything pinned under `pin_dir`: detaches every program (by
/// removing its link pins) and drops the maps. Returns what was removed.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    let mut removed = Vec::new();
    for sub in ["links", "maps"] {
        let dir = pin_dir.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(pin_err(&dir)(e)),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(pin_err(&path))?;
            removed.push(path);
        }
        std::fs::remove_dir(&dir).map_err(pin_err(&dir))?;
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(pin_err(pin_dir)(e)),
    }
    Ok(removed)
}
