//! The peer of a login: its IP address and port, from OpenSSH's `SSH_CONNECTION` or, failing that,
//! from `PAM_RHOST` when it is an IP literal, or from the address sshd's `accept()` returned (the
//! sshd witness). A host name in `PAM_RHOST` is never resolved here.

use std::net::IpAddr;

use serde::Serialize;

use crate::network::canonical;

/// Where a login came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub ip: IpAddr,
    /// Known only from `SSH_CONNECTION`.
    pub port: Option<u16>,
}

/// `203.0.113.7:52144`, `[2001:db8::7]:2222`, or the bare address when the port is not known.
impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.ip, self.port) {
            (IpAddr::V6(ip), Some(port)) => write!(f, "[{ip}]:{port}"),
            (ip, Some(port)) => write!(f, "{ip}:{port}"),
            (ip, None) => write!(f, "{ip}"),
        }
    }
}

/// The two ends of an SSH connection, from `SSH_CONNECTION=<ip> <port> <local ip> <local port>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SshConnection {
    pub peer: Peer,
    pub local: Peer,
}

/// Parses the value of `SSH_CONNECTION` (without the `NAME=`).
pub fn parse_ssh_connection(value: &str) -> Option<SshConnection> {
    let mut parts = value.split_ascii_whitespace();
    let ip = parse_ip(parts.next()?)?;
    let port = parts.next()?.parse().ok()?;
    let lip = parse_ip(parts.next()?)?;
    let lport = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(SshConnection { peer: Peer { ip, port: Some(port) }, local: Peer { ip: lip, port: Some(lport) } })
}

/// A peer from `PAM_RHOST`, if it is an IP literal (optionally bracketed, optionally with an IPv6
/// zone), never by resolving a name.
pub fn peer_from_rhost(rhost: &str) -> Option<Peer> {
    let host = rhost.trim();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    parse_ip(host).map(|ip| Peer { ip, port: None })
}

/// A peer from a `struct sockaddr_in` or `sockaddr_in6` as the kernel wrote it (family in host
/// byte order, port and address in network byte order).
pub fn peer_from_sockaddr(raw: &[u8]) -> Option<Peer> {
    let family = u16::from_ne_bytes(raw.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
    let ip = match i32::from(family) {
        libc::AF_INET => IpAddr::from(<[u8; 4]>::try_from(raw.get(4..8)?).ok()?),
        libc::AF_INET6 => canonical(IpAddr::from(<[u8; 16]>::try_from(raw.get(8..24)?).ok()?)),
        _ => return None,
    };
    Some(Peer { ip, port: Some(port) })
}

/// Parses an IP address, dropping an IPv6 zone and showing v4-mapped IPv6 as IPv4.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = match text.split_once('%') {
        Some((addr, _zone)) if addr.contains(':') => addr,
        _ => text,
    };
    let ip: IpAddr = text.parse().ok()?;
    Some(canonical(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_from_sockaddrs() {
        let mut v4 = [0u8; 28];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&44013u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 5]);
        assert_eq!(peer_from_sockaddr(&v4), Some(Peer { ip: "127.0.0.5".parse().unwrap(), port: Some(44013) }));
        let mut v6 = [0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&50000u16.to_be_bytes());
        v6[8..24].copy_from_slice(&"2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(peer_from_sockaddr(&v6).unwrap().ip.to_string(), "2001:db8::7");
        v6[8..24].copy_from_slice(&"::ffff:198.51.100.4".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(peer_from_sockaddr(&v6).unwrap().ip.to_string(), "198.51.100.4");
        assert_eq!(peer_from_sockaddr(&[0u8; 28]), None, "AF_UNSPEC");
        assert_eq!(peer_from_sockaddr(&v4[..6]), None, "short");
    }

    #[test]
    fn ssh_connection_table() {
        let cases: &[(&str, Option<(&str, u16)>)] = &[
            ("127.0.0.5 44013 127.0.0.1 2222", Some(("127.0.0.5", 44013))),
            ("::1 50000 ::1 22", Some(("::1", 50000))),
            ("::ffff:203.0.113.7 52144 ::ffff:10.0.0.1 22", Some(("203.0.113.7", 52144))),
            ("fe80::1%eth0 1 fe80::2%eth0 22", Some(("fe80::1", 1))),
            ("203.0.113.7 99999 10.0.0.1 22", None),
            ("203.0.113.7 22", None),
            ("host.example 22 10.0.0.1 22", None),
            ("1.2.3.4 1 5.6.7.8 2 extra", None),
        ];
        for (input, want) in cases {
            let got = parse_ssh_connection(input).map(|c| (c.peer.ip.to_string(), c.peer.port.unwrap()));
            assert_eq!(got, want.map(|(ip, port)| (ip.to_string(), port)), "{input}");
        }
    }

    #[test]
    fn rhost_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("203.0.113.9", Some("203.0.113.9")),
            ("[2001:db8::5]", Some("2001:db8::5")),
            ("::ffff:198.51.100.4", Some("198.51.100.4")),
            ("attacker.example.com", None),
            ("", None),
            ("203.0.113.9\nfake", None),
        ];
        for (input, want) in cases {
            assert_eq!(peer_from_rhost(input).map(|p| p.ip.to_string()).as_deref(), *want, "{input:?}");
        }
    }
}
