//! Crash consistency: the real `parley` binary under concurrent load,
//! killed with SIGKILL at random moments and restarted on the same data dir.
//! After the last restart, through `History` and `Sync`: every acked message
//! is stored exactly once with its acked seq, ts and text; every channel's
//! seqs and every user's inbox_seqs are `1..=max` without gaps or
//! duplicates; every inbox holds each message of its channels exactly once;
//! and re-sending each send that was in flight at a kill makes exactly one
//! copy (`duplicate = true` with the stored seq if it had been committed,
//! else one new seq), never two. Finally the store itself is opened and its
//! counters compared.
//!
//! - `PARLEY_CRASH_KILLS=N`: the long version, N kills (default 3, a few
//!   seconds each).
//! - `PARLEY_CRASH_SEED=S`: replays the random choices (channels, texts,
//!   kill moments) of a run; every run prints its seed. Thread timing still
//!   varies, so a replay is close, not identical.
//!
//! Needs `target/{profile}/parley` (built by `cargo build --workspace
//! --all-targets`, as `.ci/test` does). The broker's stderr goes to
//! `broker.log` in the run's temp dir; its tail is printed if a check fails.

mod ledger;
pub(crate) mod process;
mod verify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger::{Acked, Attempt, Rng, SharedLedger};
use parley_tests::{
    direct_channel, eventually, group_channel, with_store_blocking, Client, ClientError,
    ClientOptions, WAIT,
};
use process::BrokerProcess;

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const GROUP: &str = "crashers";
/// Concurrent senders per user, each with one send in flight at a time.
const TASKS_PER_USER: usize = 3;
const DEFAULT_KILLS: usize = 3;
/// The longest load phase before a kill, after the round's first Ack.
const MAX_KILL_DELAY_MS: u64 = 700;
/// One in this many sends is followed by a retry of an earlier acked one.
const RETRY_ONE_IN: u64 = 12;

fn password(user: &str) -> String {
    format!("password-{user}")
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// Every channel of the run with its members: the group and each dm pair.
fn channels() -> Vec<(String, Vec<String>)> {
    let mut channels = vec![(
        group_channel(GROUP),
        USERS.iter().map(|u| u.to_string()).collect(),
    )];
    for (i, a) in USERS.iter().enumerate() {
        for b in &USERS[i + 1..] {
            channels.push((direct_channel(a, b), vec![a.to_string(), b.to_string()]));
        }
    }
    channels
}

/// Prints the end of the broker's log when the test fails.
struct LogOnPanic(PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- end of the broker log {} ---\n{}",
                self.0.display(),
                process::log_tail(&self.0, 60)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_sigkill_exactly_once_and_retries_never_duplicate() {
    let kills = env_number("PARLEY_CRASH_KILLS").map_or(DEFAULT_KILLS, |n| n as usize);
    let seed = env_number("PARLEY_CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "crash test: {kills} kills, seed {seed} (PARLEY_CRASH_SEED={seed} replays its choices)"
    );
    let binary = process::parley_binary();
    let dir = tempfile::Builder::new()
        .prefix("parley-crash-")
        .tempdir()
        .expect("temp dir");
    let data_dir = dir.path().join("data");
    let log = dir.path().join("broker.log");
    let _log_on_panic = LogOnPanic(log.clone());
    for user in USERS {
        process::add_user(&binary, &data_dir, user, &password(user)).await;
    }

    let mut rng = Rng::new(seed);
    let ledger = SharedLedger::default();
    for round in 0..kills {
        let broker = BrokerProcess::start(&binary, &data_dir, &log).await;
        if round == 0 {
            let alice = connect(broker.mqtt, "alice", "setup").await;
            alice
                .create_group(GROUP, "Crash testers", USERS[1..].iter().copied())
                .await
                .expect("create the group");
            alice.disconnect().await.expect("disconnect");
        }
        load_then_kill(broker, round, &mut rng, &ledger).await;
    }

    let broker = BrokerProcess::start(&binary, &data_dir, &log).await;
    let (heads, summary) = verify_after_crashes(broker.mqtt, &ledger).await;
    broker.kill().await;
    check_store_counters(&data_dir, heads).await;
    println!("crash test: {summary}");
}

async fn connect(addr: std::net::SocketAddr, user: &str, device: &str) -> Client {
    let options = ClientOptions::new(addr, user, device, password(user))
        .connect_timeout(WAIT)
        .request_timeout(WAIT);
    Client::connect(options)
        .await
        .unwrap_or_else(|e| panic!("{user}:{device} cannot connect to the restarted broker: {e}"))
}

/// Connects every user, runs the senders until the first Ack of the round
/// plus a random delay, SIGKILLs the broker and waits for every sender to
/// see the connection end.
async fn load_then_kill(broker: BrokerProcess, round: usize, rng: &mut Rng, ledger: &SharedLedger) {
    let mut tasks = Vec::new();
    for user in USERS {
        let client = connect(broker.mqtt, user, "load").await;
        tasks.push(tokio::spawn(drain_inbox(client.clone())));
        for task in 0..TASKS_PER_USER {
            let sender = Sender {
                client: client.clone(),
                prefix: format!("{user}-r{round}-t{task}"),
                rng: rng.fork(),
                ledger: ledger.clone(),
            };
            tasks.push(tokio::spawn(sender.run()));
        }
    }
    let acked_before = ledger.acked_count();
    assert!(
        eventually(WAIT, || ledger.acked_count() > acked_before).await,
        "round {round}: no send was acked within {WAIT:?}"
    );
    let delay = Duration::from_millis(rng.below(MAX_KILL_DELAY_MS));
    tokio::time::sleep(delay).await;
    let acked_at_kill = ledger.acked_count();
    broker.kill().await;
    for task in tasks {
        match tokio::time::timeout(WAIT, task).await {
            Err(_) => {
                panic!("round {round}: a client task did not notice the kill within {WAIT:?}")
            }
            Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Ok(Err(error)) => panic!("round {round}: client task failed: {error}"),
            Ok(Ok(())) => {}
        }
    }
    println!(
        "round {round}: killed {delay:?} after the first ack, {} acks this round",
        acked_at_kill - acked_before
    );
}

/// Reads and drops inbox envelopes, so the SDK's bounded inbox never fills
/// (a full inbox stops the client reading replies too).
async fn drain_inbox(client: Client) {
    while client.next_envelope(WAIT).await.is_ok() {}
}

/// One concurrent sender: sends to random channels with fresh
/// `client_msg_id`s, records each attempt before sending and each Ack after,
/// and now and then retries an earlier acked send (which must be answered
/// with the original Ack, `duplicate = true`). Ends when the connection does.
struct Sender {
    client: Client,
    prefix: String,
    rng: Rng,
    ledger: SharedLedger,
}

impl Sender {
    async fn run(mut self) {
        let user = self.client.user().to_owned();
        let others: Vec<&str> = USERS.iter().copied().filter(|u| *u != user).collect();
        let mut acked: Vec<(Attempt, Acked)> = Vec::new();
        for n in 0.. {
            let channel = match self.rng.below(2) {
                0 => group_channel(GROUP),
                _ => direct_channel(&user, others[self.rng.below(others.len() as u64) as usize]),
            };
            let client_msg_id = format!("{}-{n}", self.prefix);
            let attempt = Attempt {
                sender: user.clone(),
                text: self.text(&client_msg_id, &channel),
                channel,
                client_msg_id,
                acked: None,
            };
            let index = self.ledger.record(attempt.clone());
            let Some(ack) = self.send(&attempt).await else {
                return;
            };
            assert!(
                !ack.duplicate,
                "a fresh client_msg_id was answered as a duplicate: {attempt:?} {ack:?}"
            );
            let got = Acked {
                seq: ack.seq,
                ts_ms: ack.ts_ms,
            };
            self.ledger.acked(index, got);
            acked.push((attempt, got));
            if self.rng.below(RETRY_ONE_IN) == 0 {
                let (earlier, original) =
                    acked[self.rng.below(acked.len() as u64) as usize].clone();
                let Some(retry) = self.send(&earlier).await else {
                    return;
                };
                assert!(
                    retry.duplicate && retry.seq == original.seq && retry.ts_ms == original.ts_ms,
                    "a retry of {earlier:?} (acked {original:?}) got {retry:?}"
                );
            }
        }
    }

    /// Mostly short texts; sometimes long ones with multi-byte characters,
    /// so that batches vary in size.
    fn text(&mut self, client_msg_id: &str, channel: &str) -> String {
        let padding = match self.rng.below(8) {
            0 => "é😀·".repeat(self.rng.below(2_000) as usize),
            _ => String::new(),
        };
        format!("{client_msg_id} to {channel}{padding}")
    }

    /// The Ack, or `None` when the broker went away first (then the attempt
    /// stays in flight). Any other answer fails the test.
    async fn send(&self, attempt: &Attempt) -> Option<parley_tests::v1::Ack> {
        match self
            .client
            .send_with_id(&attempt.channel, &attempt.client_msg_id, &attempt.text)
            .await
        {
            Ok(ack) => {
                assert_eq!(ack.channel, attempt.channel, "Ack for another channel");
                Some(ack)
            }
            Err(
                ClientError::Disconnected
                | ClientError::Connection(_)
                | ClientError::Timeout { .. },
            ) => None,
            Err(error) => panic!("{attempt:?} refused by the broker: {error}"),
        }
    }
}

/// Every check after the last restart. Returns each channel's and each
/// user's last sequence number (for the store check) and a summary line.
async fn verify_after_crashes(
    addr: std::net::SocketAddr,
    ledger: &SharedLedger,
) -> (HashMap<String, u64>, String) {
    let channels = channels();
    let mut readers = HashMap::new();
    for user in USERS {
        readers.insert(user.to_owned(), connect(addr, user, "verify").await);
    }
    let attempts = ledger.snapshot();
    let read = verify::read_channels(&readers, &channels).await;
    let committed_in_flight = verify::check_against_attempts(&read, &attempts);
    for user in USERS {
        let expected = verify::expected_inbox(user, &channels, &read);
        verify::check_inbox(&readers[user], &expected, 1).await;
    }

    // Re-send every send that was in flight at a kill, twice.
    let mut next_seq: HashMap<String, u64> = read
        .iter()
        .map(|(c, m)| (c.clone(), m.len() as u64 + 1))
        .collect();
    let in_flight: Vec<&(usize, Attempt)> =
        attempts.iter().filter(|(_, a)| a.acked.is_none()).collect();
    for (index, attempt) in &in_flight {
        let client = &readers[&attempt.sender];
        let stored = verify::find(&read, attempt);
        let ack = client
            .send_with_id(&attempt.channel, &attempt.client_msg_id, &attempt.text)
            .await
            .unwrap_or_else(|e| panic!("re-send of in-flight {attempt:?}: {e}"));
        match stored {
            Some(message) => assert!(
                ack.duplicate && ack.seq == message.seq && ack.ts_ms == message.ts_ms,
                "{attempt:?} was committed before the kill as seq {}, its re-send got {ack:?}",
                message.seq
            ),
            None => {
                let next = next_seq.get_mut(&attempt.channel).expect("a known channel");
                assert!(
                    !ack.duplicate && ack.seq == *next,
                    "{attempt:?} was not committed before the kill: its re-send must be new seq {next}, got {ack:?}"
                );
                *next += 1;
            }
        }
        let again = client
            .send_with_id(&attempt.channel, &attempt.client_msg_id, &attempt.text)
            .await
            .unwrap_or_else(|e| panic!("second re-send of {attempt:?}: {e}"));
        assert!(
            again.duplicate && again.seq == ack.seq && again.ts_ms == ack.ts_ms,
            "second re-send of {attempt:?}: {again:?} after {ack:?}"
        );
        ledger.acked(
            *index,
            Acked {
                seq: ack.seq,
                ts_ms: ack.ts_ms,
            },
        );
    }

    // Now every attempt is acked: each is stored exactly once.
    let attempts = ledger.snapshot();
    let read = verify::read_channels(&readers, &channels).await;
    assert_eq!(verify::check_against_attempts(&read, &attempts), 0);
    let mut heads = HashMap::new();
    for user in USERS {
        let expected = verify::expected_inbox(user, &channels, &read);
        let head = verify::check_inbox(&readers[user], &expected, 1).await;
        heads.insert(format!("inbox {user}"), head);
    }
    for (channel, messages) in &read {
        heads.insert(format!("channel {channel}"), messages.len() as u64);
    }
    for reader in readers.values() {
        let _ = reader.disconnect().await;
    }
    let acked = attempts.len() - in_flight.len();
    let summary = format!(
        "{} sends: {acked} acked, {} in flight at a kill ({committed_in_flight} of them committed before it); \
         {} messages stored, all checked",
        attempts.len(),
        in_flight.len(),
        read.values().map(Vec::len).sum::<usize>()
    );
    (heads, summary)
}

/// The store of the stopped broker agrees with what History and Sync said.
async fn check_store_counters(data_dir: &Path, heads: HashMap<String, u64>) {
    with_store_blocking(data_dir, move |store| {
        for (what, head) in heads {
            let stored = match what.split_once(' ') {
                Some(("inbox", user)) => store.last_inbox_seq(user),
                Some(("channel", channel)) => store.last_channel_seq(channel),
                _ => unreachable!("keys are made above"),
            }
            .unwrap_or_else(|e| panic!("read the last seq of {what}: {e}"));
            assert_eq!(stored, head, "the store's last seq of {what}");
        }
    })
    .await;
}
