//! A real browser for tests: Debian's Chromium, headless, driven over WebDriver by fantoccini
//! through a `chromedriver` that this harness starts on a free port and kills on drop.
//!
//! Browser tests take turns ([`Browser::launch`] waits for the previous browser to be gone): two
//! Chromiums on two cores make each slower than the one-second bound a test asserts.
//! `CHROMIUM` and `CHROMEDRIVER` override the Debian paths.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use tokio::sync::{Mutex, MutexGuard};

/// How long a page may take to load, and a script to finish, before the test fails.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// One browser at a time, across the tests of a binary.
static TURN: Mutex<()> = Mutex::const_new(());

/// A headless Chromium with a fresh profile, and the chromedriver that runs it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

fn chromedriver() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

impl Browser {
    /// Starts chromedriver and a Chromium session once no other test's browser is running.
    pub async fn launch() -> Browser {
        Browser::launch_inner(None).await
    }

    /// Like [`Browser::launch`], with a browser that trusts the CA certificate (PEM) at `ca` as
    /// a user-installed root: it goes into the NSS database of a home folder of the browser's
    /// own, where Chromium on Linux looks for one (`certutil`, Debian's libnss3-tools).
    pub async fn launch_trusting(ca: &Path) -> Browser {
        Browser::launch_inner(Some(ca)).await
    }

    async fn launch_inner(trusted_ca: Option<&Path>) -> Browser {
        let turn = TURN.lock().await;
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let profile = std::env::temp_dir().join(format!(
            "threadcast-chromium-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&profile).expect("create the browser profile folder");
        let port = free_port();
        let mut driver = Command::new(chromedriver());
        if let Some(ca) = trusted_ca {
            let home = profile.join("home");
            trust_in_nss(&home, ca);
            // Chromium inherits the driver's environment, and finds ~/.pki/nssdb through HOME.
            driver.env("HOME", &home);
        }
        let driver = driver
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own, so that drop can end chromedriver and every Chromium process.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (apt-get install chromium-driver): {e}",
                    chromedriver()
                )
            });
        let mut browser = BrowserParts {
            driver: Some(driver),
            profile: profile.clone(),
        };
        let client = browser.connect(port, &profile).await;
        client
            .update_timeouts(TimeoutConfiguration::new(
                Some(PAGE_TIMEOUT),
                Some(PAGE_TIMEOUT),
                Some(Duration::ZERO),
            ))
            .await
            .expect("set the WebDriver timeouts");
        Browser {
            client,
            driver: browser.driver.take().expect("the driver is running"),
            profile,
            _turn: turn,
        }
    }

    /// Navigates to `url` and waits for the load event.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The value of the JavaScript expression `expression`.
    pub async fn eval<T: DeserializeOwned>(&self, expression: &str) -> T {
        let value = self
            .client
            .execute(&format!("return ({expression});"), vec![])
            .await
            .unwrap_or_else(|e| panic!("evaluate {expression}: {e}"));
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{expression} gave {value} ({e})"))
    }

    /// Runs `body` as an async function with `args` (as `args[0]`, ...) and returns what its
    /// promise resolves to.
    pub async fn run_async(&self, body: &str, args: Vec<Json>) -> Json {
        let script = format!(
            "const done = arguments[arguments.length - 1];
             const args = Array.from(arguments).slice(0, -1);
             (async () => {{ {body} }})().then(done, (e) => done({{ thrown: String(e), status: e && e.status }}));"
        );
        self.client
            .execute_async(&script, args)
            .await
            .unwrap_or_else(|e| panic!("run {body}: {e}"))
    }

    /// Waits until the JavaScript expression `condition` is truthy; panics naming `what` after
    /// `timeout`.
    pub async fn wait_until(&self, what: &str, condition: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.eval::<bool>(&format!("!!({condition})")).await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} ({condition})"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Writes a PNG of the viewport to `path` (creating its folder).
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("take a screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the artifacts folder");
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Ends the session (Chromium quits), then the driver.
    pub async fn quit(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The driver and profile of a browser being launched: cleaned up if the launch fails.
struct BrowserParts {
    driver: Option<Child>,
    profile: PathBuf,
}

impl BrowserParts {
    /// A session on the driver at `port`, once the driver listens.
    async fn connect(&mut self, port: u16, profile: &Path) -> Client {
        let url = format!("http://127.0.0.1:{port}");
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    "--window-size=1280,860",
                    format!("--user-data-dir={}", profile.join("profile").display()),
                ],
            },
        });
        let capabilities = match capabilities {
            Json::Object(map) => map,
            _ => unreachable!("the capabilities are an object"),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let driver = self.driver.as_mut().expect("the driver is running");
            if let Ok(Some(status)) = driver.try_wait() {
                panic!(
                    "chromedriver exited ({status}); its log:\n{}",
                    std::fs::read_to_string(profile.join("chromedriver.log")).unwrap_or_default()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen on port {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start a Chromium session ({}): {e}; chromedriver's log:\n{}",
                    chromium(),
                    std::fs::read_to_string(profile.join("chromedriver.log")).unwrap_or_default()
                )
            })
    }
}

impl Drop for BrowserParts {
    fn drop(&mut self) {
        if let Some(driver) = &mut self.driver {
            kill_group(driver);
            let _ = std::fs::remove_dir_all(&self.profile);
        }
    }
}

/// Makes `home/.pki/nssdb` with `ca` trusted to identify web sites.
fn trust_in_nss(home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("create the NSS database folder");
    let db = format!("sql:{}", db.display());
    let certutil = std::env::var("CERTUTIL").unwrap_or_else(|_| "certutil".into());
    let run = |args: &[&str]| {
        let output = Command::new(&certutil)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {certutil} (apt-get install libnss3-tools): {e}")
            });
        assert!(
            output.status.success(),
            "{certutil} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&["-N", "-d", &db, "--empty-password"]);
    let ca = ca.display().to_string();
    run(&[
        "-A",
        "-d",
        &db,
        "-n",
        "threadcast test CA",
        "-t",
        "C,,",
        "-i",
        &ca,
    ]);
}

/// SIGKILLs the process group `child` leads (chromedriver and the Chromium it started) and reaps
/// the child.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill has no memory preconditions; a negative pid names the group `child` leads,
        // which `process_group(0)` made for it alone.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.wait();
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// Where tests write artifacts: `<target dir>/artifacts/`, found from the test binary's own path
/// (`<target dir>/<profile>/deps/<binary>`), so that `CARGO_TARGET_DIR` is honoured.
pub fn artifacts_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("artifacts")
}
