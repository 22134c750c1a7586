//! A real headless browser for the tests: Debian's Chromium driven through
//! chromedriver (WebDriver) with `fantoccini`. Flows the gateway must get
//! right for people, not just for HTTP clients (login redirects, forms,
//! cookies with their attributes as a browser enforces them), are checked by
//! the browser that people use.
//!
//! Each [`Browser`] has its own chromedriver, its own Chromium and its own
//! temporary profile (and `HOME`), so tests run in parallel without sharing
//! state. Chromedriver runs in a process group of its own that Chromium and
//! all its helpers inherit: dropping a [`Browser`] (also while a failed test
//! unwinds) ends the session, kills the whole group and removes the profile.
//!
//! Every call is bounded: a browser that hangs fails the test with what it
//! was doing instead of stalling the run.

use std::{
    fs::File,
    future::Future,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{
    Client, ClientBuilder, Locator, elements::Element, error::CmdError,
    wd::WebDriverCompatibleCommand,
};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// The Chromium binary itself. Not the `/usr/bin/chromium` wrapper: that
/// script sources `/etc/chromium.d`, which adds flags of its own (remote
/// extensions, extensions to load) and prints shell errors on some
/// machines; chromedriver passes everything the session needs.
const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// Chromedriver's start and the new session (Chromium's first start
/// included). Generous: on a loaded two-core machine a cold start has taken
/// several seconds.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Any single WebDriver command, page loads included.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// [`Browser::wait_for_url`]: redirects between local servers take
/// milliseconds; this only bounds a test that went wrong.
const URL_TIMEOUT: Duration = Duration::from_secs(15);

/// After a click that did not navigate at once, how long [`Browser::click`]
/// still watches for a navigation started by the page's own script.
const CLICK_GRACE: Duration = Duration::from_millis(500);

/// A cookie as the browser holds it, for asserting the attributes the
/// browser enforces (a Set-Cookie header only says what a server asked for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
    /// Hidden from the page's scripts.
    pub http_only: bool,
    /// Sent over HTTPS only.
    pub secure: bool,
    /// `Strict`, `Lax` or `None` as Chromium reports it (Chromium reports
    /// `Lax` for a cookie that set none).
    pub same_site: Option<String>,
    /// Path.
    pub path: String,
    /// Domain exactly as Chromium reports it: the bare host for a host-only
    /// cookie, a leading dot for one set with `Domain=`.
    pub domain: String,
    /// Expiry in seconds since the epoch; `None` for a session cookie.
    pub expiry: Option<u64>,
}

/// A headless Chromium under chromedriver, both processes killed on drop.
pub struct Browser {
    client: Client,
    /// For ending the session from `Drop`, where nothing async can run.
    session: String,
    /// Set once [`Browser::close`] ended the session itself.
    closed: bool,
    driver: Driver,
}

/// The chromedriver process group (Chromium and its helpers included) and
/// the temporary directory they use. Separate from [`Browser`] so the
/// processes are killed even when starting the session fails half way.
struct Driver {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium
    /// session with: a fresh temporary profile, `--headless=new`,
    /// `--no-sandbox` (we run as root), `--disable-gpu`,
    /// `--ignore-certificate-errors` (every TLS server in the tests uses a
    /// throwaway test CA), `--host-resolver-rules` mapping each name of
    /// `resolve` to its address (so `https://app.test:PORT/` reaches a test
    /// server on loopback with the host name the gateway routes on), and no
    /// first-run or default-browser noise. Fails loudly naming `cargo xtask
    /// setup` if chromium or chromedriver is missing.
    pub async fn start(resolve: &[(&str, IpAddr)]) -> Self {
        let chromedriver = find_chromedriver();
        assert!(
            Path::new(CHROMIUM).is_file(),
            "{CHROMIUM} not found: the browser tests need Debian's chromium package. \
             Run `cargo xtask setup`."
        );
        let dir = tempfile::Builder::new()
            .prefix("gateway-browser-")
            .tempdir()
            .expect("browser temporary directory");
        let home = dir.path().join("home");
        let profile = dir.path().join("profile");
        std::fs::create_dir(&home).expect("browser HOME");
        std::fs::create_dir(&profile).expect("browser profile");
        let output = File::create(dir.path().join("output.log")).expect("browser output log");

        let mut child = Command::new(&chromedriver)
            .arg("--port=0")
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            // Chromium inherits it: nothing of the user's (or root's) own
            // configuration, caches or crash reports is read or written.
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(output)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let stdout = child.stdout.take().expect("chromedriver stdout");
        let mut driver = Driver {
            child,
            port: 0,
            dir,
        };
        driver.port = match tokio::time::timeout(START_TIMEOUT, announced_port(stdout)).await {
            Ok(Some(port)) => port,
            Ok(None) => panic!(
                "chromedriver exited before listening\n{}",
                driver.diagnostics()
            ),
            Err(_) => panic!(
                "chromedriver did not listen within {START_TIMEOUT:?}\n{}",
                driver.diagnostics()
            ),
        };

        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities(&profile, resolve));
        let url = format!("http://127.0.0.1:{}", driver.port);
        let client = match tokio::time::timeout(START_TIMEOUT, builder.connect(&url)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!(
                "chromedriver could not start Chromium: {e}\n{}",
                driver.diagnostics()
            ),
            Err(_) => panic!(
                "Chromium did not start within {START_TIMEOUT:?}\n{}",
                driver.diagnostics()
            ),
        };
        let session =
            client.session_id().await.ok().flatten().unwrap_or_else(|| {
                panic!("chromedriver gave no session id\n{}", driver.diagnostics())
            });
        Self {
            client,
            session,
            closed: false,
            driver,
        }
    }

    /// Loads `url` and waits for the page to finish loading.
    pub async fn goto(&self, url: &str) {
        step(&format!("goto {url}"), self.client.goto(url)).await;
    }

    /// The URL of the page shown now, after any redirects.
    pub async fn current_url(&self) -> String {
        step("current URL", self.client.current_url())
            .await
            .to_string()
    }

    /// The visible text of the page body, as a person reads it (hidden
    /// elements left out, block elements on their own lines).
    pub async fn text(&self) -> String {
        let body = self.find("body").await;
        step("text of body", body.text()).await
    }

    /// Types `value` into the input found by CSS selector, key by key as a
    /// person would (the page's input events fire), after clearing what it
    /// held. Waits (bounded) for the input to appear.
    pub async fn fill(&self, css: &str, value: &str) {
        let input = self.find(css).await;
        step(&format!("clear {css}"), input.clear()).await;
        step(&format!("type into {css}"), input.send_keys(value)).await;
    }

    /// Clicks the element found by CSS selector and waits for the
    /// navigation it caused (a form submission and its redirects) to
    /// settle: the new page loaded, or no navigation within a short grace
    /// period for a click that only runs script.
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        // A mark on the current document: gone once another one is shown.
        step(
            "mark the page",
            self.client
                .execute("window.__gatewayTestsClickMark = true;", vec![]),
        )
        .await;
        step(&format!("click {css}"), element.click()).await;
        self.settle(css).await;
    }

    /// Waits (bounded) until the current URL starts with `prefix`; fails
    /// with the current URL and page text when it does not.
    pub async fn wait_for_url(&self, prefix: &str) {
        let deadline = Instant::now() + URL_TIMEOUT;
        loop {
            // During a navigation the URL cannot always be read: try again.
            if let Ok(Ok(url)) =
                tokio::time::timeout(COMMAND_TIMEOUT, self.client.current_url()).await
                && url.as_str().starts_with(prefix)
            {
                return;
            }
            if Instant::now() >= deadline {
                let url = self.current_url().await;
                let text = self.text().await;
                panic!(
                    "the browser is not at {prefix}... after {URL_TIMEOUT:?}: it shows {url}\n\
                     --- page text ---\n{text}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The browser's cookies for the current page, with the attributes the
    /// browser recorded. Includes `HttpOnly` ones, which the page's own
    /// scripts cannot see.
    pub async fn cookies(&self) -> Vec<Cookie> {
        let raw = step("cookies", self.client.issue_cmd(GetCookies)).await;
        let Value::Array(cookies) = raw else {
            panic!("chromedriver returned cookies as {raw}");
        };
        cookies
            .iter()
            .map(|c| Cookie {
                name: string(c, "name"),
                value: string(c, "value"),
                http_only: c["httpOnly"].as_bool().unwrap_or(false),
                secure: c["secure"].as_bool().unwrap_or(false),
                same_site: c["sameSite"].as_str().map(str::to_owned),
                path: string(c, "path"),
                domain: string(c, "domain"),
                expiry: c["expiry"].as_u64(),
            })
            .collect()
    }

    /// Saves a PNG screenshot of the page to `path`, for seeing why a test
    /// failed.
    pub async fn screenshot(&self, path: &Path) {
        let png = step("screenshot", self.client.screenshot()).await;
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Ends the session (Chromium quits the ordinary way) and chromedriver,
    /// and removes the profile. Dropping does the same, bluntly.
    pub async fn close(mut self) {
        step("close the session", self.client.clone().close()).await;
        self.closed = true;
    }

    /// The element found by CSS selector, waiting (bounded) for it to
    /// appear: a page just navigated to may still be building.
    async fn find(&self, css: &str) -> Element {
        step(
            &format!("find {css}"),
            self.client
                .wait()
                .at_most(COMMAND_TIMEOUT)
                .for_element(Locator::Css(css)),
        )
        .await
    }

    /// After clicking `css`: returns once a new document has loaded, or
    /// once the old one stayed for [`CLICK_GRACE`] (chromedriver's click
    /// already waits for the navigations it sees start).
    async fn settle(&self, css: &str) {
        let clicked = Instant::now();
        let deadline = clicked + COMMAND_TIMEOUT;
        let probe = "return [window.__gatewayTestsClickMark === true, document.readyState];";
        loop {
            // While a document is being replaced scripts can fail: retry.
            if let Ok(Ok(Value::Array(state))) =
                tokio::time::timeout(COMMAND_TIMEOUT, self.client.execute(probe, vec![])).await
            {
                let marked = state.first().and_then(Value::as_bool) == Some(true);
                let complete = state.get(1).and_then(Value::as_str) == Some("complete");
                if complete && (!marked || clicked.elapsed() >= CLICK_GRACE) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the page did not settle within {COMMAND_TIMEOUT:?} after clicking {css} \
                 (now at {})",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.closed {
            // Chromedriver quits Chromium and reaps it; only killing the
            // group (`Driver`'s drop) would leave its processes for init.
            self.driver.delete_session(&self.session);
        }
    }
}

impl Driver {
    /// `DELETE /session/ID` over a blocking connection of its own: `Drop`
    /// cannot await fantoccini. Best effort, bounded; the kill follows.
    fn delete_session(&self, session: &str) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut tcp) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(20)));
        let request = format!(
            "DELETE /session/{session} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nconnection: close\r\n\r\n",
            self.port
        );
        if tcp.write_all(request.as_bytes()).is_err() {
            return;
        }
        // Chromedriver answers once Chromium has quit, and may keep the
        // connection open: the response head is the end of the wait.
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Chromedriver's log and the processes' output, for failures to start.
    fn diagnostics(&self) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- chromedriver.log (end) ---\n{}\n--- output (end) ---\n{}",
            tail("chromedriver.log"),
            tail("output.log")
        )
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: signals the process group chromedriver leads (started
        // with process_group(0)): chromedriver, Chromium and its helpers.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
        // Chromium's crash handlers leave the group (setsid) and exit on
        // their own once the browser is gone; their command line names the
        // crash database under our HOME. The directory can only go once no
        // process writes into it any more.
        let dir = self.dir.path().as_os_str().as_encoded_bytes().to_vec();
        let started = Instant::now();
        loop {
            let left = leftovers(group, &dir);
            if left.is_empty() || started.elapsed() > Duration::from_secs(10) {
                break;
            }
            if started.elapsed() > Duration::from_secs(2) {
                for pid in left {
                    // SAFETY: a process found above by our group or our
                    // unique temporary directory on its command line.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // `dir` (profile, HOME, logs) is removed as the field drops.
    }
}

/// WebDriver "Get All Cookies", answered as chromedriver's raw JSON:
/// fantoccini's own version parses into `cookie::Cookie`, which drops the
/// leading dot that tells a `Domain=` cookie from a host-only one.
#[derive(Debug)]
struct GetCookies;

impl WebDriverCompatibleCommand for GetCookies {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/cookie",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (hyper::Method, Option<String>) {
        (hyper::Method::GET, None)
    }
}

/// Runs one WebDriver command, bounded by [`COMMAND_TIMEOUT`], failing the
/// test with `what` on an error or no answer.
async fn step<T>(what: &str, command: impl Future<Output = Result<T, CmdError>>) -> T {
    match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("browser: {what}: {e}"),
        Err(_) => panic!("browser: {what}: no answer within {COMMAND_TIMEOUT:?}"),
    }
}

/// The session's capabilities: Chromium's binary and flags, and page loads
/// bounded like every other command.
fn capabilities(profile: &Path, resolve: &[(&str, IpAddr)]) -> fantoccini::wd::Capabilities {
    let mut args = vec![
        "--headless=new".to_owned(),
        // Chromium refuses to start sandboxed as root.
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--ignore-certificate-errors".to_owned(),
        format!("--user-data-dir={}", profile.display()),
        "--no-first-run".to_owned(),
        "--no-default-browser-check".to_owned(),
        // No component downloads at start: there is no internet to fetch
        // them from, and they are not what the tests look at.
        "--disable-component-update".to_owned(),
        // Not `--disable-crashpad-for-testing`, though the crash handlers it
        // would avoid leave the process group: with it, this Chromium's
        // network service dies at start ("FD ownership violation") and no
        // page ever loads. `Driver`'s drop sweeps the handlers instead.
        // A proxy from the environment must not carry the tests' loopback
        // traffic.
        "--no-proxy-server".to_owned(),
        "--window-size=1280,1024".to_owned(),
    ];
    if !resolve.is_empty() {
        let rules: Vec<String> = resolve
            .iter()
            .map(|(name, ip)| match ip {
                IpAddr::V4(v4) => format!("MAP {name} {v4}"),
                IpAddr::V6(v6) => format!("MAP {name} [{v6}]"),
            })
            .collect();
        args.push(format!("--host-resolver-rules={}", rules.join(",")));
    }
    let ms = u64::try_from(COMMAND_TIMEOUT.as_millis()).expect("timeout in ms");
    let capabilities = json!({
        "browserName": "chrome",
        "pageLoadStrategy": "normal",
        "timeouts": { "pageLoad": ms, "script": ms, "implicit": 0 },
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": args,
            // The first tab opens about:blank. Left to itself it opens the
            // new-tab page, whose load sometimes waits 5 s for a network
            // there is not, and chromedriver holds the first command until
            // that load ends. (A URL among `args` does not help: the tab
            // still shows the new-tab page.)
            "prefs": {
                "session": { "restore_on_startup": 4, "startup_urls": ["about:blank"] },
            },
        },
    });
    match capabilities {
        Value::Object(map) => map,
        _ => unreachable!("capabilities are an object"),
    }
}

/// `chromedriver` on `PATH`, or a failure saying how to install it.
fn find_chromedriver() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromedriver"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromedriver not found on PATH: the browser tests need Debian's \
                 chromium-driver package. Run `cargo xtask setup`."
            )
        })
}

/// The port chromedriver announces on stdout (`--port=0` lets it pick a
/// free one, so parallel tests never race for a port); `None` if it exits
/// first. A thread keeps draining stdout afterwards, where Chromium's own
/// output also goes, so neither ever blocks on a full pipe.
async fn announced_port(stdout: std::process::ChildStdout) -> Option<u16> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let port = line
                .split_once("started successfully on port ")
                .and_then(|(_, rest)| rest.trim_end_matches('.').parse::<u16>().ok());
            if let Some(port) = port
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(port);
            }
        }
    });
    rx.await.ok()
}

/// The string field `key` of a WebDriver cookie object.
fn string(cookie: &Value, key: &str) -> String {
    cookie[key]
        .as_str()
        .unwrap_or_else(|| panic!("cookie without {key}: {cookie}"))
        .to_owned()
}

/// Live processes (zombies, which write nothing, left out) that belong to
/// process group `group` or mention `dir` on their command line.
fn leftovers(group: libc::pid_t, dir: &[u8]) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<libc::pid_t>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // After the command name in parentheses: state, ppid, pgrp.
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let pgrp = fields.nth(1)?.parse::<libc::pid_t>().ok()?;
            if matches!(state, "Z" | "X") {
                return None;
            }
            let mentions = || {
                std::fs::read(entry.path().join("cmdline"))
                    .is_ok_and(|cmdline| cmdline.windows(dir.len()).any(|w| w == dir))
            };
            (pgrp == group || mentions()).then_some(pid)
        })
        .collect()
}
