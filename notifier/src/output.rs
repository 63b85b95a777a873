//! The output stage: every event as one line on stdout, text or JSON Lines, in the order the
//! pipeline gives them. A login whose reverse-DNS lookup is under way holds back what follows it,
//! so lines stay in order; no line waits longer than that lookup's own timeout.

use std::{future::Future, io, pin::Pin};

use anyhow::Context as _;
use futures_util::{stream::FuturesOrdered, StreamExt as _};

use crate::{
    enrich::rdns::Rdns,
    event::{self, escape_text, Format, LoginEvent, LostEvent},
    policy::{Judged, Judgement},
};

/// One line of output.
#[derive(Debug)]
pub enum Output {
    /// A login as captured (`watch`: no enrichment, no verdict).
    Captured(Box<LoginEvent>),
    /// A login with its enrichment and verdict, or an attack (`run`).
    Judged(Judgement),
    Lost(LostEvent),
}

/// Writes one output as one line.
pub fn write(w: &mut impl io::Write, format: Format, out: &Output) -> io::Result<()> {
    match (out, format) {
        (Output::Captured(e), _) => event::write_login(w, format, e),
        (Output::Lost(l), _) => event::write_lost(w, format, l),
        (Output::Judged(Judgement::Login(j)), Format::Json) => event::json_line(w, j),
        (Output::Judged(Judgement::BruteForce(b)), Format::Json) => event::json_line(w, b),
        (Output::Judged(Judgement::Login(j)), Format::Text) => writeln!(w, "{}", text_line(j)),
        (Output::Judged(Judgement::BruteForce(b)), Format::Text) => writeln!(
            w,
            "{} brute_force ip={} failures={} window={}s users={}{}",
            b.time,
            b.ip,
            b.count,
            b.window_secs,
            escape_text(&b.users.join(",")),
            if b.alert { " alert=yes" } else { "" }
        ),
    }
}

/// The captured event's line, then what the daemon added.
fn text_line(j: &Judged) -> String {
    let mut line = event::text_line(&j.login);
    if let Some(country) = j.geo.as_ref().and_then(|g| g.country.as_deref()) {
        line.push_str(&format!(" country={}", escape_text(country)));
    }
    if let Some(asn) = &j.asn {
        line.push_str(&format!(" asn=AS{}", asn.number));
    }
    if let Some(name) = &j.rdns {
        line.push_str(&format!(" rdns={}", escape_text(name)));
    }
    if let Some(n) = j.failures_before {
        line.push_str(&format!(" failures_before={n}"));
    }
    if let Some(v) = j.verdict {
        line.push_str(&format!(" verdict={}", v.as_str()));
        if j.alert {
            line.push_str(" alert=yes");
        }
        if j.learning {
            line.push_str(" learning=yes");
        }
    }
    if let Some(reason) = &j.reason {
        // Last, after " -- ", so that it may keep its spaces.
        line.push_str(" -- ");
        line.push_str(
            &reason.chars().map(|c| if c.is_control() || event::is_deceptive(c) { '?' } else { c }).collect::<String>(),
        );
    }
    line
}

#[cfg(test)]
mod golden;

type Pending = FuturesOrdered<Pin<Box<dyn Future<Output = Output>>>>;

/// stdout, and the lines waiting for a lookup.
pub struct Stdout {
    format: Format,
    out: io::StdoutLock<'static>,
    pending: Pending,
}

impl Stdout {
    pub fn new(format: Format) -> Self {
        Self { format, out: io::stdout().lock(), pending: FuturesOrdered::new() }
    }

    /// Writes `out` now, or after its reverse-DNS lookup (and those before it) when one is due.
    /// False when stdout was closed: the reader went away.
    pub fn emit(&mut self, out: Output, rdns: Option<&Rdns>) -> anyhow::Result<bool> {
        match (out, rdns) {
            (Output::Judged(Judgement::Login(mut j)), Some(rdns)) if j.login.peer.is_some() => {
                let rdns = rdns.clone();
                let ip = j.login.peer.map(|p| p.ip);
                self.pending.push_back(Box::pin(async move {
                    if let Some(ip) = ip {
                        j.rdns = rdns.lookup(ip).await;
                    }
                    Output::Judged(Judgement::Login(j))
                }));
                Ok(true)
            }
            (out, _) if !self.pending.is_empty() => {
                self.pending.push_back(Box::pin(std::future::ready(out)));
                Ok(true)
            }
            (out, _) => write_ok(write(&mut self.out, self.format, &out)),
        }
    }

    /// Lines are waiting for a lookup.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next line whose lookup is done, in order.
    pub async fn next_ready(&mut self) -> Option<Output> {
        self.pending.next().await
    }

    /// Writes a line that [`Stdout::next_ready`] gave.
    pub fn write_ready(&mut self, out: &Output) -> anyhow::Result<bool> {
        write_ok(write(&mut self.out, self.format, out))
    }

    pub fn flush(&mut self) -> anyhow::Result<bool> {
        write_ok(io::Write::flush(&mut self.out))
    }
}

/// A closed stdout (the reader went away) ends the program quietly; other errors are errors.
pub fn write_ok(res: io::Result<()>) -> anyhow::Result<bool> {
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
