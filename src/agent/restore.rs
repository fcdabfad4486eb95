//! The FQDN cache across restarts: saved under the state dir (a snapshot
//! taken under the node's lock, encoded and written outside it), restored
//! at start. A file from another boot or a damaged one is reported and
//! never trusted.

use std::path::{Path, PathBuf};

use egress_bpf::{monotonic_now_ns, Datapath};
use fqdn_cache::{FqdnCache, PolicyView, Time};

use crate::node::Node;

/// Creates the state dir (or tightens an existing one) readable by its
/// owner only: it holds every pod's learned names and the events socket.
pub fn private_state_dir(state_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Where the cache is saved.
pub fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("fqdn-cache.json")
}

/// Saves the node's cache (atomically: a crash leaves the old file or the
/// new one). A failure is logged and returned. One save at a time: the
/// last save before a handover or a stop, taken after the periodic one
/// still writing, is the one that stays.
pub fn save<D: Datapath>(
    state_dir: &Path,
    node: &Node<D>,
) -> Result<(), fqdn_cache::persist::PersistError> {
    static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SAVING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = node.cache_snapshot();
    let bytes = fqdn_cache::persist::encode(&cache, Time(monotonic_now_ns()), &boot_id());
    fqdn_cache::persist::save_atomic(&cache_path(state_dir), &bytes)
        .inspect_err(|e| tracing::warn!("cannot save the FQDN cache: {e}"))
}

/// The FQDN cache from the state dir, or an empty one (a bad file is
/// reported and ignored, never trusted).
pub fn restore(state_dir: &Path, config: fqdn_cache::Config, view: PolicyView) -> FqdnCache {
    let path = cache_path(state_dir);
    match fqdn_cache::persist::load(&path) {
        Ok(Some(bytes)) => {
            match fqdn_cache::persist::decode(
                &bytes,
                config,
                view.clone(),
                Time(monotonic_now_ns()),
                &boot_id(),
            ) {
                Ok((cache, report)) => {
                    tracing::info!(
                        names = report.names,
                        ips = report.ips,
                        expired = report.expired,
                        other_boot = report.other_boot,
                        "restored the FQDN cache from {}",
                        path.display()
                    );
                    return cache;
                }
                Err(e) => tracing::warn!("ignoring {}: {e}", path.display()),
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("ignoring {}: {e}", path.display()),
    }
    FqdnCache::new(config, view)
}
