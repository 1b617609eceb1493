//! The real `parley` binary as a child process: accounts made with
//! `parley user add`, `parley serve` on port 0 with its bound address read
//! from stdout, and SIGKILL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long `parley serve` may take to print its MQTT address (RocksDB
/// recovery of the WAL included).
const START_LIMIT: Duration = Duration::from_secs(30);

/// How long one `parley user add` may take (an argon2 hash in a debug build).
const USER_ADD_LIMIT: Duration = Duration::from_secs(60);

/// Variables of this test that must not reach the broker (it warns about
/// `PARLEY_*` variables that name no config key).
const TEST_ENV: &[&str] = &["PARLEY_CRASH_KILLS", "PARLEY_CRASH_SEED"];

/// `target/{profile}/parley`, next to the directory of this test executable
/// (`target/{profile}/deps/e2e-HASH`).
pub fn parley_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the test executable");
    let profile_dir = exe.parent().and_then(Path::parent).unwrap_or_else(|| {
        panic!(
            "test executable {} is not in target/PROFILE/deps",
            exe.display()
        )
    });
    let binary = profile_dir.join(format!("parley{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "the crash test runs the real broker binary, but {} is missing: build the workspace first \
         (`cargo build --workspace --all-targets`, as .ci/test does); `cargo test -p parley-tests` \
         alone does not build the `parley` binary",
        binary.display()
    );
    binary
}

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `parley user add USER --password PW --data-dir DIR` on a stopped
/// broker's data dir.
pub async fn add_user(binary: &Path, data_dir: &Path, user: &str, password: &str) {
    let run = Command::new(binary)
        .args(["user", "add", user, "--password", password, "--data-dir"])
        .arg(data_dir)
        .env_remove("PARLEY_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(USER_ADD_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("`parley user add {user}` took more than {USER_ADD_LIMIT:?}"))
        .expect("run `parley user add`");
    assert!(
        output.status.success(),
        "`parley user add {user}` failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `parley serve` on `data_dir` with every listener on `127.0.0.1:0`,
/// stdout piped (the bound addresses), stderr appended to `log`, killed
/// when dropped, and none of this test's own variables in its environment.
pub fn serve_command(binary: &Path, data_dir: &Path, log: &Path) -> Command {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the broker log");
    let mut command = Command::new(binary);
    command
        .args([
            "serve",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--ws-addr",
            "127.0.0.1:0",
        ])
        .args(["--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("PARLEY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true);
    for name in TEST_ENV {
        command.env_remove(name);
    }
    command
}

/// A running `parley serve`; killed with SIGKILL when dropped.
pub struct BrokerProcess {
    child: Child,
    pub mqtt: SocketAddr,
}

impl BrokerProcess {
    /// Starts `parley serve` on the data dir with every listener on
    /// `127.0.0.1:0`, its stderr appended to `log`, and waits for the
    /// `listening mqtt ADDR` line.
    pub async fn start(binary: &Path, data_dir: &Path, log: &Path) -> BrokerProcess {
        let mut child = serve_command(binary, data_dir, log)
            .spawn()
            .expect("spawn `parley serve`");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mqtt = tokio::time::timeout(START_LIMIT, async {
            while let Some(line) = lines.next_line().await.expect("read the broker's stdout") {
                if let Some(addr) = line.strip_prefix("listening mqtt ") {
                    return Some(
                        addr.trim()
                            .parse::<SocketAddr>()
                            .expect("a socket address after `listening mqtt`"),
                    );
                }
            }
            None
        })
        .await;
        let mqtt = match mqtt {
            Ok(Some(addr)) => addr,
            Ok(None) => panic!(
                "`parley serve` ended before printing `listening mqtt ADDR`; its log ends with:\n{}",
                log_tail(log, 40)
            ),
            Err(_) => panic!(
                "`parley serve` printed no `listening mqtt ADDR` within {START_LIMIT:?}; its log ends with:\n{}",
                log_tail(log, 40)
            ),
        };
        // The broker prints two more lines (ws, http) and nothing after:
        // drain them so its stdout never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        BrokerProcess { child, mqtt }
    }

    /// The process id (for reading its `/proc` files).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the broker is running")
    }

    /// SIGKILL (no draining, no flushing) and reap the process.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL the broker");
    }
}
