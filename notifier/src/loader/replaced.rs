//! A libpam replaced by a package upgrade: uprobes stay on the old inode, so the new file is found
//! with inotify and the probes attached to it too.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use tracing::warn;

use super::{attach_target, discover::check_elf, LoadError, Probes};

/// Attaches the probes to the file now at `path` (after a package upgrade replaced it). The
/// probes on the old file stay, for processes that still map it.
pub fn reattach(probes: &mut Probes, path: &Path) -> Result<usize, LoadError> {
    let n = attach_target(&mut probes.ebpf, &mut probes.links, path)?;
    match probes.attached.iter_mut().find(|(p, _)| p == path) {
        Some((_, count)) => *count += n,
        None => probes.attached.push((path.to_path_buf(), n)),
    }
    Ok(n)
}

/// Watches the directories of the attached libpam files (those that only root can write). A package
/// upgrade renames a new file over the old one; uprobes stay on the old inode, so new processes
/// would go unseen. [`LibpamWatch::
/// replaced`] reports such a path so the caller can [`reattach`].
pub struct LibpamWatch {
    stream: inotify::EventStream<[u8; 4096]>,
    /// Watch descriptor of the directory, file name, path, and (device, inode) last attached.
    files: Vec<(inotify::WatchDescriptor, std::ffi::OsString, PathBuf, (u64, u64))>,
}

impl LibpamWatch {
    pub fn new(targets: &[PathBuf]) -> std::io::Result<Self> {
        use inotify::{Inotify, WatchMask};
        let inotify = Inotify::init()?;
        let mut files = Vec::new();
        for target in targets {
            let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else { continue };
            // A file that a user could put there is never taken for an upgrade.
            let d = fs::metadata(dir)?;
            if d.uid() != 0 || d.mode() & 0o022 != 0 {
                warn!(dir = %dir.display(), "Not watching this directory for libpam upgrades: root does not own it, or others can write it.");
                continue;
            }
            let meta = fs::metadata(target)?;
            let wd = inotify.watches().add(dir, WatchMask::CREATE | WatchMask::MOVED_TO)?;
            files.push((wd, name.to_owned(), target.clone(), (meta.dev(), meta.ino())));
        }
        Ok(Self { stream: inotify.into_event_stream([0u8; 4096])?, files })
    }

    /// Waits until one of the files is replaced by a different file; returns its path. Cancel-safe.
    pub async fn replaced(&mut self) -> Option<PathBuf> {
        use futures_util::StreamExt as _;
        loop {
            let event = self.stream.next().await?.ok()?;
            let Some(name) = event.name else { continue };
            for (wd, file, path, identity) in &mut self.files {
                if *wd != event.wd || *file != name {
                    continue;
                }
                let Ok(meta) = fs::metadata(&*path) else { continue };
                if (meta.dev(), meta.ino()) != *identity && check_elf(path).is_ok() {
                    *identity = (meta.dev(), meta.ino());
                    return Some(path.clone());
                }
            }
        }
    }
}

/// Starts watching `probes`' libpam files; without inotify the daemon still runs, and says so.
pub fn watch_libpam(probes: &Probes) -> Option<LibpamWatch> {
    LibpamWatch::new(&probes.targets)
        .map_err(|e| warn!(error = %e, "Cannot watch libpam for upgrades; restart notifier after a libpam upgrade."))
        .ok()
}

/// The next replaced libpam, or never when there is no watch.
pub async fn next_replaced(watch: &mut Option<LibpamWatch>) -> Option<PathBuf> {
    match watch {
        Some(w) => w.replaced().await,
        None => std::future::pending().await,
    }
}

/// Re-attaches after `path` was replaced, logging the outcome; returns the text for a health alert.
pub fn handle_replaced(probes: &mut Probes, path: &Path) -> String {
    match reattach(probes, path) {
        Ok(n) => {
            warn!(path = %path.display(), probes = n, "libpam was replaced (a package upgrade?); probes attached to the new file.");
            format!(
                "libpam at {} was replaced (a package upgrade?); notifier attached its probes to the new file",
                path.display()
            )
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "libpam was replaced and the probes could not attach to the new file; restart notifier.");
            format!("libpam at {} was replaced and notifier could not attach to the new file ({e}); logins through it are not seen until notifier restarts", path.display())
        }
    }
}
