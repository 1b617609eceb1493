//! The broker process's memory: it keeps it in small (4 KiB) pages. A
//! transparent huge page is resident in full (2 MiB) once one byte of it is
//! touched, so with them every idle connection cost ~1.5 KB more
//! (bench/FINDINGS.md, item 14). Runs the real `parley` binary: the
//! allocator and the process-wide setting are the binary's, not the test's.

use std::time::Duration;

use parley_client::{Client, ClientOptions};

use crate::crash::process::{self, BrokerProcess};

const PASSWORD: &str = "small-pages-pw";
/// Devices connected (and left idle) before the broker's memory is read.
const DEVICES: usize = 50;
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_keeps_no_memory_in_transparent_huge_pages() {
    let binary = process::parley_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let log = dir.path().join("broker.log");
    process::add_user(&binary, &data_dir, "hugo", PASSWORD).await;
    let broker = BrokerProcess::start(&binary, &data_dir, &log).await;

    let mut devices = Vec::with_capacity(DEVICES);
    for i in 0..DEVICES {
        let options = ClientOptions::new(broker.mqtt, "hugo", format!("d{i}"), PASSWORD)
            .connect_timeout(WAIT)
            .request_timeout(WAIT);
        devices.push(Client::connect(options).await.expect("connect"));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid()))
        .expect("read the broker's /proc status");
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", broker.pid()))
        .expect("read the broker's smaps_rollup");
    broker.kill().await;

    assert_eq!(
        proc_number(&status, "THP_enabled:"),
        Some(0),
        "the broker did not turn transparent huge pages off for its process:\n{status}"
    );
    assert_eq!(
        proc_number(&smaps, "AnonHugePages:"),
        Some(0),
        "the broker holds memory in transparent huge pages:\n{smaps}"
    );
}

/// The number after `field` on its line of a `/proc` file (a unit such as
/// `kB` dropped).
fn proc_number(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}
