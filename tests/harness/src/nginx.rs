//! Debian's nginx running `deploy/nginx/threadcast.conf` for a test: the lines the file marks
//! `# test: ...` are pointed at the test's replicas, certificate and ports, every other line is
//! used as shipped. The process runs in a scratch folder and is killed on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::pki::CertFiles;
use crate::scratch::ScratchDir;

/// The shipped configuration, relative to the workspace.
pub const SITE_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/nginx/threadcast.conf"
);

fn nginx_binary() -> String {
    std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into())
}

/// A running nginx.
pub struct Nginx {
    /// The HTTPS port on 127.0.0.1.
    pub port: u16,
    dir: ScratchDir,
    child: Child,
}

impl Nginx {
    /// Starts nginx with the shipped site in front of `replicas`, serving `cert` on a free port.
    pub fn start(replicas: &[SocketAddr], cert: &CertFiles) -> Nginx {
        let dir = ScratchDir::new("threadcast-nginx");
        let port = free_port();
        let site = site_config(
            &std::fs::read_to_string(SITE_CONFIG).expect("read deploy/nginx/threadcast.conf"),
            replicas,
            port,
            free_port(),
            cert,
        );
        std::fs::write(dir.path().join("threadcast.conf"), site).expect("write the site");
        std::fs::write(dir.path().join("nginx.conf"), main_config(dir.path()))
            .expect("write nginx.conf");
        let conf = dir.path().join("nginx.conf");
        let test = Command::new(nginx_binary())
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {} (apt-get install nginx): {e}", nginx_binary())
            });
        assert!(
            test.status.success(),
            "nginx -t refuses the configuration:\n{}",
            String::from_utf8_lossy(&test.stderr)
        );
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx { port, dir, child };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not listen on {port} within 20 s; its error log:\n{}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// `https://localhost:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// The access log: one line per finished request, `protocol status "request" upstream`.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// The error log, for failure messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master runs in the foreground (daemon off) and takes its workers with it on SIGTERM.
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped site with its `# test:` lines replaced; panics if the file no longer has them, so
/// that the test and the file cannot drift apart silently.
pub fn site_config(
    shipped: &str,
    replicas: &[SocketAddr],
    port: u16,
    redirect_port: u16,
    cert: &CertFiles,
) -> String {
    let mut replica_lines = 0;
    let mut out = String::new();
    let mut seen = Vec::new();
    for line in shipped.lines() {
        let Some((directive, marker)) = line.split_once("# test: ") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let indent = &directive[..directive.len() - directive.trim_start().len()];
        let marker = marker.trim();
        seen.push(marker.to_owned());
        let replacement = match marker {
            "replica" => {
                replica_lines += 1;
                // All replicas replace the first marked line; the others go.
                if replica_lines > 1 {
                    continue;
                }
                let kept = directive.trim().splitn(3, ' ').nth(2).unwrap_or(";");
                replicas
                    .iter()
                    .map(|r| format!("server {r} {kept}"))
                    .collect::<Vec<_>>()
                    .join(&format!("\n{indent}"))
            }
            "listen" => format!("listen 127.0.0.1:{port} ssl http2;"),
            "certificate" => format!("ssl_certificate {};", cert.cert.display()),
            "key" => format!("ssl_certificate_key {};", cert.key.display()),
            "redirect" => format!("listen 127.0.0.1:{redirect_port};"),
            "listen6" | "redirect6" => continue,
            other => panic!("unknown test marker {other:?} in {SITE_CONFIG}"),
        };
        out.push_str(indent);
        out.push_str(&replacement);
        out.push('\n');
    }
    for marker in [
        "replica",
        "listen",
        "listen6",
        "certificate",
        "key",
        "redirect",
        "redirect6",
    ] {
        assert!(
            seen.iter().any(|m| m == marker),
            "{SITE_CONFIG} no longer marks its {marker:?} line for the test"
        );
    }
    out
}

/// A main configuration around the site: foreground, files in `dir`, and an access log that
/// shows each request's protocol.
fn main_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
           log_format threadcast '$server_protocol $status \"$request\" $upstream_addr';\n\
           access_log {d}/access.log threadcast;\n\
           client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n\
           include {d}/threadcast.conf;\n\
         }}\n"
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}
