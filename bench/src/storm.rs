//! The `connect` scenario: a connect storm. `--connections` devices
//! (`{prefix}{i mod --idle-users}` on device `storm{i}`) first log in over
//! HTTP (`POST /v1/login` on `--http`) for a session token each, outside the
//! clock; then all of them connect at once with their tokens as MQTT
//! passwords (CONNECT, SUBSCRIBE inbox and reply, as a real device does). The
//! report says how long until the last one was connected, the connect
//! latencies, and the broker's CPU time and RSS over the storm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::report::{ConnectStorm, Report};
use super::stats::Stats;
use super::{conn, rss, BenchArgs};
use parley_client::Client;

/// Logins in flight at once (the broker verifies passwords on a pool of one
/// thread per core; a user's devices share one verification).
const LOGIN_CONCURRENCY: usize = 64;

type Http = HttpClient<HttpConnector, Full<Bytes>>;

pub(crate) async fn run(args: &BenchArgs, stats: &Arc<Stats>) -> anyhow::Result<Report> {
    let http = args
        .http
        .as_deref()
        .context("the connect scenario needs --http HOST:PORT (the broker's HTTP API) to log in")?;
    let users = args.idle_users as usize;
    let devices: Vec<(String, String)> = (0..args.connections as usize)
        .map(|i| (args.user(i % users), format!("storm{i}")))
        .collect();
    let login_started = Instant::now();
    let tokens = log_in_all(http, &args.password, &devices).await?;
    let logins_secs = login_started.elapsed().as_secs_f64();

    let before = super::sample_memory(args);
    let cpu_before = args.broker_pid.and_then(rss::cpu_seconds);
    let storm_started = Instant::now();
    let results = connect_at_once(args, &devices, tokens, stats).await;
    let all_connected_secs = storm_started.elapsed().as_secs_f64();
    let cpu_after = args.broker_pid.and_then(rss::cpu_seconds);
    let connected = super::sample_memory(args);

    let clients: Vec<Client> = results.into_iter().filter_map(Result::ok).collect();
    let failed = devices.len() as u64 - clients.len() as u64;
    conn::disconnect_all(&clients).await;
    let after = super::sample_memory(args);
    let broker_cpu_secs = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let counts = stats.counts();
    Ok(Report {
        connections: clients.len() as u64,
        connect_errors: failed,
        errors: counts.errors,
        error_kinds: stats.error_kinds(),
        connect_latency: stats.connect_latency(),
        broker_memory: super::broker_memory(args, before, connected, after, clients.len() as u64),
        connect_storm: Some(ConnectStorm {
            logins_secs,
            all_connected_secs,
            broker_cpu_secs,
            broker_cpu_cores: broker_cpu_secs.map(|cpu| cpu / all_connected_secs.max(1e-6)),
        }),
        ..Report::default()
    })
}

/// Every device connects at the same moment, each with its own token.
async fn connect_at_once(
    args: &BenchArgs,
    devices: &[(String, String)],
    tokens: Vec<String>,
    stats: &Arc<Stats>,
) -> Vec<Result<Client, parley_client::ClientError>> {
    let mut storm = args.clone();
    storm.connect_concurrency = u32::try_from(devices.len()).unwrap_or(u32::MAX).max(1);
    let logins: Vec<(String, String, String)> = devices
        .iter()
        .zip(tokens)
        .map(|((user, device), token)| (user.clone(), device.clone(), token))
        .collect();
    conn::connect_all_with_passwords(&storm, &logins, stats).await
}

/// Logs every device in and returns their tokens, in order.
async fn log_in_all(
    http: &str,
    password: &str,
    devices: &[(String, String)],
) -> anyhow::Result<Vec<String>> {
    let client: Http = HttpClient::builder(TokioExecutor::new()).build_http();
    let permits = Arc::new(Semaphore::new(LOGIN_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (i, (user, device)) in devices.iter().enumerate() {
        let body = serde_json::json!({"user_id": user, "password": password, "device_id": device});
        let (client, permits, url) = (
            client.clone(),
            permits.clone(),
            format!("http://{http}/v1/login"),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (i, log_in(&client, &url, body.to_string()).await)
        });
    }
    let mut tokens = vec![String::new(); devices.len()];
    while let Some(joined) = tasks.join_next().await {
        let (i, token) = joined?;
        let (user, device) = &devices[i];
        tokens[i] = token.with_context(|| format!("logging in {user}:{device}"))?;
    }
    Ok(tokens)
}

/// One `POST /v1/login`; its `token`, or the status and body as the error.
async fn log_in(client: &Http, url: &str, body: String) -> anyhow::Result<String> {
    let request = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = tokio::time::timeout(Duration::from_secs(60), client.request(request))
        .await
        .context("no answer within 60 s")??;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let answer: serde_json::Value = serde_json::from_slice(&bytes)?;
    answer["token"]
        .as_str()
        .map(str::to_string)
        .context("the login answer has no token")
}
