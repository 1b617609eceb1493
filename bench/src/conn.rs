//! Opening many SDK connections at a bounded pace, and naming errors for the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::stats::Stats;
use super::BenchArgs;
use parley_client::{Client, ClientError, ClientOptions};

/// The SDK options of one bench connection.
pub(crate) fn options(
    args: &BenchArgs,
    user: &str,
    device: &str,
) -> Result<ClientOptions, ClientError> {
    options_with_password(args, user, device, &args.password)
}

/// The SDK options of one bench connection that logs in with `password`
/// (a device's own token) instead of `--password`.
fn options_with_password(
    args: &BenchArgs,
    user: &str,
    device: &str,
    password: &str,
) -> Result<ClientOptions, ClientError> {
    let options = ClientOptions::parse(&args.broker, user, device, password)?
        .inflight(args.inflight)
        .keep_alive_secs(args.keep_alive)
        .request_timeout(Duration::from_secs(args.drain_secs.max(10)))
        .connect_timeout(Duration::from_secs(30))
        .inbox_capacity(4096)
        .tcp_nodelay(args.tcp_nodelay);
    match &args.tls_ca {
        Some(ca) => options.tls_ca_file(ca),
        None => Ok(options),
    }
}

/// Connects every `(user, device)`, at most `--connect-concurrency` at a
/// time; results are in the order of `logins`.
pub(crate) async fn connect_all(
    args: &BenchArgs,
    logins: &[(String, String)],
    stats: &Arc<Stats>,
) -> Vec<Result<Client, ClientError>> {
    let logins: Vec<(String, String, String)> = logins
        .iter()
        .map(|(user, device)| (user.clone(), device.clone(), args.password.clone()))
        .collect();
    connect_all_with_passwords(args, &logins, stats).await
}

/// [`connect_all`] for `(user, device, password)` logins, each with its own
/// password (or token).
pub(crate) async fn connect_all_with_passwords(
    args: &BenchArgs,
    logins: &[(String, String, String)],
    stats: &Arc<Stats>,
) -> Vec<Result<Client, ClientError>> {
    let permits = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let mut tasks = JoinSet::new();
    for (i, (user, device, password)) in logins.iter().enumerate() {
        let opts = options_with_password(args, user, device, password);
        let permits = permits.clone();
        let stats = stats.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let started = Instant::now();
            let result = match opts {
                Ok(opts) => Client::connect(opts).await,
                Err(err) => Err(err),
            };
            match &result {
                Ok(_) => stats.record_connect(started.elapsed()),
                Err(err) => stats.record_error(&format!("connect:{}", error_kind(err))),
            }
            (i, result)
        });
    }
    let mut results: Vec<Option<Result<Client, ClientError>>> =
        (0..logins.len()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, result)) = joined {
            results[i] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(ClientError::Disconnected)))
        .collect()
}

/// Connects every login or fails with the first error, naming the user.
pub(crate) async fn connect_all_or_fail(
    args: &BenchArgs,
    logins: &[(String, String)],
    stats: &Arc<Stats>,
) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(logins.len());
    for (result, (user, device)) in connect_all(args, logins, stats)
        .await
        .into_iter()
        .zip(logins)
    {
        match result {
            Ok(client) => clients.push(client),
            Err(err) => {
                disconnect_all(&clients).await;
                anyhow::bail!(
                    "{user}:{device} could not connect to {}: {err} \
                     (the bench users {}0.. must exist with --password: \
                     `parley user add USER --password PW` or POST /v1/register)",
                    args.broker,
                    args.users_prefix
                );
            }
        }
    }
    Ok(clients)
}

/// Disconnects every client, a bounded number at a time.
pub(crate) async fn disconnect_all(clients: &[Client]) {
    let mut tasks = JoinSet::new();
    for chunk in clients.chunks(256) {
        for client in chunk {
            let client = client.clone();
            tasks.spawn(async move {
                let _ = client.disconnect().await;
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// A short, stable name for an error in the report.
pub(crate) fn error_kind(err: &ClientError) -> String {
    match err {
        ClientError::Server { code, .. } => format!("server:{}", code.as_str_name()),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::Disconnected => "disconnected".into(),
        ClientError::Refused(code) => format!("refused:{code:?}"),
        ClientError::Connection(_) => "connection".into(),
        ClientError::SubscribeRefused(_) => "subscribe-refused".into(),
        ClientError::InvalidOptions(_) => "invalid-options".into(),
        ClientError::UnexpectedReply(_) => "unexpected-reply".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_proto::v1::ErrorCode;

    #[test]
    fn error_kinds_are_short_and_stable() {
        let server = ClientError::Server {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
        };
        assert_eq!(error_kind(&server), "server:RATE_LIMITED");
        assert_eq!(error_kind(&ClientError::Disconnected), "disconnected");
        assert_eq!(
            error_kind(&ClientError::Refused(
                parley_client::ConnectReturnCode::NotAuthorized
            )),
            "refused:NotAuthorized"
        );
    }

    #[test]
    fn a_tls_ca_file_is_read_into_the_options_and_a_missing_one_is_an_error() {
        use clap::Parser;
        let dir = std::env::temp_dir().join(format!("parley-bench-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----\n").unwrap();
        let parse = |ca: &std::path::Path| {
            let ca = ca.to_str().unwrap();
            BenchArgs::try_parse_from(["b", "idle", "--broker", "mqtts://h:8883", "--tls-ca", ca])
                .unwrap()
        };
        let options = options(&parse(&ca), "u", "d").unwrap();
        assert_eq!(
            options.tls_ca.as_deref(),
            Some(&b"-----BEGIN CERTIFICATE-----\n"[..])
        );
        let missing = options_with_password(&parse(&dir.join("none.pem")), "u", "d", "p");
        let error = missing.unwrap_err().to_string();
        assert!(error.contains("cannot read the CA file"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
