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

/// Pins whose map has another shape (type, flags, key or value size,
/// capacity) than the same-named map of `objects` are removed, so that
/// loading creates this build's. The loader adopts a pin by name without
/// comparing shapes: a value the programs now read further than the old
/// map holds fails the verifier (the agent would not start until someone
/// removed the pins), and a smaller counters array loads but never counts
/// the new drops, while every read of the counters fails. (A struct whose
/// fields moved within the same size is not seen: the ABI test holds the
/// layouts, and a change of one must change its size or its map's name.)
/// What a replaced map held is lost; see docs/upgrades.md. Returns the
/// names of the maps replaced.
pub(super) fn replace_reshaped_pins(
    maps_dir: &Path,
    objects: &[(&'static str, &[u8])],
) -> Result<Vec<String>, DatapathError> {
    // Flags the kernel does not keep in the map's info.
    const ACCESS_FLAGS: u32 = (1 << 3) | (1 << 4); // BPF_F_RDONLY, BPF_F_WRONLY
    let mut replaced = Vec::new();
    for (object, bytes) in objects {
        let parsed = aya_obj::Object::parse(bytes).map_err(|e| DatapathError::Load {
            object,
            pins: maps_dir.to_path_buf(),
            source: Box::new(aya::EbpfError::ParseError(e)),
        })?;
        for (name, map) in &parsed.maps {
            if map.pinning() != aya_obj::maps::PinningType::ByName {
                continue;
            }
            let pin = maps_dir.join(name);
            let Ok(pinned) = aya::maps::MapInfo::from_pin(&pin) else {
                continue; // none yet (or unreadable: the loader says why)
            };
            let pinned_shape = (
                pinned.map_type().ok().map(|t| t as u32),
                pinned.map_flags() & !ACCESS_FLAGS,
                pinned.key_size(),
                pinned.value_size(),
                pinned.max_entries(),
            );
            let shape = (
                Some(map.map_type()),
                map.map_flags() & !ACCESS_FLAGS,
                map.key_size(),
                map.value_size(),
                map.max_entries(),
            );
            if pinned_shape != shape {
                match std::fs::remove_file(&pin) {
                    Ok(()) => replaced.push(name.clone()),
                    // Another opener replaced it first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(DatapathError::pin(&pin, "removing")(e)),
                }
            }
        }
    }
    replaced.sort();
    replaced.dedup();
    Ok(replaced)
}
