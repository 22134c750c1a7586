//! Debian's nginx as a peer in benchmarks: a static upstream or a plain
//! reverse proxy, run in the foreground from a config in a private
//! directory, killed on drop.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running nginx (one worker) listening on loopback.
pub struct Nginx {
    child: Child,
    /// The listening address.
    pub addr: SocketAddr,
    dir: PathBuf,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

impl Nginx {
    /// nginx answering every request with 200 `ok\n`: the application
    /// behind every proxy in a benchmark.
    pub fn static_ok(dir: &Path) -> Self {
        Self::start(dir, "upstream", "location / { return 200 \"ok\\n\"; }", "")
    }

    /// nginx as a plain reverse proxy to `upstream`, without any
    /// authentication, with a keep-alive pool to the upstream: the peer the
    /// gateway's own proxying is measured against.
    pub fn proxy(dir: &Path, upstream: SocketAddr) -> Self {
        Self::start(
            dir,
            "proxy",
            "location / {
                proxy_pass http://app;
                proxy_http_version 1.1;
                proxy_set_header Connection \"\";
                proxy_set_header Host $host;
                proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            }",
            &format!(
                "upstream app {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}"
            ),
        )
    }

    fn start(dir: &Path, name: &str, location: &str, http_extra: &str) -> Self {
        let dir = dir.join(format!("nginx-{name}"));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.display();
        let config = format!(
            "daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    {http_extra}
    server {{
        listen {addr};
        {location}
    }}
}}
"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("nginx config");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start nginx (is it installed? `cargo xtask bench` installs it)");
        let mut nginx = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}): {}", nginx.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx is not listening: {}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// The pid of the worker process (the one that handles connections).
    pub fn worker_pid(&self) -> u32 {
        let children = format!("/proc/{0}/task/{0}/children", self.child.id());
        let text = std::fs::read_to_string(&children).expect("nginx children");
        text.split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("nginx has no worker yet: {}", self.error_log()))
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master stops its worker and
        // exits. SIGKILL to both if that takes too long.
        let worker =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id()))
                .unwrap_or_default();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in worker
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: the worker of our own child nginx.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
