//! The end-to-end test harness: a real Parley broker on ephemeral ports
//! with a temporary data dir, and real MQTT clients to drive it.
//!
//! Owns: starting, restarting and stopping a [`TestBroker`]; creating its
//! accounts in the store before the broker opens it (RocksDB allows one
//! opener); connecting SDK clients ([`parley_client::Client`]) and raw
//! rumqttc 3.1.1 / 5 clients ([`raw::RawV4`], [`raw::RawV5`]); polling
//! helpers ([`eventually`], [`collect_envelopes`]) so that no test relies on a
//! fixed sleep for correctness.
//! Must not: mock anything. Every test talks to the real broker over
//! sockets.
//!
//! # Layout
//! - this file: [`TestBroker`], [`eventually`], inbox collection, tracing.
//! - [`raw`]: rumqttc v4 and v5 clients with their event loops in a task,
//!   for what the SDK does not expose (raw payloads, refused SUBACKs,
//!   session present, receive maximum, manual PUBACKs).
//! - [`wire`]: request builders, reply checks and hand-made MQTT bytes.
//! - [`tls`]: a throwaway CA and server certificate, TLS client configs,
//!   a bare HTTPS GET ([`Builder::tls`] turns the broker's TLS on).
//! - [`nats`]: a NATS JetStream cluster of real `nats-server` processes on
//!   loopback ([`nats::NatsCluster`]), for the broker's cluster mode.

pub mod gateway;
pub mod http;
pub mod nats;
pub mod raw;
pub mod tls;
pub mod wire;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parley_broker::{accounts, Broker, Config};
use parley_proto::v1::{envelope, ChatMessage, Envelope};
use parley_storage::{AccountKind, Store, UserRecord};
use tempfile::TempDir;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use parley_client::{
    direct_channel, group_channel, Client, ClientError, ClientOptions, PresenceUpdate, Transport,
};
pub use parley_proto::v1;
pub use raw::{RawV4, RawV5};

/// Upper bound for anything that should happen "soon": polling stops as
/// soon as the condition holds, so passing tests never wait this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long a broker may take to shut down before the test fails.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(15);

/// How long the harness retries opening a data dir that is still locked by a
/// broker that has just stopped (its last blocking tasks may hold the store
/// for a moment).
const REOPEN_LIMIT: Duration = Duration::from_secs(5);

/// Installs a tracing subscriber that writes to the test's captured output.
/// `RUST_LOG` overrides the default filter. Safe to call many times.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A change to the broker's configuration, applied before it starts.
type ConfigTweak = Box<dyn FnOnce(&mut Config) + Send>;

/// What a [`TestBroker`] starts with; see [`TestBroker::builder`].
#[derive(Default)]
pub struct Builder {
    users: Vec<(String, String)>,
    bulk: Vec<(String, String)>,
    tweaks: Vec<ConfigTweak>,
    tls: bool,
}

impl Builder {
    /// Accounts, one argon2 hash each.
    pub fn users(mut self, users: &[(&str, &str)]) -> Self {
        self.users.extend(
            users
                .iter()
                .map(|(id, pw)| (id.to_string(), pw.to_string())),
        );
        self
    }

    /// Many accounts sharing one password: the argon2 hash is computed once
    /// and written with `Store::put_user`, so 100 accounts cost one hash.
    pub fn bulk_users(mut self, ids: impl IntoIterator<Item = String>, password: &str) -> Self {
        self.bulk
            .extend(ids.into_iter().map(|id| (id, password.to_string())));
        self
    }

    /// Changes the broker's configuration (ports and data dir are the harness's).
    pub fn config(mut self, tweak: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// Turns TLS on with a fresh test CA ([`tls::TestPki`], files in the
    /// broker's temp dir): MQTT over TLS and secure WebSocket on
    /// `127.0.0.1:0`, the HTTP API over HTTPS. [`Builder::config`] tweaks
    /// apply after it.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Creates the data dir and the accounts, then starts the broker.
    pub async fn start(self) -> TestBroker {
        init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("parley-e2e-")
            .tempdir()
            .expect("create a temp data dir");
        let data_dir = dir.path().join("data");
        let mut config = Config::for_tests(data_dir.clone());
        let pki = self.tls.then(|| tls::TestPki::generate(dir.path()));
        if let Some(pki) = &pki {
            pki.configure(&mut config);
        }
        for tweak in self.tweaks {
            tweak(&mut config);
        }
        let mut passwords = HashMap::new();
        for (id, pw) in self.users.iter().chain(self.bulk.iter()) {
            passwords.insert(id.clone(), pw.clone());
        }
        // Written as records, not through `accounts::add_user`: fixtures may
        // use passwords shorter than a new account may choose.
        let users: Vec<_> = self.users.into_iter().chain(self.bulk).collect();
        with_store_blocking(&data_dir, move |store| add_bulk_users(store, &users)).await;
        let mut broker = TestBroker {
            _dir: dir,
            data_dir,
            config,
            running: None,
            passwords,
            pki,
        };
        broker.launch().await;
        broker
    }
}

/// A broker running in this process on `127.0.0.1:0` for every listener,
/// with its own temporary data dir (deleted when dropped).
pub struct TestBroker {
    _dir: TempDir,
    data_dir: PathBuf,
    config: Config,
    running: Option<Running>,
    passwords: HashMap<String, String>,
    pki: Option<tls::TestPki>,
}

struct Running {
    broker: Broker,
    token: CancellationToken,
    mqtt: SocketAddr,
    ws: SocketAddr,
    http: SocketAddr,
    tls: Option<SocketAddr>,
    wss: Option<SocketAddr>,
}

impl TestBroker {
    /// A broker with these `(user_id, password)` accounts and the test defaults.
    pub async fn start(users: &[(&str, &str)]) -> TestBroker {
        Self::builder().users(users).start().await
    }

    /// A broker with more options (bulk users, config changes).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The MQTT over TCP address (changes at every restart).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.running().mqtt
    }

    /// The MQTT over WebSocket listener's address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.running().ws
    }

    /// `ws://127.0.0.1:{port}/mqtt`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/mqtt", self.ws_addr())
    }

    /// The HTTP API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.running().http
    }

    /// The MQTT over TLS listener's address (needs [`Builder::tls`]).
    pub fn tls_addr(&self) -> SocketAddr {
        self.running()
            .tls
            .expect("tls_addr is off: start with Builder::tls")
    }

    /// The MQTT over secure WebSocket listener's address (needs [`Builder::tls`]).
    pub fn wss_addr(&self) -> SocketAddr {
        self.running()
            .wss
            .expect("wss_addr is off: start with Builder::tls")
    }

    /// `wss://127.0.0.1:{port}/mqtt`.
    pub fn wss_url(&self) -> String {
        format!("wss://{}/mqtt", self.wss_addr())
    }

    /// Whether the broker was started with [`Builder::tls`].
    pub fn tls_enabled(&self) -> bool {
        self.pki.is_some()
    }

    /// The test CA and certificate files (needs [`Builder::tls`]).
    pub fn pki(&self) -> &tls::TestPki {
        self.pki
            .as_ref()
            .expect("TLS is off: start with Builder::tls")
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The broker's data dir (the same across restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The password the harness created `user` with ("" for unknown users).
    pub fn password(&self, user: &str) -> String {
        self.passwords.get(user).cloned().unwrap_or_default()
    }

    /// Stops the broker gracefully (drain, flush, close the store).
    pub async fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        if tokio::time::timeout(SHUTDOWN_LIMIT, running.broker.shutdown())
            .await
            .is_err()
        {
            panic!("broker did not shut down within {SHUTDOWN_LIMIT:?}");
        }
    }

    /// Shuts down and starts again on the same data dir (new ports).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// Stops the broker, runs `f` on its store (e.g. to add accounts or to
    /// inspect inboxes), closes the store and starts the broker again.
    pub async fn with_store_while_stopped<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&Store) -> R + Send + 'static,
    ) -> R {
        self.stop().await;
        let result = with_store_blocking(&self.data_dir, f).await;
        self.launch().await;
        result
    }

    /// Adds accounts (on the stopped broker's store) and restarts.
    pub async fn add_users_and_restart(&mut self, users: &[(&str, &str)]) {
        let owned: Vec<(String, String)> = users
            .iter()
            .map(|(id, pw)| (id.to_string(), pw.to_string()))
            .collect();
        for (id, pw) in &owned {
            self.passwords.insert(id.clone(), pw.clone());
        }
        self.with_store_while_stopped(move |store| add_bulk_users(store, &owned))
            .await;
    }

    /// Stops the broker and deletes its data dir.
    pub async fn kill(mut self) {
        self.stop().await;
    }

    /// SDK options for `user` on `device` over TCP, clean session, with the
    /// harness's password for `user`.
    pub fn options(&self, user: &str, device: &str) -> ClientOptions {
        ClientOptions::new(self.mqtt_addr(), user, device, self.password(user))
            .connect_timeout(WAIT)
            .request_timeout(WAIT)
    }

    /// One request to the broker's HTTP API (plain HTTP).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> http::Answer {
        let Some(pki) = &self.pki else {
            return http::call(self.http_addr(), method, path, bearer, body.as_ref()).await;
        };
        // With a certificate the HTTP API is HTTPS.
        let stream = tls::connect(self.http_addr(), pki.client_config())
            .await
            .expect("TLS connection to the HTTP API");
        let host = self.http_addr().to_string();
        let body = body.map(|b| b.to_string());
        http::send(stream, &host, method, path, bearer, body.as_deref()).await
    }

    /// `POST /v1/login` for `user` on `device` with the harness's password;
    /// panics unless it answers 200. Returns the whole answer.
    pub async fn login_answer(&self, user: &str, device: &str) -> serde_json::Value {
        let body = serde_json::json!({
            "user_id": user,
            "password": self.password(user),
            "device_id": device,
        });
        let answer = self.http("POST", "/v1/login", None, Some(body)).await;
        assert_eq!(
            answer.status, 200,
            "login of {user}:{device}: {}",
            answer.text
        );
        answer.json
    }

    /// A session token for `user` on `device` (`POST /v1/login`).
    pub async fn login(&self, user: &str, device: &str) -> String {
        let answer = self.login_answer(user, device).await;
        answer["token"].as_str().expect("a token").to_owned()
    }

    /// SDK options for `user` on `device` over TCP with `password` (a token).
    pub fn options_with(&self, user: &str, device: &str, password: &str) -> ClientOptions {
        ClientOptions::new(self.mqtt_addr(), user, device, password)
            .connect_timeout(WAIT)
            .request_timeout(WAIT)
    }

    /// A connected SDK client with a clean session (live traffic only).
    pub async fn client(&self, user: &str, device: &str) -> Client {
        self.connect(self.options(user, device)).await
    }

    /// A connected SDK client with a durable session (clean session off).
    pub async fn durable_client(&self, user: &str, device: &str) -> Client {
        self.connect(self.options(user, device).clean_session(false))
            .await
    }

    /// A connected SDK client over WebSocket (`ws://addr/mqtt`).
    pub async fn ws_client(&self, user: &str, device: &str) -> Client {
        let opts = ClientOptions::new(self.ws_addr(), user, device, self.password(user))
            .transport(Transport::WebSocket)
            .connect_timeout(WAIT)
            .request_timeout(WAIT);
        self.connect(opts).await
    }

    /// Connects with `opts`, panicking with the options on failure.
    pub async fn connect(&self, opts: ClientOptions) -> Client {
        let id = opts.client_id();
        Client::connect(opts)
            .await
            .unwrap_or_else(|e| panic!("SDK client {id} could not connect: {e}"))
    }

    /// rumqttc 3.1.1 options for `{user}:{device}` with the harness's password.
    pub fn v4_options(
        &self,
        user: &str,
        device: &str,
        clean_session: bool,
    ) -> rumqttc::MqttOptions {
        raw::v4_options(
            self.mqtt_addr(),
            &format!("{user}:{device}"),
            user,
            &self.password(user),
            clean_session,
        )
    }

    /// rumqttc 5 options for `{user}:{device}`; `session_expiry` > 0 makes
    /// the session durable.
    pub fn v5_options(
        &self,
        user: &str,
        device: &str,
        session_expiry: Option<u32>,
    ) -> rumqttc::v5::MqttOptions {
        raw::v5_options(
            self.mqtt_addr(),
            &format!("{user}:{device}"),
            user,
            &self.password(user),
            session_expiry,
        )
    }

    /// A connected raw 3.1.1 client (no subscriptions made).
    pub async fn raw_v4(&self, user: &str, device: &str, clean_session: bool) -> RawV4 {
        RawV4::connect(self.v4_options(user, device, clean_session), user, device)
            .await
            .unwrap_or_else(|e| panic!("raw v4 client {user}:{device} could not connect: {e}"))
    }

    /// A connected raw MQTT 5 client (no subscriptions made).
    pub async fn raw_v5(&self, user: &str, device: &str, session_expiry: Option<u32>) -> RawV5 {
        RawV5::connect(self.v5_options(user, device, session_expiry), user, device)
            .await
            .unwrap_or_else(|e| panic!("raw v5 client {user}:{device} could not connect: {e}"))
    }

    async fn launch(&mut self) {
        let deadline = Instant::now() + REOPEN_LIMIT;
        loop {
            let token = CancellationToken::new();
            match Broker::start(self.config.clone(), token.clone()).await {
                Ok(broker) => {
                    tracing::info!(mqtt = %broker.mqtt_addr(), ws = %broker.ws_addr(), "test broker started");
                    self.running = Some(Running {
                        mqtt: broker.mqtt_addr(),
                        ws: broker.ws_addr(),
                        http: broker.http_addr(),
                        tls: broker.tls_addr(),
                        wss: broker.wss_addr(),
                        broker,
                        token,
                    });
                    return;
                }
                Err(error) if Instant::now() < deadline => {
                    tracing::warn!(%error, "broker start failed, retrying (store still locked?)");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!(
                    "broker did not start on {}: {error}",
                    self.data_dir.display()
                ),
            }
        }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("the test broker is stopped")
    }
}

impl Drop for TestBroker {
    /// Stops the broker completely — RocksDB closed — before the test's
    /// runtime and process end: a database still closing on the engine
    /// thread while the process exits aborts inside RocksDB.
    fn drop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.token.cancel();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let _ = tokio::time::timeout(SHUTDOWN_LIMIT, running.broker.wait()).await;
            })
        });
    }
}

/// Opens the store at `dir` on a blocking thread (retrying while a stopped
/// broker still holds it), runs `f`, and closes it again.
pub async fn with_store_blocking<R: Send + 'static>(
    dir: &Path,
    f: impl FnOnce(&Store) -> R + Send + 'static,
) -> R {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).expect("create the data dir");
        let deadline = std::time::Instant::now() + REOPEN_LIMIT;
        let store = loop {
            match Store::open(&dir) {
                Ok(store) => break store,
                Err(error) if std::time::Instant::now() < deadline => {
                    tracing::warn!(%error, "store open failed, retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => panic!("cannot open the store at {}: {error}", dir.display()),
            }
        };
        let result = f(&store);
        drop(store);
        result
    })
    .await
    .expect("store task panicked")
}

fn add_bulk_users(store: &Store, users: &[(String, String)]) {
    let mut hashes: HashMap<&str, String> = HashMap::new();
    let created_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    for (id, pw) in users {
        let hash = hashes
            .entry(pw.as_str())
            .or_insert_with(|| accounts::hash_password(pw).expect("hash a password"))
            .clone();
        let record = UserRecord {
            password_hash: hash,
            kind: AccountKind::User,
            created_ms,
        };
        store
            .put_user(id, &record)
            .unwrap_or_else(|e| panic!("put_user({id}): {e}"));
    }
}

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] with an async condition.
pub async fn eventually_async<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads envelopes from `client`'s inbox until `n` distinct `inbox_seq`s
/// have arrived (repeats, allowed by at-least-once delivery, are dropped),
/// or `timeout` passes. Returns what arrived, in arrival order.
pub async fn try_collect_envelopes(client: &Client, n: usize, timeout: Duration) -> Vec<Envelope> {
    let deadline = Instant::now() + timeout;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match client.next_envelope(left).await {
            Ok(Some(envelope)) => {
                if envelope.inbox_seq == 0 || seen.insert(envelope.inbox_seq) {
                    out.push(envelope);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// [`try_collect_envelopes`] that fails the test unless exactly `n` arrive.
pub async fn collect_envelopes(client: &Client, n: usize, timeout: Duration) -> Vec<Envelope> {
    let got = try_collect_envelopes(client, n, timeout).await;
    assert_eq!(
        got.len(),
        n,
        "{}:{} expected {n} inbox envelopes within {timeout:?}, got {}: {:#?}",
        client.user(),
        client.device(),
        got.len(),
        got
    );
    got
}

/// The chat message of an envelope, failing the test for other bodies.
pub fn message_of(envelope: &Envelope) -> &ChatMessage {
    match &envelope.body {
        Some(envelope::Body::Message(message)) => message,
        other => panic!(
            "expected a ChatMessage envelope, got {other:?} (inbox_seq {})",
            envelope.inbox_seq
        ),
    }
}

/// Collects `n` envelopes that must all be chat messages: `(inbox_seq, message)`.
pub async fn collect_messages(
    client: &Client,
    n: usize,
    timeout: Duration,
) -> Vec<(u64, ChatMessage)> {
    collect_envelopes(client, n, timeout)
        .await
        .iter()
        .map(|e| (e.inbox_seq, message_of(e).clone()))
        .collect()
}

/// Reads envelopes until one is a chat message (group events and the like
/// are skipped); fails the test after `timeout`.
pub async fn next_message(client: &Client, timeout: Duration) -> (u64, ChatMessage) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_envelope(left).await {
            Ok(Some(Envelope {
                inbox_seq,
                body: Some(envelope::Body::Message(m)),
            })) => return (inbox_seq, m),
            Ok(Some(_)) => continue,
            Ok(None) => panic!(
                "{}:{}: no chat message within {timeout:?}",
                client.user(),
                client.device()
            ),
            Err(e) => panic!("{}:{}: inbox closed: {e}", client.user(), client.device()),
        }
    }
}

/// Reads and discards envelopes until one with `inbox_seq >= upto` has
/// arrived (e.g. to skip a group's creation event); fails after `timeout`.
pub async fn skip_until_inbox_seq(client: &Client, upto: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_envelope(left).await {
            Ok(Some(envelope)) if envelope.inbox_seq >= upto => return,
            Ok(Some(_)) => continue,
            Ok(None) => panic!(
                "{}:{}: inbox_seq {upto} did not arrive within {timeout:?}",
                client.user(),
                client.device()
            ),
            Err(e) => panic!("{}:{}: inbox closed: {e}", client.user(), client.device()),
        }
    }
}

/// The user's whole inbox via `Sync` (following `more`), from `after` on.
pub async fn sync_all(client: &Client, after: u64) -> Vec<Envelope> {
    let mut events = Vec::new();
    let mut after = after;
    loop {
        let page = client
            .sync(after, 0)
            .await
            .unwrap_or_else(|e| panic!("sync after {after} failed: {e}"));
        if let Some(last) = page.events.last() {
            after = last.inbox_seq;
        }
        let more = page.more;
        let empty = page.events.is_empty();
        events.extend(page.events);
        if !more || empty {
            return events;
        }
    }
}

/// The last `inbox_seq` of the client's user, via `Sync` (0 for an empty inbox).
pub async fn inbox_head(client: &Client) -> u64 {
    sync_all(client, 0).await.last().map_or(0, |e| e.inbox_seq)
}

/// Makes `a` and `b` friends: `a` asks, `b` accepts; both are answered
/// with `Ack{channel: "", seq: 0}`.
pub async fn befriend(a: &Client, b: &Client) {
    for (asker, other) in [(a, b), (b, a)] {
        let ack = asker
            .change_friends([other.user()], Vec::<String>::new())
            .await
            .unwrap_or_else(|e| panic!("{} adds {}: {e}", asker.user(), other.user()));
        assert_eq!(
            (ack.channel.as_str(), ack.seq),
            ("", 0),
            "ChangeFriends Ack"
        );
    }
}

/// The `(user, state)` of a `FriendEvent` envelope, failing the test for
/// other bodies.
pub fn friend_event_of(envelope: &Envelope) -> (String, v1::FriendState) {
    match &envelope.body {
        Some(envelope::Body::Friend(event)) => (
            event.user.clone(),
            v1::FriendState::try_from(event.state).unwrap_or(v1::FriendState::Unspecified),
        ),
        other => panic!(
            "expected a FriendEvent envelope, got {other:?} (inbox_seq {})",
            envelope.inbox_seq
        ),
    }
}

/// The next presence update of `client` (see `Client::next_presence`);
/// fails the test when none arrives within `timeout`.
pub async fn next_presence(client: &Client, timeout: Duration) -> PresenceUpdate {
    match client.next_presence(timeout).await {
        Ok(Some(update)) => update,
        Ok(None) => panic!(
            "{}:{}: no presence update within {timeout:?}",
            client.user(),
            client.device()
        ),
        Err(e) => panic!(
            "{}:{}: presence closed: {e}",
            client.user(),
            client.device()
        ),
    }
}
