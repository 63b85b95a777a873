//! The shared history's keys and values. Pure.
//!
//! A key names one thing a login teaches, for one user:
//!
//! ```text
//! u.<user>.seen               the user has logged in somewhere in the fleet
//! u.<user>.cc.<CC>            from this country
//! u.<user>.asn.<n>            from this network operator
//! u.<user>.net.<hex>_<len>    from this network (/24 for IPv4, /64 for IPv6)
//! u.<user>.ip.<hex>           from this address
//! ```
//!
//! NATS keys allow only `[-/_=.a-zA-Z0-9]`, and `.` separates tokens, so the user name is
//! hex-encoded (injective, whatever bytes it holds) and addresses are hex (IPv6 has `:`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{network::network_of, verdict::Verdict};

/// What a key is about, for one user.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fact {
    Seen,
    Country(String),
    Asn(u32),
    Network(String),
    Ip(IpAddr),
}

impl Fact {
    /// The verdict a login gets when this fact is the broadest new one.
    pub fn verdict(&self) -> Verdict {
        match self {
            Fact::Seen => Verdict::FirstLogin,
            Fact::Country(_) => Verdict::NewCountry,
            Fact::Asn(_) => Verdict::NewAsn,
            Fact::Network(_) => Verdict::NewNetwork,
            Fact::Ip(_) => Verdict::NewIp,
        }
    }

    fn suffix(&self) -> String {
        match self {
            Fact::Seen => "seen".into(),
            Fact::Country(cc) => format!("cc.{}", hex::encode(cc)),
            Fact::Asn(n) => format!("asn.{n}"),
            Fact::Network(net) => {
                let (addr, len) = net.split_once('/').unwrap_or((net, ""));
                let hex = addr.parse::<IpAddr>().map(ip_hex).unwrap_or_else(|_| hex::encode(addr));
                format!("net.{hex}_{len}")
            }
            Fact::Ip(ip) => format!("ip.{}", ip_hex(*ip)),
        }
    }
}

fn ip_hex(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => hex::encode(v4.octets()),
        IpAddr::V6(v6) => hex::encode(v6.octets()),
    }
}

fn ip_from_hex(s: &str) -> Option<IpAddr> {
    let bytes = hex::decode(s).ok()?;
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// The user's token: hex, or `_` for an empty name (a token cannot be empty).
fn user_token(user: &str) -> String {
    if user.is_empty() {
        "_".into()
    } else {
        hex::encode(user)
    }
}

/// The key of `fact` for `user`.
pub fn key(user: &str, fact: &Fact) -> String {
    format!("u.{}.{}", user_token(user), fact.suffix())
}

/// The key prefix of everything about `user` (for `known forget --fleet`).
pub fn user_prefix(user: &str) -> String {
    format!("u.{}.", user_token(user))
}

/// The user and fact a key names; `None` for a key this notifier did not write.
pub fn parse(key: &str) -> Option<(String, Fact)> {
    let rest = key.strip_prefix("u.")?;
    let (user, fact) = rest.split_once('.')?;
    let user = if user == "_" { String::new() } else { String::from_utf8(hex::decode(user).ok()?).ok()? };
    let fact = match fact.split_once('.') {
        None if fact == "seen" => Fact::Seen,
        Some(("cc", cc)) => Fact::Country(String::from_utf8(hex::decode(cc).ok()?).ok()?),
        Some(("asn", n)) => Fact::Asn(n.parse().ok()?),
        Some(("net", net)) => {
            let (addr, len) = net.split_once('_')?;
            Fact::Network(format!("{}/{}", ip_from_hex(addr)?, len.parse::<u8>().ok()?))
        }
        Some(("ip", ip)) => Fact::Ip(ip_from_hex(ip)?),
        _ => return None,
    };
    Some((user, fact))
}

/// What one login teaches, broadest first: the order in which a winner claims them.
pub fn facts(ip: IpAddr, asn: Option<u32>, country: Option<&str>) -> Vec<Fact> {
    let mut facts = vec![Fact::Seen];
    facts.extend(country.map(|c| Fact::Country(c.to_string())));
    facts.extend(asn.map(Fact::Asn));
    facts.push(Fact::Network(network_of(ip).to_string()));
    facts.push(Fact::Ip(ip));
    facts
}

/// A key's value: who saw it first, and when; and the hosts that saw it since (at most
/// [`MAX_HOSTS`]), which the `local-or-2-hosts` trust counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub first_host: String,
    /// RFC 3339.
    pub first_seen: String,
    pub first_event_id: String,
    #[serde(default)]
    pub hosts: Vec<String>,
}

pub const MAX_HOSTS: usize = 8;

impl Claim {
    pub fn new(host: &str, time: &str, event_id: &str) -> Self {
        Claim {
            first_host: host.into(),
            first_seen: time.into(),
            first_event_id: event_id.into(),
            hosts: vec![host.into()],
        }
    }

    /// Whether `trust` lets this host believe the entry.
    pub fn believed(&self, trust: crate::config::fleet::Trust, host: &str) -> bool {
        use crate::config::fleet::Trust;
        match trust {
            Trust::AnyHost => true,
            Trust::LocalOr2Hosts => {
                let mut hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
                hosts.push(&self.first_host);
                hosts.sort_unstable();
                hosts.dedup();
                hosts.contains(&host) || hosts.len() >= 2
            }
        }
    }
}

/// The fleet's verdict for a login whose IP this host won: the broadest fact it also won, unless
/// the local history already knew that much (`local`: the verdict from this host's history).
pub fn settle(local: Verdict, won: &[Fact]) -> Verdict {
    let fleet = won.iter().map(Fact::verdict).min_by_key(|v| breadth(*v)).unwrap_or(Verdict::NewIp);
    if breadth(local) > breadth(fleet) {
        local
    } else {
        fleet
    }
}

/// 0 for the broadest news (a first login) to 4 for a new IP; 5 for anything else.
pub fn breadth(v: Verdict) -> u8 {
    match v {
        Verdict::FirstLogin => 0,
        Verdict::NewCountry => 1,
        Verdict::NewAsn => 2,
        Verdict::NewNetwork => 3,
        Verdict::NewIp => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fleet::Trust;

    #[test]
    fn keys_are_valid_nats_keys_and_round_trip() {
        let valid = |k: &str| k.chars().all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c));
        let users = ["alice", "a.b*c>d e", "DOMAIN\\bob", "ünï", ""];
        for user in users {
            for fact in facts("2001:db8::7".parse().unwrap(), Some(64500), Some("NZ")).into_iter().chain(facts(
                "203.0.113.7".parse().unwrap(),
                None,
                None,
            )) {
                let k = key(user, &fact);
                assert!(valid(&k) && !k.ends_with('.') && !k.contains(".."), "{k}");
                assert_eq!(parse(&k), Some((user.to_string(), fact.clone())), "{k}");
                assert!(k.starts_with(&user_prefix(user)));
            }
        }
        assert_eq!(key("alice", &Fact::Ip("203.0.113.7".parse().unwrap())), "u.616c696365.ip.cb007107");
        assert_eq!(key("alice", &Fact::Network("203.0.113.0/24".into())), "u.616c696365.net.cb007100_24");
        assert_eq!(parse("u.zz.seen"), None);
        assert_eq!(parse("other.key"), None);
    }

    #[test]
    fn the_broadest_fact_won_is_the_verdict_unless_the_host_knew_more() {
        let ip = Fact::Ip("203.0.113.7".parse().unwrap());
        let net = Fact::Network("203.0.113.0/24".into());
        assert_eq!(settle(Verdict::FirstLogin, &[Fact::Seen, net.clone(), ip.clone()]), Verdict::FirstLogin);
        assert_eq!(settle(Verdict::FirstLogin, &[net.clone(), ip.clone()]), Verdict::NewNetwork);
        assert_eq!(settle(Verdict::FirstLogin, std::slice::from_ref(&ip)), Verdict::NewIp);
        assert_eq!(settle(Verdict::NewIp, &[Fact::Seen, net, ip]), Verdict::NewIp, "this host knew the network");
        assert_eq!(settle(Verdict::FirstLogin, &[Fact::Asn(1), Fact::Country("NZ".into())]), Verdict::NewCountry);
    }

    #[test]
    fn two_hosts_or_this_one_make_an_entry_believed() {
        let mut c = Claim::new("web-3", "2026-12-06T00:00:00Z", "e1");
        assert!(c.believed(Trust::AnyHost, "web-1"));
        assert!(!c.believed(Trust::LocalOr2Hosts, "web-1"));
        assert!(c.believed(Trust::LocalOr2Hosts, "web-3"));
        c.hosts.push("web-3".into());
        assert!(!c.believed(Trust::LocalOr2Hosts, "web-1"), "the same host twice is one host");
        c.hosts.push("web-2".into());
        assert!(c.believed(Trust::LocalOr2Hosts, "web-1"));
    }
}
