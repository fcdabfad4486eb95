//! The read side of the kernel datapath: its own handles on the conntrack,
//! counter and event maps, opened from their pins, so reading needs no lock
//! the writer holds.

use std::collections::BTreeSet;
use std::net::IpAddr;
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
}
