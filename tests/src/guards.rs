//! RAII guards for what a test creates on the host: the lab directory, PAM service files, users,
//! and the private libpam copy.

use super::*;

/// A scratch directory, removed on drop.
pub struct Lab {
    pub dir: PathBuf,
}

impl Lab {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("notifier-lab-"));
        fs::create_dir_all(&dir).expect("creating lab dir");
        Self { dir }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `/etc/pam.d/<name>` that permits everything, removed on drop.
pub struct PamService {
    pub name: String,
    path: PathBuf,
}

impl PamService {
    pub fn permit(prefix: &str) -> Self {
        let name = unique(prefix);
        let path = Path::new("/etc/pam.d").join(&name);
        fs::write(
            &path,
            "auth required pam_permit.so\naccount required pam_permit.so\nsession required pam_permit.so\n",
        )
        .expect("writing PAM service");
        Self { name, path }
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A local user with a home directory, removed (with the home) on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl TestUser {
    pub fn new() -> Self {
        let name = unique("ntu");
        // Password "*": no password logs in, but the account is not locked ("!"), which sshd
        // refuses for key logins too when it runs without PAM.
        run(Command::new("useradd").args(["-m", "-s", "/bin/bash", "-p", "*", &name]));
        let id = |flag: &str| run(Command::new("id").args([flag, &name])).trim().parse().expect("numeric id");
        let home = PathBuf::from(format!("/home/{name}"));
        Self { uid: id("-u"), gid: id("-g"), name, home }
    }

    pub fn set_password(&self, password: &str) {
        use std::io::Write as _;
        let mut child = Command::new("chpasswd").stdin(Stdio::piped()).spawn().expect("chpasswd");
        writeln!(child.stdin.take().expect("stdin"), "{}:{password}", self.name).expect("writing to chpasswd");
        assert!(child.wait().expect("chpasswd").success());
    }

    pub fn authorize_key(&self, pubkey: &Path) {
        let ssh = self.home.join(".ssh");
        let (uid, gid) = (self.uid.to_string(), self.gid.to_string());
        run(Command::new("install").args(["-d", "-m", "700", "-o", &uid, "-g", &gid]).arg(&ssh));
        run(Command::new("install")
            .args(["-m", "600", "-o", &uid, "-g", &gid])
            .arg(pubkey)
            .arg(ssh.join("authorized_keys")));
    }
}

impl Default for TestUser {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Processes of the user (a lingering session) would make userdel fail.
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.name]).status();
        let _ = Command::new("userdel").args(["-r", &self.name]).stderr(Stdio::null()).status();
    }
}

/// A private copy of the system libpam, so a test's probes see only its own PAM traffic.
pub fn private_libpam(lab: &Lab) -> PathBuf {
    let system =
        ["/lib/x86_64-linux-gnu/libpam.so.0", "/usr/lib/x86_64-linux-gnu/libpam.so.0", "/usr/lib64/libpam.so.0"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("system libpam (install libpam0g)");
    let copy = lab.path("libpam.so.0");
    fs::copy(system, &copy).expect("copying libpam");
    copy
}
