//! Config files: any text parses to a config or to an error that names the problem.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = notifier::config::Config::from_toml(text) {
        let _ = e.to_string();
    }
});
