//! Talking to systemd (`Type=notify`): READY once the probes are attached, RELOADING around a
//! SIGHUP, STOPPING on the way out, and watchdog pings from the event loop. Outside systemd
//! (no `NOTIFY_SOCKET`) every call is a no-op, and no watchdog timer runs.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "sd_notify failed.");
    }
}

/// The probes are attached and events stream.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A config reload starts (systemd waits for the next READY=1).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    // systemd 253+ requires the monotonic time with RELOADING=1.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

/// The one line `systemctl status` shows under the unit.
pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of `WatchdogSec=`, or `None` when it is off.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2)).filter(|d| !d.is_zero())
}
