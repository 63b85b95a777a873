//! Log lines for journald: under systemd, stderr is a journal stream, which reads a `<N>` prefix
//! as the line's syslog priority (`SyslogLevelPrefix=`, on by default). Without it every line is
//! priority 6 (info), and `journalctl -p warning -u notifier` shows nothing.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
};

/// Wraps an event format with the `<N>` priority prefix of the event's level.
pub struct Priority<F>(pub F);

/// The syslog priority of a level: error 3, warning 4, info 6, debug and trace 7.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    /// Every line of the event gets the prefix: a message that spans lines (a TOML error with
    /// its excerpt) is one warning, not a warning and some info lines.
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        let prefix = priority(*event.metadata().level());
        for line in text.lines() {
            writeln!(writer, "<{prefix}>{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!([Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE].map(priority), [3, 4, 6, 7, 7]);
    }
}
