//! A real reverse proxy in front of a test server: Debian's nginx
//! (installed by `tests/nginx/setup.sh`), run on loopback from a
//! configuration written into a temporary directory, as one process (no
//! daemon, no master), and killed by its PID when dropped.
//!
//! It proxies as a TLS-terminating site proxy is usually set up: it
//! appends the address it sees to `X-Forwarded-For`
//! (`$proxy_add_x_forwarded_for`), says `X-Forwarded-Proto: https`, keeps
//! `Host`, and passes WebSocket upgrades on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long nginx may take to listen.
const START_LIMIT: Duration = Duration::from_secs(20);

/// `tests/nginx`.
fn nginx_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx")
}

/// The nginx binary: `NGINX`, or Debian's.
fn nginx_bin() -> String {
    std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".to_owned())
}

/// Runs `setup.sh` once per test process; every test that needs nginx
/// fails with its output when it could not install it.
pub fn prerequisites() {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = SETUP.get_or_init(|| {
        let output = std::process::Command::new("bash")
            .arg(nginx_dir().join("setup.sh"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run tests/nginx/setup.sh: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tests/nginx/setup.sh failed ({}); the proxy tests need nginx:\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(message) = outcome {
        panic!("{message}");
    }
}

/// A running nginx.
pub struct Nginx {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx on a free loopback port, proxying everything to `upstream`
    /// (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> Self {
        prerequisites();
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/');
        let mut last_error = String::new();
        // A free port may be taken between asking and binding: try again.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("tandem-nginx-")
                .tempdir()
                .expect("temp dir");
            let port = free_port();
            let config = dir.path().join("nginx.conf");
            std::fs::write(&config, configuration(dir.path(), port, upstream))
                .expect("write nginx.conf");
            let error_log = dir.path().join("error.log");
            let child = Command::new(nginx_bin())
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(&error_log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start nginx");
            let mut nginx = Nginx {
                url: format!("http://127.0.0.1:{port}"),
                child,
                dir,
            };
            match nginx.wait_until_listening(port).await {
                Ok(()) => return nginx,
                Err(error) => last_error = error,
            }
        }
        panic!("nginx did not start: {last_error}");
    }

    async fn wait_until_listening(&mut self, port: u16) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("nginx exited ({status}): {}", self.error_log()));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > START_LIMIT {
                return Err(format!(
                    "not listening after {START_LIMIT:?}: {}",
                    self.error_log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What nginx logged (warnings and errors).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// `ws://127.0.0.1:PORT/v1/ws`
    pub fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http://", "ws://", 1))
    }

    /// Stops nginx (by its PID) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn configuration(dir: &Path, port: u16, upstream: &str) -> String {
    let dir = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 60s;
        }}
    }}
}}
"#
    )
}
