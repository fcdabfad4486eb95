//! The on-disk format, so that a restarted agent restores what pods learned.
//!
//! JSON, versioned. Times are CLOCK_MONOTONIC nanoseconds, which only mean
//! something within one boot, so the file records the boot it was written in
//! (`/proc/sys/kernel/random/boot_id`, passed in by the caller); entries from
//! another boot are dropped, as the kernel's maps and connections are gone too.
//!
//! [`encode`] / [`decode`] are pure; [`save_atomic`] / [`load`] are the only
//! file I/O: write to a temporary file, fsync, rename over the old one.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use policy::EndpointKey;
use serde::{Deserialize, Serialize};

use crate::cache::{Config, EndpointState, FqdnCache, IpEntry, NameSlot};
use crate::time::Time;
use crate::view::PolicyView;

/// Tells a cache file from any other JSON.
pub const FORMAT: &str = "tollgate-fqdn-cache";
/// The version this build writes and the newest it reads.
pub const VERSION: u32 = 1;

/// Why a cache file was not used. The agent reports it and starts empty.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Not JSON, not a cache file, or fields missing or wrong.
    #[error("not a valid fqdn cache file: {0}")]
    Corrupt(String),
    /// Written by a newer Tollgate; this one cannot know what it means.
    #[error(
        "fqdn cache file has format version {found}, newer than the {supported} this build reads"
    )]
    NewerVersion { found: u32, supported: u32 },
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    format: String,
    version: u32,
    boot_id: String,
    saved_at: Time,
    endpoints: Vec<EndpointV1>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointV1 {
    namespace: String,
    name: String,
    names: Vec<NameV1>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameV1 {
    name: String,
    last_learned: Time,
    ips: Vec<IpV1>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IpV1 {
    ip: IpAddr,
    learned_at: Time,
    expires_at: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zombie_alive_at: Option<Time>,
}

/// What [`decode`] kept and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub names: usize,
    pub ips: usize,
    /// Entries that expired while the agent was down.
    pub expired: usize,
    /// Entries from another boot (their times mean nothing now).
    pub other_boot: usize,
    /// Names that are not valid DNS names (a hand-edited file).
    pub invalid: usize,
}

/// Serializes the cache at `now` in boot `boot_id`.
pub fn encode(cache: &FqdnCache, now: Time, boot_id: &str) -> Vec<u8> {
    let endpoints = cache
        .endpoints
        .iter()
        .map(|(key, state)| EndpointV1 {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            names: state
                .slots()
                .map(|slot| NameV1 {
                    name: slot.name.to_string(),
                    last_learned: slot.last_learned,
                    ips: slot
                        .ips
                        .iter()
                        .map(|e| IpV1 {
                            ip: e.ip,
                            learned_at: e.learned_at,
                            expires_at: e.expires_at,
                            zombie_alive_at: e.zombie_alive_at(),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let file = FileV1 {
        format: FORMAT.to_string(),
        version: VERSION,
        boot_id: boot_id.to_string(),
        saved_at: now,
        endpoints,
    };
    serde_json::to_vec(&file).expect("the cache always serializes")
}

/// Rebuilds a cache from [`encode`]'s bytes at `now` in boot `boot_id`,
/// dropping what expired meanwhile (zombies are kept: the next
/// [`FqdnCache::expire`] asks whether their connections still live).
pub fn decode(
    bytes: &[u8],
    config: Config,
    view: PolicyView,
    now: Time,
    boot_id: &str,
) -> Result<(FqdnCache, RestoreReport), PersistError> {
    let header: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| PersistError::Corrupt(e.to_string()))?;
    match header.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT) => {}
        _ => {
            return Err(PersistError::Corrupt(format!(
                "missing \"format\": \"{FORMAT}\""
            )))
        }
    }
    let version = header
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| PersistError::Corrupt("missing \"version\"".into()))?;
    if version > u64::from(VERSION) {
        return Err(PersistError::NewerVersion {
            found: u32::try_from(version).unwrap_or(u32::MAX),
            supported: VERSION,
        });
    }
    let file: FileV1 =
        serde_json::from_value(header).map_err(|e| PersistError::Corrupt(e.to_string()))?;
    let mut report = RestoreReport::default();
    let mut endpoints = BTreeMap::new();
    let same_boot = file.boot_id == boot_id;
    for ep in file.endpoints {
        let key = EndpointKey {
            namespace: ep.namespace,
            name: ep.name,
        };
        let mut state = EndpointState::default();
        for n in ep.names {
            let Some(name) = policy::fqdn::normalize_name(&n.name) else {
                report.invalid += 1;
                continue;
            };
            let mut ips = Vec::new();
            for ip in n.ips {
                if !same_boot {
                    report.other_boot += 1;
                } else if ip.expires_at <= now && ip.zombie_alive_at.is_none() {
                    report.expired += 1;
                } else if !ips.iter().any(|e: &IpEntry| e.ip == ip.ip) {
                    ips.push(IpEntry::new(
                        ip.ip,
                        ip.learned_at,
                        ip.expires_at,
                        ip.zombie_alive_at,
                    ));
                }
            }
            if ips.is_empty() {
                continue;
            }
            report.names += 1;
            report.ips += ips.len();
            state.restore_slot(NameSlot {
                name: Arc::from(&*name),
                last_learned: n.last_learned,
                ips,
            });
        }
        if state.slots().next().is_some() {
            endpoints.insert(key, state);
        }
    }
    Ok((FqdnCache::from_parts(config, view, endpoints), report))
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the
/// new one, never a torn mix, even if the agent is killed mid-write. The
/// file is readable by its owner only (0600).
pub fn save_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let io = |source| PersistError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id()
    ));
    // Private: the file names every pod's destinations. A leftover temp
    // file could carry other permissions, so start from none.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a cache file; `Ok(None)` if there is none yet.
pub fn load(path: &Path) -> Result<Option<Vec<u8>>, PersistError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PersistError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}
