//! A real nginx for tests, from the Debian package: runs in the foreground
//! with every file (configuration, pid, logs, temp paths, a self-signed
//! certificate made by openssl) in its own temporary directory, on free
//! loopback ports. Clients are `curl` processes, which can speak TLS and
//! choose their loopback source address.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{DataDir, STARTUP_TIMEOUT, signal, wait_timeout};

pub struct Nginx {
    child: Child,
    dir: DataDir,
}

/// A port the OS says is free now; nginx binds it a moment later.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl Nginx {
    /// Starts nginx serving `site` (a server-level file, as in `deploy/`)
    /// inside a minimal `nginx.conf`, and waits until each of `ports` listens.
    /// `site` may name `{dir}`, replaced by the temporary directory.
    pub fn start(site: &str, ports: &[u16]) -> Nginx {
        let dir = DataDir::new("nginx");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("nginx temp dir");
        let root = dir.path().display().to_string();
        std::fs::write(dir.path().join("site.conf"), site.replace("{dir}", &root))
            .expect("write site.conf");
        let main = format!(
            "user root;\n\
             worker_processes 1;\n\
             pid {root}/nginx.pid;\n\
             error_log {root}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             access_log {root}/access.log;\n\
             client_body_temp_path {root}/tmp/body;\n\
             proxy_temp_path {root}/tmp/proxy;\n\
             fastcgi_temp_path {root}/tmp/fastcgi;\n\
             uwsgi_temp_path {root}/tmp/uwsgi;\n\
             scgi_temp_path {root}/tmp/scgi;\n\
             include {root}/site.conf;\n\
             }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), main).expect("write nginx.conf");
        let test = nginx(dir.path())
            .arg("-t")
            .output()
            .expect("run nginx -t (apt-get install nginx)");
        assert!(
            test.status.success(),
            "nginx -t: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let child = nginx(dir.path())
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx { child, dir };
        for &port in ports {
            nginx.wait_listening(port);
        }
        nginx
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn wait_listening(&self, port: u16) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port}: {}",
                std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown, which also stops its worker.
        signal(self.child.id(), "TERM");
        if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn nginx(dir: &Path) -> Command {
    let mut command = Command::new("nginx");
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"));
    command
}

/// A self-signed certificate and key for `localhost`, made in `dir`.
pub fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(output.status.success(), "openssl: {output:?}");
    (cert, key)
}

/// Runs curl from the loopback address `source` for each URL (one process,
/// one kept-alive connection), with these extra headers; the status codes.
pub fn curl_statuses(source: &str, headers: &[&str], urls: &[String]) -> Vec<u16> {
    let mut command = Command::new("curl");
    command.args([
        "--silent",
        "--insecure",
        "--max-time",
        "30",
        "--interface",
        source,
    ]);
    command.args(["--write-out", "%{http_code}\\n"]);
    for header in headers {
        command.args(["--header", header]);
    }
    for url in urls {
        command.args(["--output", "/dev/null", url]);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run curl");
    assert!(
        status.success(),
        "curl: {}",
        String::from_utf8_lossy(&stderr)
    );
    String::from_utf8_lossy(&stdout)
        .lines()
        .map(|code| code.parse().expect("a status code"))
        .collect()
}
