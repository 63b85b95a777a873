//! NATS decentralised auth for the tests: an operator, an account with JetStream, and users with
//! `.creds` files, signed as `nsc` signs them (JWT with `alg: ed25519-nkey`), so that a server in
//! operator mode checks real credential files.

use base64::Engine as _;
use nkeys::KeyPair;
use serde_json::{json, Value};

/// An operator, one account it signed, and the system account JetStream needs.
pub struct Operator {
    operator: KeyPair,
    account: KeyPair,
    system: KeyPair,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT of `claims` about `subject`, issued by `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = json!({
        "jti": format!("{subject}-{iat}-{name}"),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(body.as_bytes()).expect("signing");
    format!("{body}.{}", b64(&signature))
}

const NO_LIMIT: i64 = -1;

impl Operator {
    pub fn new() -> Self {
        Self { operator: KeyPair::new_operator(), account: KeyPair::new_account(), system: KeyPair::new_account() }
    }

    /// The server's config: this operator, its account preloaded with JetStream unlimited, and
    /// the system account.
    pub fn server_config(&self) -> String {
        let operator = jwt(&self.operator, &self.operator.public_key(), "O", json!({"type": "operator", "version": 2}));
        let account = jwt(
            &self.operator,
            &self.account.public_key(),
            "FLEET",
            json!({
                "type": "account", "version": 2,
                "limits": {
                    "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT, "imports": NO_LIMIT,
                    "exports": NO_LIMIT, "wildcards": true, "conn": NO_LIMIT, "leaf": NO_LIMIT,
                    "mem_storage": NO_LIMIT, "disk_storage": NO_LIMIT, "streams": NO_LIMIT,
                    "consumer": NO_LIMIT,
                },
            }),
        );
        let system = jwt(&self.operator, &self.system.public_key(), "SYS", json!({"type": "account", "version": 2}));
        format!(
            "operator: \"{operator}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
             resolver_preload: {{ {}: \"{account}\", {sys}: \"{system}\" }}\n",
            self.account.public_key(),
            sys = self.system.public_key(),
        )
    }

    /// A `.creds` file's text for a new user of this operator's account. `publish`: the subjects
    /// it may publish to (and it subscribes to its inboxes only); `None`: anything.
    pub fn creds(&self, name: &str, publish: Option<&[String]>) -> String {
        user_creds(&self.account, name, publish)
    }

    /// A `.creds` file's text for a user of an account the server has never been told of.
    pub fn unknown_account_creds(name: &str) -> String {
        user_creds(&KeyPair::new_account(), name, None)
    }
}

fn user_creds(account: &KeyPair, name: &str, publish: Option<&[String]>) -> String {
    let user = KeyPair::new_user();
    let mut nats = json!({
        "type": "user", "version": 2,
        "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT,
    });
    if let Some(allow) = publish {
        nats["pub"] = json!({ "allow": allow });
        nats["sub"] = json!({ "allow": ["_INBOX.>"] });
    }
    let token = jwt(account, &user.public_key(), name, nats);
    format!(
        "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().expect("seed")
    )
}

impl Default for Operator {
    fn default() -> Self {
        Self::new()
    }
}
