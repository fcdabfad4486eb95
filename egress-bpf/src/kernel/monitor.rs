//! The read side of the kernel datapath: its own handles on the conntrack,
//! counter and event maps, opened from their pins, so reading needs no lock
//! the writer holds.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};

use super::{ct_lifetime, ifindex, monotonic_now_ns, KernelDatapath};
use crate::abi;
use crate::datapath::{Counters, DatapathError, FlowEvent, Monitor};

/// The read side's maps.
pub struct KernelMonitor {
    pub(super) conntrack: HashMap<MapData, abi::CtKey, abi::CtValue>,
    pub(super) counters: PerCpuArray<MapData, u64>,
    pub(super) events: RingBuf<MapData>,
    pub(super) rev_nat: HashMap<MapData, abi::CtKey, abi::RevNat>,
}

impl KernelMonitor {
    /// Opens the read side's maps from their pins under `pin_dir` (where
    /// [`KernelDatapath::open`] put them).
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let maps = pin_dir.join("maps");
        let pinned = |name: &'static str| {
            MapData::from_pin(maps.join(name)).map_err(DatapathError::map(name, "opening the pin"))
        };
        Ok(Self {
            conntrack: HashMap::try_from(aya::maps::Map::HashMap(pinned("tg_conntrack")?))
                .map_err(DatapathError::map("tg_conntrack", "open"))?,
            counters: PerCpuArray::try_from(aya::maps::Map::PerCpuArray(pinned("tg_counters")?))
                .map_err(DatapathError::map("tg_counters", "open"))?,
            events: RingBuf::try_from(aya::maps::Map::RingBuf(pinned("tg_events")?))
                .map_err(DatapathError::map("tg_events", "open"))?,
            rev_nat: HashMap::try_from(aya::maps::Map::LruHashMap(pinned("tg_rev_nat")?))
                .map_err(DatapathError::map("tg_rev_nat", "open"))?,
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

    fn service_frontend(
        &self,
        ifindex: u32,
        protocol: u8,
        client: SocketAddr,
        backend: SocketAddr,
    ) -> Option<SocketAddr> {
        self.reads
            .service_frontend(ifindex, protocol, client, backend)
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
                .map_err(DatapathError::map("tg_counters", "read"))?;
            out.0.insert(name, values.iter().sum());
        }
        Ok(out)
    }

    fn live_connections(&self) -> Result<BTreeSet<(u32, IpAddr)>, DatapathError> {
        let now = monotonic_now_ns();
        let mut out = BTreeSet::new();
        for item in self.conntrack.iter() {
            let (key, value) = item.map_err(DatapathError::map("tg_conntrack", "read"))?;
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

    fn service_frontend(
        &self,
        ifindex: u32,
        protocol: u8,
        client: SocketAddr,
        backend: SocketAddr,
    ) -> Option<SocketAddr> {
        // The key tg_service_translate wrote: the flow as the pod sent it,
        // with the backend as destination; ports in network order.
        let (family, saddr) = abi::addr_bytes(client.ip());
        let (backend_family, daddr) = abi::addr_bytes(backend.ip());
        if family != backend_family {
            return None;
        }
        let key = abi::CtKey {
            ifindex,
            family,
            protocol,
            pad: 0,
            sport: client.port().to_be(),
            dport: backend.port().to_be(),
            saddr,
            daddr,
        };
        let rev = self.rev_nat.get(&key, 0).ok()?;
        let ip = abi::addr_from_bytes(family, &rev.addr)?;
        Some(SocketAddr::new(ip, u16::from_be(rev.port)))
    }
}
