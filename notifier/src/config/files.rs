//! The config file and its drop-ins: `notifier.toml`, then `notifier.d/*.toml` beside it in name
//! order, as systemd and fail2ban read theirs. A drop-in sets only the keys it names: tables merge
//! key by key, any other value (arrays included) replaces the one before, and a `[[sink]]` replaces
//! the sink of the same name or is added. The package ships every default commented out, so that
//! new defaults reach admins who edited the file, and a drop-in survives upgrades untouched.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use toml::{Table, Value};

use super::{raw::RawConfig, Config, ConfigError};

/// The drop-in directory of `path`: `/etc/notifier/notifier.toml` → `/etc/notifier/notifier.d`.
pub fn dropin_dir(path: &Path) -> PathBuf {
    path.with_extension("d")
}

/// The drop-in files of `path`, in the order they apply (by file name).
pub fn dropins(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = dropin_dir(path);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConfigError::Read { path: dir.display().to_string(), reason: e.to_string() }),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Where each setting came from: dotted key (`policy.alert_on`, `sink.<name>`) → file.
pub type Sources = BTreeMap<String, PathBuf>;

/// The effective settings in the files' own keys (every default filled in, secrets hidden), and
/// where each came from.
#[derive(Debug)]
pub struct Effective {
    /// The drop-ins read, in the order they applied.
    pub dropins: Vec<PathBuf>,
    toml: String,
    sinks: Vec<String>,
    pub sources: Sources,
}

/// Reads `path` and its drop-ins, checks each file alone (so that an error names its own file and
/// line), and returns the merged config and its effective settings.
pub fn load(path: &Path) -> Result<(Config, Effective), ConfigError> {
    let mut merged = Table::new();
    let mut sources = Sources::new();
    let dropins = dropins(path)?;
    for (i, file) in std::iter::once(path).chain(dropins.iter().map(PathBuf::as_path)).enumerate() {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::Read { path: file.display().to_string(), reason: e.to_string() })?;
        Config::from_toml(&text).map_err(|e| e.in_file(file, i == 0))?;
        let table: Table = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: Some(file.display().to_string()), message: e.to_string() })?;
        merge(&mut merged, table, "", file, &mut sources);
    }
    let text = toml::to_string(&merged).map_err(|e| ConfigError::Unusable(e.to_string()))?;
    let config = Config::from_toml(&text).map_err(|e| e.in_file(&dropin_dir(path), false))?;
    // Parsed by from_toml just above, so this cannot fail.
    let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Unusable(e.to_string()))?;
    let toml = toml::to_string_pretty(&raw).map_err(|e| ConfigError::Unusable(e.to_string()))?;
    let sinks = raw.sink.iter().map(|s| s.name.clone()).collect();
    Ok((config, Effective { dropins, toml, sinks, sources }))
}

/// Merges `over` into `base`, noting the source of every key `over` sets.
fn merge(base: &mut Table, over: Table, prefix: &str, file: &Path, sources: &mut Sources) {
    for (key, value) in over {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o, &path, file, sources),
            (_, Value::Array(sinks)) if path == "sink" => {
                let Value::Array(base_sinks) = base.entry(key).or_insert_with(|| Value::Array(Vec::new())) else {
                    continue;
                };
                for sink in sinks {
                    sources.insert(format!("sink.{}", sink_name(&sink)), file.to_path_buf());
                    match base_sinks.iter_mut().find(|s| sink_name(s) == sink_name(&sink)) {
                        Some(old) => *old = sink,
                        None => base_sinks.push(sink),
                    }
                }
            }
            (_, Value::Table(o)) => {
                let mut fresh = Table::new();
                merge(&mut fresh, o, &path, file, sources);
                base.insert(key, Value::Table(fresh));
            }
            (_, value) => {
                sources.insert(path, file.to_path_buf());
                base.insert(key, value);
            }
        }
    }
}

fn sink_name(sink: &Value) -> String {
    sink.get("name").and_then(Value::as_str).unwrap_or_default().to_string()
}

impl Effective {
    /// The effective settings as TOML, each key followed by the file that set it, or `default`.
    pub fn annotated(&self) -> String {
        let mut out = String::new();
        let mut table = String::new();
        let mut sink_source = String::new();
        let mut sinks = self.sinks.iter();
        let source_of =
            |key: &str| self.sources.get(key).map_or_else(|| "default".to_string(), |p| p.display().to_string());
        // The closing quotes of a multi-line string being read: its lines are not keys, and no
        // comment can go on them.
        let mut open: Option<&str> = None;
        for line in self.toml.lines() {
            let trimmed = line.trim();
            if let Some(delimiter) = open {
                if trimmed.contains(delimiter) {
                    open = None;
                }
                out.push_str(line);
                out.push('\n');
                continue;
            }
            if let Some(header) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                table = header.trim_matches(|c| c == '[' || c == ']').to_string();
                if trimmed == "[[sink]]" {
                    sink_source = sinks.next().map(|name| source_of(&format!("sink.{name}"))).unwrap_or_default();
                }
                out.push_str(line);
                out.push('\n');
                continue;
            }
            let key = line.split_once(" = ").map(|(k, _)| k).filter(|k| !k.is_empty() && !k.starts_with([' ', '#']));
            let Some(key) = key else {
                out.push_str(line);
                out.push('\n');
                continue;
            };
            let value = line.split_once(" = ").map_or("", |(_, v)| v.trim());
            if let Some(delimiter) = ["\"\"\"", "\'\'\'"].into_iter().find(|d| value.starts_with(d)) {
                if value.matches(delimiter).count() == 1 {
                    open = Some(delimiter);
                    out.push_str(line);
                    out.push('\n');
                    continue;
                }
            }
            let source = match table.as_str() {
                t if t == "sink" || t.starts_with("sink.") => sink_source.clone(),
                "" => source_of(key),
                t => source_of(&format!("{t}.{key}")),
            };
            out.push_str(&format!("{line}  # {source}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system temporary directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("notifier-config-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("notifier.d")).expect("temporary directory");
            Self(dir)
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.0.join(rel);
            std::fs::write(&path, text).expect("writing a config file");
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const WEBHOOK: &str = "[[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/a\"\n";

    #[test]
    fn dropins_override_key_by_key_in_name_order_and_each_setting_names_its_file() {
        let dir = Dir::new("merge");
        let main = dir.write("notifier.toml", &format!("[policy]\nlearning_days = 5\nexpire_days = 30\n{WEBHOOK}"));
        let late = dir.write("notifier.d/20-late.toml", "[policy]\nlearning_days = 9\n");
        let early = dir.write(
            "notifier.d/10-early.toml",
            "[policy]\nlearning_days = 7\n[[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/b\"\nsystem_ca = true\n\
             [[sink]]\nname = \"more\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/c\"\n\
             body = \"\"\"\n{{ user }} = {{ ip }}\n[from {{ host }}]\n\"\"\"\n",
        );
        dir.write("notifier.d/README", "not a drop-in");
        let (config, effective) = load(&main).unwrap_or_else(|e| panic!("{e}"));
        let sources = &effective.sources;
        assert_eq!(config.policy.learning_days, 9, "20-late.toml applies after 10-early.toml");
        assert_eq!(config.policy.expire_days, 30, "a key no drop-in names stays");
        let sinks: Vec<String> = config.sinks.iter().map(|s| toml::to_string(s).unwrap()).collect();
        assert_eq!(config.sinks.len(), 2, "{sinks:?}");
        assert!(sinks[0].contains("name = \"hook\"") && sinks[0].contains("system_ca = true"), "{sinks:?}");
        assert!(sinks[1].contains("name = \"more\""), "{sinks:?}");
        assert_eq!(sources["policy.learning_days"], late);
        assert_eq!(sources["policy.expire_days"], main);
        assert_eq!(sources["sink.hook"], early);

        let text = effective.annotated();
        assert!(text.contains(&format!("learning_days = 9  # {}", late.display())), "{text}");
        assert!(text.contains(&format!("expire_days = 30  # {}", main.display())), "{text}");
        assert!(text.contains("max_per_minute = 10  # default"), "{text}");
        assert!(text.contains("cooldown_secs = 600  # default"), "the files' own keys: {text}");
        assert!(text.contains(&format!("system_ca = true  # {}", early.display())), "{text}");
        assert!(!text.contains("127.0.0.1:9/"), "secrets (a webhook's URL) stay hidden: {text}");
        assert!(
            text.contains("\n{{ user }} = {{ ip }}\n[from {{ host }}]\n"),
            "a multi-line body is left whole: {text}"
        );
        let reparsed = Config::from_toml(&text.replace("\"***\"", "\"http://127.0.0.1:9/\""))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(reparsed.sinks[1].body, config.sinks[1].body, "{text}");
        let empty = dir.write("empty.toml", "");
        let defaults = load(&empty).unwrap_or_else(|e| panic!("{e}")).1.annotated();
        let reparsed = Config::from_toml(&defaults).unwrap_or_else(|e| panic!("{e}\n{defaults}"));
        assert_eq!(reparsed, Config::default(), "the annotated settings are a config that gives them");
    }

    #[test]
    fn an_error_in_a_dropin_names_the_file_and_its_line() {
        let dir = Dir::new("error");
        let main = dir.write("notifier.toml", "");
        dir.write("notifier.d/50-bad.toml", "\n[alerts]\nmax_per_minute = 0\n");
        let e = load(&main).unwrap_err().to_string();
        assert!(e.contains("alerts.max_per_minute in ") && e.contains("50-bad.toml") && e.contains("line 3"), "{e}");
        dir.write("notifier.d/50-bad.toml", "[policy\n");
        let e = load(&main).unwrap_err().to_string();
        assert!(e.contains("50-bad.toml"), "{e}");
    }

    #[test]
    fn no_dropin_directory_is_no_dropin() {
        let dir = Dir::new("none");
        std::fs::remove_dir(dir.0.join("notifier.d")).expect("removing notifier.d");
        let main = dir.write("notifier.toml", "[policy]\nlearning_days = 3\n");
        let (config, _) = load(&main).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.policy.learning_days, 3);
    }
}
