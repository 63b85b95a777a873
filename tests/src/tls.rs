//! A certificate authority made by the test with `openssl`, and certificates it signs: for an
//! HTTPS receiver, a NATS server, and a NATS client (mTLS). EC P-256 keys, valid for a day.

use super::*;

/// A CA in `lab`: `NAME.pem` and `NAME.key`.
pub struct TestCa {
    pub cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

const EC: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

impl TestCa {
    pub fn new(lab: &Lab, name: &str) -> Self {
        let (cert, key) = (lab.path(&format!("{name}.pem")), lab.path(&format!("{name}.key")));
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(EC)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-days", "1", "-subj", &format!("/CN=notifier test CA {name}")]));
        Self { cert, key, dir: lab.dir.clone() }
    }

    /// A certificate for 127.0.0.1 (a server's, or a client's when `client`): (cert, key).
    pub fn issue(&self, name: &str, client: bool) -> (PathBuf, PathBuf) {
        let p = |ext: &str| self.dir.join(format!("{name}.{ext}"));
        run(Command::new("openssl")
            .arg("req")
            .args(EC)
            .arg("-keyout")
            .arg(p("key"))
            .arg("-out")
            .arg(p("csr"))
            .args(["-subj", &format!("/CN={name}")]));
        let usage = if client { "clientAuth" } else { "serverAuth" };
        fs::write(
            p("ext"),
            format!("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"),
        )
        .expect("ext");
        run(Command::new("openssl")
            .args(["x509", "-req", "-in"])
            .arg(p("csr"))
            .arg("-CA")
            .arg(&self.cert)
            .arg("-CAkey")
            .arg(&self.key)
            .args(["-CAcreateserial", "-days", "1", "-out"])
            .arg(p("pem"))
            .arg("-extfile")
            .arg(p("ext")));
        (p("pem"), p("key"))
    }
}
