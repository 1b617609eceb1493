//! One `parley serve` in cluster mode as a child process: every listener on
//! `127.0.0.1:0` (the bound addresses read from its stdout), a data dir of
//! its own, stderr appended to a log file, SIGKILL on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use crate::crash::process::{log_tail, parley_binary, serve_command};

/// Starting includes joining the cluster (and waiting for JetStream).
const START_LIMIT: Duration = Duration::from_secs(60);

/// A running cluster node.
pub struct Node {
    pub id: String,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

impl Node {
    /// Starts node `id` on `data_dir` against the NATS servers `nats_urls`.
    pub async fn start(id: &str, nats_urls: &str, data_dir: &Path, log: &Path) -> Node {
        let mut command = serve_command(&parley_binary(), data_dir, log);
        command
            .env("PARLEY_CLUSTER_NATS_URLS", nats_urls)
            .env("PARLEY_CLUSTER_NODE_ID", id)
            .env("PARLEY_CLUSTER_LEASE_TTL_SECS", "3")
            .env("PARLEY_CLUSTER_REQUEST_TIMEOUT_SECS", "30")
            .env("PARLEY_LOG", "info,async_nats=warn");
        let mut child = command.spawn().expect("spawn `parley serve`");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(START_LIMIT, async {
            let (mut mqtt, mut http) = (None, None);
            while let Some(line) = lines.next_line().await.expect("read the node's stdout") {
                let addr = |prefix: &str| {
                    line.strip_prefix(prefix)
                        .map(|a| a.trim().parse::<SocketAddr>().expect("an address"))
                };
                mqtt = mqtt.or(addr("listening mqtt "));
                http = http.or(addr("listening http "));
                if let (Some(mqtt), Some(http)) = (mqtt, http) {
                    return Some((mqtt, http));
                }
            }
            None
        })
        .await;
        let Ok(Some((mqtt, http))) = listening else {
            panic!(
                "node {id} did not print its listeners within {START_LIMIT:?}; its log ends with:\n{}",
                log_tail(log, 40)
            );
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Node {
            id: id.to_owned(),
            mqtt,
            http,
            log: log.to_owned(),
            child,
        }
    }

    /// SIGTERM (a graceful stop: the node hands its lease over), and waits
    /// until it has exited.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("a running node").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        match tokio::time::timeout(START_LIMIT, self.child.wait()).await {
            Ok(status) => status.expect("wait for the node"),
            Err(_) => panic!(
                "node {} still runs {START_LIMIT:?} after SIGTERM; its log ends with:\n{}",
                self.id,
                log_tail(&self.log, 30)
            ),
        }
    }

    /// SIGKILL, and reap.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL the node");
    }

    /// The value of a gauge in this node's `GET /metrics` (0 when absent).
    pub async fn gauge(&self, name: &str) -> f64 {
        let answer = parley_tests::http::call(self.http, "GET", "/metrics", None, None).await;
        answer
            .text
            .lines()
            .find_map(|line| {
                let (metric, value) = line.split_once(' ')?;
                (metric == name)
                    .then(|| value.trim().parse().ok())
                    .flatten()
            })
            .unwrap_or(0.0)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}
