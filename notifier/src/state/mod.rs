//! Durable state: the learned login history, the alert spool's layout on disk, and the running
//! daemon's status file.
pub mod history;
pub mod spool;
pub mod status;

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a part:
/// into `tmp` (mode 0600), fsync, rename over `path`, fsync of the directory (so the rename
/// itself survives). The spool, the history, and the fleet's outbox and mirror all write this way.
pub fn write_durably(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, tmp, bytes, true)
}

/// As [`write_durably`], without the fsyncs: readers never see a part of the file, but a crash of
/// the machine may lose the new one. For what is rewritten often and worth little after a crash
/// (the status file).
pub fn write_replacing(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, tmp, bytes, false)
}

fn replace(path: &Path, tmp: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    fs::rename(tmp, path)?;
    if sync {
        File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    }
    Ok(())
}
