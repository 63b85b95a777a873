//! Empty library target: it lets the userspace crate declare a build-dependency on this crate, so
//! cargo rebuilds the embedded object when the probes change.
#![no_std]
