//! Validation of real output against the shipped JSON Schema (`schema/event.schema.json`), with
//! Python's jsonschema (Debian's python3-jsonschema, installed by `cargo xtask setup`).

use super::*;

/// The shipped schema's path.
pub fn event_schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/event.schema.json")
}

const VALIDATE: &str = r##"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
if sys.argv[2]:
    schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/" + sys.argv[2]}
validator = jsonschema.Draft202012Validator(schema)
for line in sys.stdin:
    errors = sorted(validator.iter_errors(json.loads(line)), key=lambda e: e.path)
    print("ok" if not errors else "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)[:600])
"##;

/// For each of `values`, `None` if it is valid against the schema (or its `$defs` entry `def`),
/// else the validator's errors.
pub fn schema_errors(def: Option<&str>, values: &[Value]) -> Vec<Option<String>> {
    // Debian's python3, which has the apt package (another python3 may come first in PATH).
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", VALIDATE])
        .arg(event_schema_path())
        .arg(def.unwrap_or(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let input: String = values.iter().map(|v| format!("{v}\n")).collect();
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), input.as_bytes()).expect("writing to python3");
    let out = child.wait_with_output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "validating with python3's jsonschema (python3-jsonschema; `cargo xtask setup` installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Option<String>> =
        stdout.lines().map(|l| if l == "ok" { None } else { Some(l.to_string()) }).collect();
    assert_eq!(results.len(), values.len(), "{stdout}");
    results
}

/// Every one of `values` is valid against the schema (or its `$defs` entry `def`).
pub fn assert_schema_valid(def: Option<&str>, values: &[Value]) {
    assert!(!values.is_empty(), "nothing to validate");
    for (value, error) in values.iter().zip(schema_errors(def, values)) {
        if let Some(error) = error {
            panic!("not valid against {}: {error}\n{value}", event_schema_path().display());
        }
    }
}
