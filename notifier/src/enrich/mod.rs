//! The enrich stage: what a login's own record cannot say. GeoIP country, city and ASN of the peer
//! ([`geo`]), the calling process's parents for logins without a peer ([`process`]), and reverse DNS
//! ([`rdns`], asynchronous, applied as the event is written). [`Enricher::enrich`] is the stage's
//! entry point: a login event in, the same event with its enrichment out.

pub mod geo;
pub mod process;
pub mod rdns;

use crate::event::{EventKind, LoginEvent};
use geo::{Asn, Geo, GeoDb};
use process::Ancestor;

/// A login event and what enrichment found for it.
#[derive(Clone, Debug)]
pub struct Enriched {
    pub login: LoginEvent,
    pub geo: Option<Geo>,
    pub asn: Option<Asn>,
    /// For logins without a peer (sudo, su, console): the calling process's parents.
    pub ancestry: Vec<Ancestor>,
}

/// The synchronous part of enrichment: the GeoIP databases and `/proc`.
pub struct Enricher {
    pub geo: GeoDb,
    /// The chain of parents of a pid (from /proc; a table in tests).
    ancestry: fn(u32) -> Vec<Ancestor>,
}

impl Enricher {
    pub fn new(geo: GeoDb) -> Self {
        Self { geo, ancestry: process::ancestry }
    }

    /// Looks up the peer in the GeoIP databases; for a login without a peer, reads who called PAM.
    pub fn enrich(&self, login: LoginEvent) -> Enriched {
        let ip = login.peer.map(|p| p.ip);
        let geo = ip.and_then(|ip| self.geo.geo(ip));
        let asn = ip.and_then(|ip| self.geo.asn(ip));
        let ancestry = match (ip, login.event) {
            (None, EventKind::SessionOpen | EventKind::AuthSuccess | EventKind::AuthFailure) => {
                (self.ancestry)(login.ppid)
            }
            _ => Vec::new(),
        };
        Enriched { login, geo, asn, ancestry }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::sample_login, peer::Peer};

    fn parents(ppid: u32) -> Vec<Ancestor> {
        vec![Ancestor { pid: ppid, comm: "bash".into(), uid: 1000, user: Some("alice".into()) }]
    }

    #[test]
    fn ancestry_only_for_logins_without_a_peer() {
        let enricher = Enricher { geo: GeoDb::default(), ancestry: parents };
        let remote = Some(Peer { ip: "203.0.113.7".parse().unwrap(), port: Some(52144) });
        let cases = [
            (EventKind::SessionOpen, None, true),
            (EventKind::AuthSuccess, None, true),
            (EventKind::AuthFailure, None, true),
            (EventKind::SessionClose, None, false),
            (EventKind::SessionOpen, remote, false),
            (EventKind::AuthFailure, remote, false),
        ];
        for (event, peer, want) in cases {
            let mut login = sample_login();
            (login.event, login.peer, login.ppid) = (event, peer, 4242);
            let e = enricher.enrich(login);
            assert_eq!(!e.ancestry.is_empty(), want, "{event:?} from {peer:?}");
            if want {
                assert_eq!(e.ancestry[0].pid, 4242);
            }
            assert_eq!((e.geo, e.asn), (None, None), "no database, no GeoIP");
        }
    }
}
