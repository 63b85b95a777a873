//! The syslog sink. To the local socket (`unix:/dev/log`) it writes the BSD form (RFC 3164, as
//! glibc's `syslog()` does: `<PRI>Mmm dd hh:mm:ss notifier[PID]: message`), which is what journald
//! and rsyslog parse there; RFC 5424 there would arrive with no program name and its header inside
//! the message. To a remote collector over UDP or TCP (octet-counted framing, RFC 6587) it writes
//! RFC 5424. Event data goes into structured-data parameters (in the BSD form, `key="value"`
//! pairs after the text), escaped as RFC 5424 requires (`"`, `\` and `]`), and control characters
//! are escaped, so one alert is always one record.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt as _;

use super::{message::Templates, sink::SinkError, Alert};
use crate::config::sink::SyslogAddress as Address;

pub struct SyslogSink {
    pub address: Address,
    pub facility: u8,
    pub templates: Templates,
}

/// Escapes a structured-data parameter value: `"`, `\\` and `]` as RFC 5424 requires, and control
/// characters visibly, so a record never spans lines.
fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A header field: printable US-ASCII without spaces, or `-`.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if f.is_empty() {
        "-".into()
    } else {
        f
    }
}

/// Every alert is a warning.
const SEVERITY: u16 = 4;

/// The event's fields as `key="value"` pairs, escaped as RFC 5424 structured data.
fn params(alert: &Alert) -> String {
    let mut sd = format!("kind=\"{}\"", sd_escape(&format!("{:?}", alert.kind).to_lowercase()));
    let mut param = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            sd.push_str(&format!(" {k}=\"{}\"", sd_escape(&v)));
        }
    };
    param("id", Some(alert.id.clone()));
    param("verdict", alert.verdict.map(|v| v.as_str().to_string()));
    param("user", alert.user.clone());
    param("ip", alert.ip.map(|i| i.to_string()));
    param("port", alert.port.map(|p| p.to_string()));
    param("service", alert.service.clone());
    param("country", alert.country.clone());
    param("asn", alert.asn.map(|a| a.to_string()));
    sd
}

/// The rendered body on one line.
fn text(alert: &Alert, templates: &Templates) -> String {
    let msg = templates.render(alert);
    msg.body.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// One RFC 5424 record for `alert`.
pub fn format(alert: &Alert, facility: u8, templates: &Templates) -> String {
    let (sd, text) = (params(alert), text(alert, templates));
    format!(
        "<{}>1 {} {} notifier {} {} [notifier@32473 {sd}] {text}",
        u16::from(facility) * 8 + SEVERITY,
        header_field(&alert.time, 64),
        header_field(&alert.host, 255),
        std::process::id(),
        header_field(&format!("{:?}", alert.kind).to_lowercase(), 32),
    )
}

/// One BSD (RFC 3164) record for `alert`, for the local socket, stamped `now` (UTC; journald and
/// rsyslog keep their own receive time).
pub fn format_bsd(alert: &Alert, facility: u8, templates: &Templates, now: time::OffsetDateTime) -> String {
    let stamp = time::macros::format_description!("[month repr:short] [day padding:space] [hour]:[minute]:[second]");
    format!(
        "<{}>{} notifier[{}]: {} [{}]",
        u16::from(facility) * 8 + SEVERITY,
        now.format(&stamp).unwrap_or_default(),
        std::process::id(),
        text(alert, templates),
        params(alert),
    )
}

impl SyslogSink {
    pub async fn send(&self, alert: &Alert) -> Result<(), SinkError> {
        let record = match self.address {
            Address::Unix(_) => format_bsd(alert, self.facility, &self.templates, time::OffsetDateTime::now_utc()),
            _ => format(alert, self.facility, &self.templates),
        };
        let transient = |what: &str, e: std::io::Error| SinkError::transient(format!("syslog {what}: {e}"));
        match &self.address {
            Address::Unix(path) => {
                let socket = tokio::net::UnixDatagram::unbound().map_err(|e| transient("socket", e))?;
                socket.send_to(record.as_bytes(), path).await.map_err(|e| transient(&path.display().to_string(), e))?;
            }
            Address::Udp(addr) => {
                let bind: SocketAddr =
                    if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
                let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| transient("socket", e))?;
                socket.send_to(record.as_bytes(), addr).await.map_err(|e| transient(&addr.to_string(), e))?;
            }
            Address::Tcp(addr) => {
                let mut stream =
                    tokio::net::TcpStream::connect(addr).await.map_err(|e| transient(&addr.to_string(), e))?;
                let framed = format!("{} {record}", record.len());
                stream.write_all(framed.as_bytes()).await.map_err(|e| transient(&addr.to_string(), e))?;
                stream.shutdown().await.map_err(|e| transient(&addr.to_string(), e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{internal_alert, AlertKind};

    #[test]
    fn record_is_rfc5424_with_escaped_data() {
        let mut a = internal_alert(AlertKind::Login, "web 1", "new network".into());
        a.time = "2026-11-24T18:07:50.123Z".into();
        a.user = Some("ev\"il]\\\nx".into());
        a.ip = Some("203.0.113.7".parse().unwrap());
        let r = format(&a, 10, &Templates::default());
        assert!(r.starts_with("<84>1 2026-11-24T18:07:50.123Z web1 notifier "), "{r}");
        assert!(r.contains(r#" user="ev\"il\]\\"#), "{r}");
        assert!(r.contains(r#"ip="203.0.113.7""#), "{r}");
        assert!(!r.contains('\n'), "one record is one line: {r:?}");
    }

    #[test]
    fn the_local_socket_gets_the_bsd_form_with_program_name_and_pid() {
        let mut a = internal_alert(AlertKind::Login, "web-1", "new network".into());
        a.user = Some("ev\"il\nx".into());
        let now = time::macros::datetime!(2026-12-05 09:04:05 UTC);
        let r = format_bsd(&a, 10, &Templates::default(), now);
        let head = format!("<84>Dec  5 09:04:05 notifier[{}]: ", std::process::id());
        assert!(r.starts_with(&head), "{r}");
        assert!(r.ends_with(r#"user="ev\"il\nx"]"#), "{r}");
        assert!(!r.contains('\n'), "one record is one line: {r:?}");
    }

    #[test]
    fn addresses_and_facilities() {
        assert_eq!("unix:/dev/log".parse::<Address>(), Ok(Address::Unix("/dev/log".into())));
        assert_eq!("udp:127.0.0.1:514".parse::<Address>(), Ok(Address::Udp("127.0.0.1:514".parse().unwrap())));
        assert!("tcp:logs.example.com:514".parse::<Address>().is_err());
        assert_eq!(crate::config::sink::syslog_facility("authpriv"), Ok(10));
        assert!(crate::config::sink::syslog_facility("kern").is_err());
    }
}
