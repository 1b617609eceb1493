//! `dm --stalled N`: slow consumers. N extra raw TCP connections log in as
//! the dm receivers on devices of their own, subscribe to the receiver's
//! inbox at QoS 1 and then never read from the socket again. The broker fans
//! every message out to them too; the run shows whether its memory stays
//! bounded and whether the other receivers' latency suffers.
//!
//! The packets are rumqttc's own MQTT 3.1.1 types; the sockets are plain
//! tokio sockets with a small kernel receive buffer so that the broker's
//! send buffer fills quickly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, Subscribe, SubscribeReasonCode};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::stats::Stats;
use super::BenchArgs;
use parley_client::options::parse_broker_addr;

/// Kernel receive buffer asked for on every stalled socket (Linux doubles it).
const RECV_BUFFER: u32 = 4096;
/// Packet id of the one SUBSCRIBE (MQTT 3.1.1 wants it non-zero).
const SUBSCRIBE_PKID: u16 = 1;
/// Largest packet accepted while waiting for CONNACK and SUBACK.
const MAX_PACKET: usize = 1 << 24;
/// Time allowed for connecting, logging in and subscribing.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed at the end for finding out which sockets the broker closed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `(user, device)` of stalled connection `k`: the receivers `{prefix}{2i+1}`
/// in turn (cycling when there are more stalled connections than pairs), on
/// device `stalled{k}`.
pub(crate) fn logins(args: &BenchArgs) -> Vec<(String, String)> {
    let pairs = args.pairs.max(1) as usize;
    (0..args.stalled as usize)
        .map(|k| (args.user(2 * (k % pairs) + 1), format!("stalled{k}")))
        .collect()
}

/// The CONNECT: clean session, keep-alive 0 (the broker never times the
/// connection out), client id `{user}:{device}`.
pub(crate) fn connect_packet(user: &str, device: &str, password: &str) -> BytesMut {
    let mut connect = Connect::new(format!("{user}:{device}"));
    connect.keep_alive = 0;
    connect.clean_session = true;
    connect.set_login(user, password);
    let mut out = BytesMut::new();
    // Only a client id, username or password over 64 KiB fails to encode;
    // the broker then refuses the login and the CONNACK says so.
    let _ = connect.write(&mut out);
    out
}

/// The SUBSCRIBE to `inbox/{user}` at QoS 1.
pub(crate) fn subscribe_packet(user: &str) -> BytesMut {
    let mut subscribe = Subscribe::new(format!("inbox/{user}"), QoS::AtLeastOnce);
    subscribe.pkid = SUBSCRIBE_PKID;
    let mut out = BytesMut::new();
    let _ = subscribe.write(&mut out);
    out
}

/// Why a stalled connection could not be set up; the kind goes to the report.
#[derive(Debug)]
pub(crate) struct SetupError {
    /// `stalled:connect` or `stalled:subscribe`.
    pub kind: &'static str,
    pub detail: String,
}

impl SetupError {
    fn connect(detail: impl Into<String>) -> SetupError {
        SetupError {
            kind: "stalled:connect",
            detail: detail.into(),
        }
    }

    fn subscribe(detail: impl Into<String>) -> SetupError {
        SetupError {
            kind: "stalled:subscribe",
            detail: detail.into(),
        }
    }
}

/// Reads packets until `pick` accepts one (others, e.g. early PUBLISHes, are skipped).
async fn read_until<T>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    mut pick: impl FnMut(Packet) -> Option<T>,
) -> Result<T, String> {
    loop {
        loop {
            match Packet::read(buf, MAX_PACKET) {
                Ok(packet) => {
                    if let Some(found) = pick(packet) {
                        return Ok(found);
                    }
                }
                Err(MqttError::InsufficientBytes(_)) => break,
                Err(err) => return Err(format!("bad packet: {err:?}")),
            }
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err("closed by the broker".into()),
            Ok(_) => {}
            Err(err) => return Err(err.to_string()),
        }
    }
}

/// Opens one stalled connection: CONNECT, CONNACK, SUBSCRIBE, SUBACK; the
/// stream is then never read again.
pub(crate) async fn open_one(
    addr: SocketAddr,
    user: &str,
    device: &str,
    password: &str,
) -> Result<TcpStream, SetupError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|err| SetupError::connect(err.to_string()))?;
    // Best effort: with the default buffer the broker only has to fill more.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    let mut stream = socket
        .connect(addr)
        .await
        .map_err(|err| SetupError::connect(err.to_string()))?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(&connect_packet(user, device, password))
        .await
        .map_err(|err| SetupError::connect(err.to_string()))?;
    let mut buf = BytesMut::with_capacity(4096);
    let code = read_until(&mut stream, &mut buf, |packet| match packet {
        Packet::ConnAck(ack) => Some(ack.code),
        _ => None,
    })
    .await
    .map_err(SetupError::connect)?;
    if code != ConnectReturnCode::Success {
        return Err(SetupError::connect(format!("CONNACK {code:?}")));
    }
    stream
        .write_all(&subscribe_packet(user))
        .await
        .map_err(|err| SetupError::subscribe(err.to_string()))?;
    let codes = read_until(&mut stream, &mut buf, |packet| match packet {
        Packet::SubAck(ack) if ack.pkid == SUBSCRIBE_PKID => Some(ack.return_codes),
        _ => None,
    })
    .await
    .map_err(SetupError::subscribe)?;
    match codes.first() {
        Some(SubscribeReasonCode::Success(_)) => Ok(stream),
        other => Err(SetupError::subscribe(format!("SUBACK {other:?}"))),
    }
}

/// The open stalled connections of a run. Keep it until the last broker
/// memory sample has been taken, then [`Stalled::close`] it.
#[derive(Default)]
pub(crate) struct Stalled {
    streams: Vec<TcpStream>,
}

impl Stalled {
    /// Connections set up.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Ends the stalled connections after the run and returns how many of
    /// them the broker had already closed. The run being over, this is the
    /// one time the sockets are read: what is buffered is drained until end
    /// of file (closed), or until nothing more comes for a moment (open).
    pub async fn close(self) -> u64 {
        let mut tasks = JoinSet::new();
        for stream in self.streams {
            tasks.spawn(closed_by_peer(stream, PROBE_TIMEOUT));
        }
        let mut closed = 0;
        while let Some(joined) = tasks.join_next().await {
            closed += u64::from(joined.unwrap_or(false));
        }
        closed
    }
}

/// Whether the peer has closed `stream`: reads (and discards) what is
/// buffered until end of file or an error (closed), or until nothing arrives
/// for 200 ms or `limit` has passed (open). The stream is dropped.
async fn closed_by_peer(mut stream: TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let quiet = Instant::now() + Duration::from_millis(200);
        let until = quiet.min(deadline);
        match tokio::time::timeout_at(until.into(), stream.read(&mut scratch)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) if Instant::now() < deadline => {}
            Ok(Ok(_)) | Err(_) => return false,
        }
    }
}

/// Opens every stalled connection of `args`, at most
/// `--connect-concurrency` at a time. Failures are counted in `stats` (and
/// the first one is printed); only an unresolvable broker address fails.
pub(crate) async fn open_all(args: &BenchArgs, stats: &Arc<Stats>) -> anyhow::Result<Stalled> {
    let logins = logins(args);
    if logins.is_empty() {
        return Ok(Stalled::default());
    }
    let (host, port, _) = parse_broker_addr(&args.broker)?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} resolves to no address"))?;
    let permits = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let mut tasks = JoinSet::new();
    for (user, device) in logins {
        let (permits, password) = (permits.clone(), args.password.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let opened =
                tokio::time::timeout(SETUP_TIMEOUT, open_one(addr, &user, &device, &password))
                    .await
                    .unwrap_or_else(|_| Err(SetupError::connect("timed out")));
            (user, device, opened)
        });
    }
    let mut stalled = Stalled::default();
    let mut first_failure = None;
    while let Some(joined) = tasks.join_next().await {
        let Ok((user, device, opened)) = joined else {
            continue;
        };
        match opened {
            Ok(stream) => stalled.streams.push(stream),
            Err(err) => {
                stats.record_error(err.kind);
                first_failure.get_or_insert(format!("{user}:{device}: {}", err.detail));
            }
        }
    }
    if let Some(failure) = first_failure {
        eprintln!(
            "warning: {} of {} stalled connections failed (first: {failure})",
            args.stalled as usize - stalled.len(),
            args.stalled
        );
    }
    Ok(stalled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use rumqttc::mqttbytes::v4::{ConnAck, Publish, SubAck};
    use tokio::net::TcpListener;

    fn args(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["b", "dm", "--users-prefix", "u"];
        argv.extend_from_slice(extra);
        BenchArgs::try_parse_from(argv).unwrap()
    }

    #[test]
    fn stalled_logins_are_the_receivers_on_their_own_devices() {
        assert!(logins(&args(&["--pairs", "3"])).is_empty());
        let logins = logins(&args(&["--pairs", "3", "--stalled", "7"]));
        let users: Vec<&str> = logins.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(users, ["u1", "u3", "u5", "u1", "u3", "u5", "u1"]);
        let devices: Vec<&str> = logins.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(
            devices,
            ["stalled0", "stalled1", "stalled2", "stalled3", "stalled4", "stalled5", "stalled6"]
        );
        let fewer = super::logins(&args(&["--pairs", "50", "--stalled", "2"]));
        assert_eq!(
            fewer,
            [
                ("u1".to_string(), "stalled0".to_string()),
                ("u3".to_string(), "stalled1".to_string())
            ]
        );
    }

    #[test]
    fn connect_packet_decodes_as_a_clean_session_without_keep_alive() {
        let mut bytes = connect_packet("u3", "stalled1", "pw");
        let Packet::Connect(connect) = Packet::read(&mut bytes, MAX_PACKET).unwrap() else {
            panic!("not a CONNECT");
        };
        assert!(bytes.is_empty());
        assert_eq!(connect.client_id, "u3:stalled1");
        assert_eq!(connect.keep_alive, 0);
        assert!(connect.clean_session);
        assert_eq!(connect.last_will, None);
        let login = connect.login.unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("u3", "pw")
        );
        // Protocol name "MQTT", level 4 (3.1.1), flags: username, password, clean session.
        let raw = connect_packet("u3", "stalled1", "pw");
        assert_eq!(raw[0], 0x10);
        assert_eq!(&raw[2..10], b"\x00\x04MQTT\x04\xc2");
        assert_eq!(&raw[10..12], b"\x00\x00");
    }

    #[test]
    fn subscribe_packet_asks_for_the_inbox_at_qos_1() {
        let mut bytes = subscribe_packet("u5");
        let Packet::Subscribe(subscribe) = Packet::read(&mut bytes, MAX_PACKET).unwrap() else {
            panic!("not a SUBSCRIBE");
        };
        assert!(bytes.is_empty());
        assert_eq!(subscribe.pkid, SUBSCRIBE_PKID);
        assert_eq!(subscribe.filters.len(), 1);
        assert_eq!(subscribe.filters[0].path, "inbox/u5");
        assert_eq!(subscribe.filters[0].qos, QoS::AtLeastOnce);
        assert_eq!(subscribe_packet("u5")[0], 0x82);
    }

    /// What the test peer does after the handshake.
    #[derive(Clone, Copy)]
    enum Then {
        /// Writes until a write blocks for a while; sends whether it did.
        Flood,
        /// Closes the connection.
        Close,
    }

    async fn next_packet(socket: &mut TcpStream, buf: &mut BytesMut) -> Packet {
        loop {
            if let Ok(packet) = Packet::read(buf, MAX_PACKET) {
                return packet;
            }
            assert!(socket.read_buf(buf).await.unwrap() > 0, "closed");
        }
    }

    /// A one-connection MQTT peer: answers CONNECT with `code`, SUBSCRIBE
    /// with a PUBLISH first and then the SUBACK, and then does `then`.
    async fn peer(
        code: ConnectReturnCode,
        then: Then,
    ) -> (SocketAddr, tokio::sync::oneshot::Receiver<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            if !handshake(&mut socket, code).await {
                return;
            }
            match then {
                Then::Close => drop(socket),
                Then::Flood => {
                    let blocked = flood(&mut socket).await;
                    let _ = tx.send(blocked);
                    if blocked {
                        // Keep the socket open until the client drops its end.
                        let mut sink = [0u8; 16];
                        let _ = socket.read(&mut sink).await;
                    }
                }
            }
        });
        (addr, rx)
    }

    /// The peer's side of the login: answers the CONNECT with `code` and,
    /// if that is a success, the SUBSCRIBE with a PUBLISH and the SUBACK.
    /// Returns whether the login succeeded.
    async fn handshake(socket: &mut TcpStream, code: ConnectReturnCode) -> bool {
        let mut buf = BytesMut::new();
        let Packet::Connect(_) = next_packet(socket, &mut buf).await else {
            panic!("no CONNECT")
        };
        let mut out = BytesMut::new();
        ConnAck::new(code, false).write(&mut out).unwrap();
        socket.write_all(&out).await.unwrap();
        if code != ConnectReturnCode::Success {
            return false;
        }
        let Packet::Subscribe(sub) = next_packet(socket, &mut buf).await else {
            panic!("no SUBSCRIBE")
        };
        assert_eq!(sub.pkid, SUBSCRIBE_PKID);
        let mut out = BytesMut::new();
        Publish::new("inbox/u1", QoS::AtMostOnce, "early")
            .write(&mut out)
            .unwrap();
        SubAck::new(
            SUBSCRIBE_PKID,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        )
        .write(&mut out)
        .unwrap();
        socket.write_all(&out).await.unwrap();
        true
    }

    /// Writes until a write blocks for a while; returns whether one did.
    async fn flood(socket: &mut TcpStream) -> bool {
        let chunk = vec![0u8; 64 * 1024];
        // 64 MiB is far more than any socket buffers: a reader would take it all.
        for _ in 0..1024 {
            let wrote =
                tokio::time::timeout(Duration::from_millis(500), socket.write_all(&chunk)).await;
            if wrote.is_err() {
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn a_stalled_connection_subscribes_then_never_reads() {
        let (addr, blocked) = peer(ConnectReturnCode::Success, Then::Flood).await;
        let stream = open_one(addr, "u1", "stalled0", "pw").await.unwrap();
        let stalled = Stalled {
            streams: vec![stream],
        };
        assert!(
            blocked.await.unwrap(),
            "the peer's writes never blocked: the stream was read"
        );
        assert_eq!(stalled.len(), 1);
        assert_eq!(stalled.close().await, 0);
    }

    #[tokio::test]
    async fn a_refused_login_is_a_connect_error() {
        let (addr, _) = peer(ConnectReturnCode::NotAuthorized, Then::Close).await;
        let err = open_one(addr, "u1", "stalled0", "bad").await.unwrap_err();
        assert_eq!(err.kind, "stalled:connect");
        assert!(err.detail.contains("NotAuthorized"), "{}", err.detail);
    }

    #[tokio::test]
    async fn a_connection_the_broker_closed_is_counted() {
        let (addr, _) = peer(ConnectReturnCode::Success, Then::Close).await;
        let stream = open_one(addr, "u1", "stalled0", "pw").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stalled = Stalled {
            streams: vec![stream],
        };
        assert_eq!(stalled.close().await, 1);
    }

    #[tokio::test]
    async fn open_all_counts_failures_by_kind() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let broker = addr.to_string();
        let args = args(&["--pairs", "2", "--stalled", "3", "--broker", &broker]);
        let stats = Arc::new(Stats::new());
        let stalled = open_all(&args, &stats).await.unwrap();
        assert_eq!(stalled.len(), 0);
        assert_eq!(stats.error_kinds().get("stalled:connect"), Some(&3));
    }
}
