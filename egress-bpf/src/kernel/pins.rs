//! The bpffs the pins live on, and removing everything pinned.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};

use crate::datapath::DatapathError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Pins need a bpffs. A fresh machine may not have one at /sys/fs/bpf:
/// mount it there (as Cilium does) when `pin_dir` lies below it.
pub(super) fn ensure_bpffs(pin_dir: &Path) -> Result<(), DatapathError> {
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
        return Err(DatapathError::pin(
            root,
            "no bpffs mounted, and mounting one at",
        )(std::io::Error::last_os_error()));
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

/// Removes everything pinned under `pin_dir`: detaches every program (by
/// removing its link pins) and drops the maps. Returns what was removed.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    let mut removed = Vec::new();
    for sub in ["links", "maps"] {
        let dir = pin_dir.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DatapathError::pin(&dir, "reading")(e)),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(DatapathError::pin(&path, "removing"))?;
            removed.push(path);
        }
        std::fs::remove_dir(&dir).map_err(DatapathError::pin(&dir, "removing"))?;
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DatapathError::pin(pin_dir, "removing")(e)),
    }
    Ok(removed)
}

/// A pinned `tg_counters` left by a build with fewer counters (they are
/// appended as the programs learn new drops) is removed, so that loading
/// creates one of this build's size. The loader adopts a pin by name
/// without comparing its shape: the programs would then never count the
/// new drops, and reading them back would fail for every counter. Only
/// counts are lost (a counter reset, as after a reboot).
pub(super) fn replace_outgrown_counters(maps_dir: &Path) -> Result<(), DatapathError> {
    let pin = maps_dir.join("tg_counters");
    match aya::maps::MapInfo::from_pin(&pin) {
        Ok(info) if info.max_entries() != crate::abi::CNT_MAX => {
            std::fs::remove_file(&pin).map_err(DatapathError::pin(&pin, "removing"))
        }
        _ => Ok(()),
    }
}
