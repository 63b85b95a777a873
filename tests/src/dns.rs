//! A DNS server on 127.0.0.1 that answers PTR queries from a table (reverse-DNS enrichment).

use super::*;

/// A DNS server on 127.0.0.1 for tests: answers PTR queries from a table, or never answers at all.
pub struct DnsServer {
    pub port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl DnsServer {
    /// Answers `PTR` queries for the addresses in `names`; NXDOMAIN for others.
    pub fn answering(names: &[(std::net::IpAddr, &str)]) -> Self {
        Self::spawn(Some(names.iter().map(|(ip, n)| (reverse_name(*ip), n.to_string())).collect()))
    }

    /// Receives queries and never answers.
    pub fn silent() -> Self {
        Self::spawn(None)
    }

    fn spawn(names: Option<Vec<(String, String)>>) -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding the test DNS server");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let port = socket.local_addr().expect("addr").port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Some(names) = &names else { continue };
                if let Some(reply) = dns_reply(&buf[..n], names) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Self { port, stop }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `7.100.51.198.in-addr.arpa` / nibble form for IPv6.
pub(crate) fn reverse_name(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(v6) => {
            let mut s: Vec<String> =
                v6.octets().iter().flat_map(|b| [b & 0xf, b >> 4]).rev().map(|n| format!("{n:x}")).collect();
            s.reverse();
            format!("{}.ip6.arpa", s.join("."))
        }
    }
}

/// Builds the answer to one DNS query (RFC 1035 wire format).
pub(crate) fn dns_reply(query: &[u8], names: &[(String, String)]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_lowercase());
        pos += len;
    }
    let question_end = pos + 4;
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let qname = labels.join(".");
    let answer = names.iter().find(|(q, _)| *q == qname).map(|(_, n)| n).filter(|_| qtype == 12);
    let mut r = Vec::with_capacity(128);
    r.extend_from_slice(&query[..2]); // id
    r.extend_from_slice(&[0x81, if answer.is_some() { 0x80 } else { 0x83 }]); // response, RA, NOERROR/NXDOMAIN
    r.extend_from_slice(&[0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
    r.extend_from_slice(query.get(12..question_end)?);
    if let Some(name) = answer {
        r.extend_from_slice(&[0xc0, 12, 0, 12, 0, 1, 0, 0, 0, 60]); // pointer to qname, PTR, IN, TTL 60
        let mut rdata = Vec::new();
        for label in name.trim_end_matches('.').split('.') {
            rdata.push(label.len() as u8);
            rdata.extend_from_slice(label.as_bytes());
        }
        rdata.push(0);
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&rdata);
    }
    Some(r)
}
