//! The email sink: SMTP through lettre, plain, STARTTLS or implicit TLS, with optional
//! authentication and several recipients. Header values are built by lettre, and the subject is
//! stripped of control characters first, so a user name with CRLF cannot add a header.

use std::time::Duration;

use lettre::{
    message::{Mailbox, SinglePart},
    transport::smtp::{authentication::Credentials, extension::ClientId},
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
};

use super::{
    message::Templates,
    sink::{BuildError, SinkError},
    Alert,
};
use crate::config::sink::{RawSink, Tls};

pub struct EmailSink {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    templates: Templates,
}

impl EmailSink {
    pub fn build(raw: &RawSink, templates: Templates) -> Result<Self, BuildError> {
        let invalid = |key: &'static str| {
            move |e: lettre::transport::smtp::Error| BuildError::Invalid { key, reason: e.to_string() }
        };
        let server = raw.server.clone().ok_or(BuildError::Missing("server"))?;
        let tls = raw.tls.unwrap_or_default();
        let mut builder = match tls {
            Tls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.as_str()),
            Tls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&server).map_err(invalid("server"))?
            }
            Tls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&server).map_err(invalid("server"))?,
        };
        let default_port = match tls {
            Tls::None => 25,
            Tls::Starttls => 587,
            Tls::Tls => 465,
        };
        builder = builder.port(raw.port.unwrap_or(default_port)).timeout(Some(Duration::from_secs(20)));
        if let Some(user) = &raw.username {
            let password = raw
                .password
                .as_ref()
                .ok_or(BuildError::Invalid { key: "username", reason: "`username` needs `password`".into() })?
                .resolve()
                .map_err(|source| BuildError::Secret { key: "password", source })?;
            builder = builder.credentials(Credentials::new(user.clone(), password.0));
        }
        let mailbox = |key: &'static str, s: &str| {
            s.parse::<Mailbox>()
                .map_err(|e| BuildError::Invalid { key, reason: format!("{s:?} is not an email address: {e}") })
        };
        let from = mailbox("from", raw.from.as_deref().ok_or(BuildError::Missing("from"))?)?;
        // An MTA that wants a fully qualified EHLO name refuses a bare host name with 504: use the
        // configured name, else this host's if it is qualified, else the sender's domain.
        let ehlo = raw.ehlo_name.clone().unwrap_or_else(|| {
            let host = crate::procinfo::host_context().host;
            if host.contains('.') {
                host
            } else {
                from.email.domain().to_string()
            }
        });
        builder = builder.hello_name(ClientId::Domain(ehlo));
        let to = raw.to.clone().unwrap_or_default().iter().map(|t| mailbox("to", t)).collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(BuildError::Invalid { key: "to", reason: "lists no recipient".into() });
        }
        Ok(Self { transport: builder.build(), from, to, templates })
    }

    pub async fn send(&self, alert: &Alert) -> Result<(), SinkError> {
        let msg = self.templates.render(alert);
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(one_line(&msg.title))
            // RFC 5322: the right-hand side is a domain; the sender's is the one this message may
            // claim.
            .message_id(Some(format!(
                "<{}@{}>",
                alert.id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', ""),
                self.from.email.domain()
            )));
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        // A MIME single part: `MIME-Version: 1.0`, text/plain in UTF-8 and a transfer encoding
        // that fits the text.
        let message = builder
            .singlepart(SinglePart::plain(msg.body))
            .map_err(|e| SinkError::permanent(format!("building the email: {e}")))?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| {
            if e.is_permanent() {
                SinkError::permanent(format!("SMTP: {e}"))
            } else {
                SinkError::transient(format!("SMTP: {e}"))
            }
        })
    }
}

/// A header value on one line: control characters (CR, LF, …) become visible escapes.
pub fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_cannot_carry_a_header() {
        assert_eq!(one_line("evil\r\nBcc: x@example.com"), "evil\\r\\nBcc: x@example.com");
    }
}
