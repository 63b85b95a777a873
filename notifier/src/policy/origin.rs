//! Whether the SSH login that a `su` or `sudo` ran in came from a known source. By the time the
//! privilege change is judged, that login has been learned, so its source reads as known in the
//! history; what counts is how it was judged when it logged in, which is kept here for recent
//! logins (bounded). A login judged before notifier's last start is judged again from the history.

use std::collections::{HashMap, VecDeque};

use super::{decide, Facts, OriginFacts, Verdict};
use crate::{config, event::Origin, state::history::History};

/// How many logins are remembered; older ones are judged again from the history.
const CAPACITY: usize = 4096;

/// The recent SSH logins, by `session`: was the source allowlisted or known at login.
#[derive(Debug, Default)]
pub struct LoginSources {
    known: HashMap<String, bool>,
    order: VecDeque<String>,
}

impl LoginSources {
    /// Remembers how the remote login `session` was judged.
    pub fn remember(&mut self, session: &str, verdict: Verdict) {
        if self.known.insert(session.to_string(), is_known(verdict)).is_none() {
            self.order.push_back(session.to_string());
        }
        while self.order.len() > CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.known.remove(&old);
            }
        }
    }

    /// The policy's view of `origin`.
    pub fn facts<'a>(
        &self,
        policy: &config::Policy,
        history: &History,
        origin: &'a Origin,
        now: i64,
    ) -> OriginFacts<'a> {
        let known = self.known.get(&origin.session).copied().unwrap_or_else(|| {
            let user = origin.user.as_deref().unwrap_or("");
            let facts = Facts {
                user,
                ip: origin.peer.map(|p| p.ip),
                trusted: true,
                asn: None,
                country: None,
                pam_bypassed: false,
                service: None,
                tty: None,
                ruser: None,
                origin: None,
            };
            facts.ip.is_some() && is_known(decide(policy, history, &facts, now).verdict)
        });
        OriginFacts { user: origin.user.as_deref(), peer: origin.peer, known }
    }
}

fn is_known(verdict: Verdict) -> bool {
    matches!(verdict, Verdict::Allowlisted | Verdict::Known)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{peer::Peer, state::history::Sighting};

    #[test]
    fn a_remembered_login_counts_as_judged_then_an_old_one_from_the_history() {
        let policy = config::Config::from_toml("").unwrap().policy;
        let mut history = History::default();
        let ip = "198.51.100.7".parse().unwrap();
        history.record(&Sighting { user: "alice", ip, asn: None, country: None }, 10);
        let origin = |session: &str| Origin {
            peer: Some(Peer { ip, port: Some(52144) }),
            user: Some("alice".into()),
            session: session.into(),
        };
        let mut sources = LoginSources::default();
        sources.remember("s1", Verdict::NewNetwork);
        sources.remember("s2", Verdict::Known);
        assert!(!sources.facts(&policy, &history, &origin("s1"), 20).known, "new at login, known now");
        assert!(sources.facts(&policy, &history, &origin("s2"), 20).known);
        assert!(sources.facts(&policy, &history, &origin("before-restart"), 20).known, "from the history");
        for n in 0..CAPACITY {
            sources.remember(&format!("x{n}"), Verdict::Known);
        }
        assert!(sources.facts(&policy, &history, &origin("s1"), 20).known, "s1 was forgotten");
        assert_eq!(sources.known.len(), CAPACITY);
    }
}
