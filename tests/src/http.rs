//! An HTTP receiver on 127.0.0.1 that records each request and answers with scripted statuses.

use super::*;

/// One HTTP request as a receiver saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the receiver answered with.
    pub status: u16,
    /// Which of the service's rules the request broke (it was answered with 400).
    pub rejected: Option<String>,
    /// When the request was read.
    pub received: std::time::SystemTime,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body of {} is not JSON: {e}", self.path))
    }
    /// The body as `application/x-www-form-urlencoded` pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }
}

/// An HTTP/1.1 receiver on 127.0.0.1 that records every request and answers with scripted
/// statuses (then 200). A request to a known service's path must follow that service's rules
/// ([`crate::rules`]), or gets its 400.
pub struct HttpReceiver {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// What the receiver's threads share.
#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Request>>,
    script: Mutex<std::collections::VecDeque<u16>>,
    /// Pushover's monthly quota: messages it accepts before every further one gets 429.
    pushover_quota: Mutex<Option<usize>>,
}

impl HttpReceiver {
    pub fn start() -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").expect("binding the receiver"))
    }

    /// A receiver on a given port (to bring a "down" receiver up).
    pub fn on_port(port: u16) -> Self {
        Self::on(TcpListener::bind(("127.0.0.1", port)).expect("binding the receiver port"))
    }

    fn on(listener: TcpListener) -> Self {
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (state, stopped) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let state = Arc::clone(&state);
                        std::thread::spawn(move || serve(stream, &state));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, shared, stop }
    }

    /// As Pushover does once an application's monthly messages are spent: after `accepted`
    /// messages, a 429 with `X-Limit-App-Remaining: 0` for every one.
    pub fn pushover_quota(&self, accepted: usize) {
        *self.shared.pushover_quota.lock().expect("lock") = Some(accepted);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next responses' statuses, in order (200 after them).
    pub fn respond_with(&self, statuses: &[u16]) {
        self.shared.script.lock().expect("lock").extend(statuses);
    }

    /// Drops the statuses not yet used (from now on every answer is 200); returns how many.
    pub fn clear_script(&self) -> usize {
        let mut script = self.shared.script.lock().expect("lock");
        let n = script.len();
        script.clear();
        n
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for the requests so far, or `timeout` passes.
    pub fn wait(&self, timeout: Duration, done: impl Fn(&[Request]) -> bool) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if done(&reqs) || Instant::now() > deadline {
                return reqs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: std::net::TcpStream, shared: &Shared) {
    use std::io::{Read as _, Write as _};
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (first.next().unwrap_or_default().to_string(), first.next().unwrap_or_default().to_string());
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))).collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    // A scripted status first; else the service's own rules, and Pushover's quota.
    let service = crate::rules::Service::of(&path);
    let mut reason = None;
    let mut extra = String::new();
    let status = match shared.script.lock().expect("lock").pop_front() {
        Some(status) => status,
        None => match service.map(|s| crate::rules::check(s, &headers, &body)) {
            Some(Err(why)) => {
                reason = Some(why);
                400
            }
            _ if service == Some(crate::rules::Service::Pushover) => {
                let quota = *shared.pushover_quota.lock().expect("lock");
                let requests = shared.requests.lock().expect("lock");
                let accepted = requests.iter().filter(|r| r.status == 200 && r.path == path).count();
                drop(requests);
                match quota {
                    Some(limit) if accepted >= limit => {
                        reason = Some("application has exceeded its monthly message limit".into());
                        extra = format!("X-Limit-App-Limit: {limit}\r\nX-Limit-App-Remaining: 0\r\n");
                        429
                    }
                    Some(limit) => {
                        extra = format!(
                            "X-Limit-App-Limit: {limit}\r\nX-Limit-App-Remaining: {}\r\n",
                            limit - accepted - 1
                        );
                        200
                    }
                    None => 200,
                }
            }
            _ => 200,
        },
    };
    let answer = match &reason {
        _ if status == 200 => r#"{"status":1,"ok":true}"#.to_string(),
        Some(why) => serde_json::json!({ "status": 0, "ok": false, "errors": [why], "description": why }).to_string(),
        None => r#"{"status":0,"errors":["scripted"]}"#.to_string(),
    };
    shared.requests.lock().expect("lock").push(Request {
        method,
        path,
        headers,
        body,
        status,
        rejected: reason,
        received: std::time::SystemTime::now(),
    });
    // A scripted redirect points at another path of this receiver, as an http-to-https move would.
    let location = if (300..400).contains(&status) { "Location: /moved-here\r\n" } else { "" };
    // A scripted 429 asks for a 2 s pause, as Slack, Discord and Telegram do.
    let retry_after = if status == 429 && extra.is_empty() { "Retry-After: 2\r\n" } else { "" };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} Scripted\r\n{location}{retry_after}{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// A port on 127.0.0.1 with nothing listening (until a test binds it).
/// The body of `GET path` from an HTTP server on 127.0.0.1:`port`.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}
