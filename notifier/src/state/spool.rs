//! The alert spool's layout on disk, named once for the writers (`alert::spool`) and the readers
//! (the metrics endpoint, `notifier status`): one directory per sink under `state_dir/spool`, one
//! `<alert id>.json` file per pending alert, and `state_dir/dead-letter.jsonl`.

use std::path::{Path, PathBuf};

/// `state_dir/spool`: the parent of every sink's spool.
pub fn root(state_dir: &Path) -> PathBuf {
    state_dir.join("spool")
}

/// The spool of the sink called `name`: `state_dir/spool/<name>`, with the name made safe.
pub fn sink_dir(state_dir: &Path, name: &str) -> PathBuf {
    root(state_dir).join(dir_name(name))
}

/// The file of one pending alert in a sink's spool.
pub fn entry_file(sink_dir: &Path, alert_id: &str) -> PathBuf {
    sink_dir.join(format!("{}.json", safe(alert_id, &['-'])))
}

/// Where alerts that cannot be delivered end up.
pub fn dead_letter(state_dir: &Path) -> PathBuf {
    state_dir.join("dead-letter.jsonl")
}

/// Pending alerts in every sink's spool under `state_dir`.
pub fn pending(state_dir: &Path) -> usize {
    pending_by_dir(state_dir).iter().map(|(_, n)| n).sum()
}

/// Pending alerts in each sink's spool directory, by the directory's name (see [`dir_name`]).
pub fn pending_by_dir(state_dir: &Path) -> Vec<(String, usize)> {
    sink_dirs(state_dir).into_iter().map(|(name, dir)| (name, entry_files(&dir).len())).collect()
}

/// Every sink's spool directory under `state_dir`, with its name, sorted by name.
pub fn sink_dirs(state_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(dirs) = std::fs::read_dir(root(state_dir)) else { return Vec::new() };
    let mut found: Vec<(String, PathBuf)> =
        dirs.flatten().map(|d| (d.file_name().to_string_lossy().into_owned(), d.path())).collect();
    found.sort();
    found
}

/// The pending alerts' files (`*.json`) in one sink's spool directory.
pub fn entry_files(sink_dir: &Path) -> Vec<PathBuf> {
    let Ok(files) = std::fs::read_dir(sink_dir) else { return Vec::new() };
    files.flatten().map(|f| f.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect()
}

/// The name of the spool directory of the sink called `name`.
pub fn dir_name(name: &str) -> String {
    safe(name, &['-', '_'])
}

/// ASCII letters, digits and the characters in `keep` stay; everything else becomes `_`.
fn safe(name: &str, keep: &[char]) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || keep.contains(&c) { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe_as_before() {
        let state = Path::new("/var/lib/notifier");
        assert_eq!(sink_dir(state, "ops/pager 1_x"), Path::new("/var/lib/notifier/spool/ops_pager_1_x"));
        assert_eq!(entry_file(Path::new("/s"), "ab_c-1/2"), Path::new("/s/ab_c-1_2.json"));
        assert_eq!(dead_letter(state), Path::new("/var/lib/notifier/dead-letter.jsonl"));
    }
}
