//! The local mirror of the fleet's history bucket: every key with its value, and the bucket
//! revision it is current to. The watch task applies the bucket's changes; the judge reads it, so
//! verdicts never wait for the network. It is saved to `state_dir/fleet/mirror.json` (at most once
//! a second), so a restart with the servers down still has the last fleet state, and the watch
//! resumes after the saved revision.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::keys::Claim;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Mirror {
    /// The last bucket revision applied.
    pub revision: u64,
    pub keys: BTreeMap<String, Claim>,
    /// Changed since the last save.
    #[serde(skip)]
    pub dirty: bool,
}

impl Mirror {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("mirror.json")
    }

    /// The saved mirror, or an empty one (a torn or unreadable file is logged and rebuilt from the
    /// bucket).
    pub fn load(dir: &Path) -> Mirror {
        let path = Self::path(dir);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "The fleet mirror is not valid ({e}); it is rebuilt from the bucket.");
                Mirror::default()
            }),
            Err(_) => Mirror::default(),
        }
    }

    /// A put (`Some`) or a delete (`None`) at `revision`.
    pub fn apply(&mut self, key: String, value: Option<Claim>, revision: u64) {
        match value {
            Some(v) => {
                self.keys.insert(key, v);
            }
            None => {
                self.keys.remove(&key);
            }
        }
        self.revision = self.revision.max(revision);
        self.dirty = true;
    }

    /// Writes the mirror durably (temporary file, fsync, rename, fsync of the directory), mode 0600.
    pub fn save(&mut self, dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        crate::state::write_durably(&Self::path(dir), &dir.join("mirror.json.tmp"), &bytes)?;
        self.dirty = false;
        Ok(())
    }
}
