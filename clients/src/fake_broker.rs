//! A scripted MQTT 3.1.1 peer for the SDK's unit tests: it answers CONNECT,
//! SUBSCRIBE, PINGREQ and PUBLISH, hands each decoded `Request` to a
//! handler and publishes what the handler returns, at the QoS the client
//! subscribed with (at most 1), and logs what the client sent
//! ([`Script::log`]). No chat logic: the real broker is tested end to end
//! in `tests/`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use parley_proto::v1::Request;
use prost::Message;
use rumqttc::mqttbytes::Error as MqttError;
use rumqttc::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck, SubscribeReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Publishes to send back: `(topic, payload)`.
pub type Handler = Arc<dyn Fn(&str, Request) -> Vec<(String, Vec<u8>)> + Send + Sync>;

/// Publishes to send after a SUBACK, given the user and the filters:
/// `(topic, payload, retain)`.
pub type OnSubscribe = Arc<dyn Fn(&str, &[String]) -> Vec<(String, Vec<u8>, bool)> + Send + Sync>;

/// How the fake answers.
#[derive(Clone)]
pub struct Script {
    pub connack: ConnectReturnCode,
    pub refuse_subscribe: bool,
    /// Filters refused even when `refuse_subscribe` is off.
    pub refused_filters: Vec<String>,
    pub handler: Handler,
    pub on_subscribe: Option<OnSubscribe>,
    /// What the clients sent, one line per subscribed filter
    /// (`SUBSCRIBE {filter} qos {n}`) and per publish (`PUBLISH {topic}
    /// qos {n}`), shared by every connection.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Script {
    pub fn answering(
        handler: impl Fn(&str, Request) -> Vec<(String, Vec<u8>)> + Send + Sync + 'static,
    ) -> Self {
        Script {
            connack: ConnectReturnCode::Success,
            refuse_subscribe: false,
            refused_filters: Vec::new(),
            handler: Arc::new(handler),
            on_subscribe: None,
            log: Arc::default(),
        }
    }
}

/// Listens on 127.0.0.1:0 and serves every connection with `script`.
pub async fn start(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, script.clone()));
        }
    });
    addr
}

async fn serve(mut socket: TcpStream, script: Script) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut user = String::new();
    let mut next_pkid: u16 = 0;
    // Granted QoS per subscribed filter (topics are matched exactly).
    let mut granted: HashMap<String, QoS> = HashMap::new();
    let log = |line: String| script.log.lock().unwrap().push(line);
    loop {
        match socket.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let packet = match Packet::read(&mut buf, 1 << 24) {
                Ok(packet) => packet,
                Err(MqttError::InsufficientBytes(_)) => break,
                Err(_) => return,
            };
            let mut answers = Vec::new();
            match packet {
                Packet::Connect(connect) => {
                    user = connect.login.map(|l| l.username).unwrap_or_default();
                    answers.push(Packet::ConnAck(ConnAck::new(script.connack, false)));
                }
                Packet::Subscribe(sub) => {
                    let codes = sub
                        .filters
                        .iter()
                        .map(|filter| {
                            log(format!(
                                "SUBSCRIBE {} qos {}",
                                filter.path, filter.qos as u8
                            ));
                            if script.refuse_subscribe
                                || script.refused_filters.contains(&filter.path)
                            {
                                SubscribeReasonCode::Failure
                            } else {
                                let qos = match filter.qos {
                                    QoS::AtMostOnce => QoS::AtMostOnce,
                                    _ => QoS::AtLeastOnce,
                                };
                                granted.insert(filter.path.clone(), qos);
                                SubscribeReasonCode::Success(qos)
                            }
                        })
                        .collect();
                    answers.push(Packet::SubAck(SubAck::new(sub.pkid, codes)));
                    if let Some(hook) = &script.on_subscribe {
                        let filters: Vec<String> =
                            sub.filters.iter().map(|f| f.path.clone()).collect();
                        for (topic, payload, retain) in hook(&user, &filters) {
                            let mut out =
                                publish_as_granted(&granted, &mut next_pkid, topic, payload);
                            out.retain = retain;
                            answers.push(Packet::Publish(out));
                        }
                    }
                }
                Packet::PingReq => answers.push(Packet::PingResp),
                Packet::Publish(publish) => {
                    log(format!(
                        "PUBLISH {} qos {}",
                        publish.topic, publish.qos as u8
                    ));
                    if publish.qos == QoS::AtLeastOnce {
                        answers.push(Packet::PubAck(PubAck::new(publish.pkid)));
                    }
                    if let Ok(request) = Request::decode(publish.payload.as_ref()) {
                        for (topic, payload) in (script.handler)(&user, request) {
                            let out = publish_as_granted(&granted, &mut next_pkid, topic, payload);
                            answers.push(Packet::Publish(out));
                        }
                    }
                }
                Packet::Disconnect => return,
                _ => {}
            }
            let mut out = BytesMut::new();
            for answer in answers {
                answer.write(&mut out, 1 << 24).unwrap();
            }
            if socket.write_all(&out).await.is_err() {
                return;
            }
            if script.connack != ConnectReturnCode::Success {
                return;
            }
        }
    }
}

/// A PUBLISH on `topic` at the QoS granted for it (QoS 1 for a topic
/// nobody subscribed to), with the next packet id at QoS 1.
fn publish_as_granted(
    granted: &HashMap<String, QoS>,
    next_pkid: &mut u16,
    topic: String,
    payload: Vec<u8>,
) -> Publish {
    let qos = granted.get(&topic).copied().unwrap_or(QoS::AtLeastOnce);
    let mut out = Publish::new(topic, qos, payload);
    if qos == QoS::AtLeastOnce {
        *next_pkid = *next_pkid % 60_000 + 1;
        out.pkid = *next_pkid;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parley_proto::v1::{
        envelope, reply, request, Ack, ChatMessage, Envelope, ErrorCode, Reply,
    };

    use super::*;
    use crate::{Client, ClientError, ClientOptions};

    fn reply_to(user: &str, request_id: &str, body: reply::Body) -> (String, Vec<u8>) {
        let reply = Reply {
            request_id: request_id.to_string(),
            body: Some(body),
        };
        (format!("reply/{user}/d"), reply.encode_to_vec())
    }

    /// Acks sends with seq = text length and echoes the message into the inbox.
    fn chat_script() -> Script {
        Script::answering(|user, req| match req.body {
            Some(request::Body::Send(send)) if send.text == "forbidden" => vec![reply_to(
                user,
                &req.request_id,
                reply::Body::Error(parley_proto::v1::Error {
                    code: ErrorCode::NotMember as i32,
                    message: "not a member".into(),
                }),
            )],
            Some(request::Body::Send(send)) => {
                let envelope = Envelope {
                    inbox_seq: 1,
                    body: Some(envelope::Body::Message(ChatMessage {
                        channel: send.channel.clone(),
                        seq: 1,
                        sender: user.to_string(),
                        text: send.text.clone(),
                        ..Default::default()
                    })),
                };
                vec![
                    (format!("inbox/{user}"), b"\xff\xff not protobuf".to_vec()),
                    reply_to(user, "someone-else", reply::Body::Ack(Ack::default())),
                    reply_to(
                        user,
                        &req.request_id,
                        reply::Body::Ack(Ack {
                            channel: send.channel,
                            seq: send.text.len() as u64,
                            ts_ms: 1,
                            duplicate: false,
                        }),
                    ),
                    (format!("inbox/{user}"), envelope.encode_to_vec()),
                ]
            }
            Some(request::Body::Sync(_)) => vec![], // never answered
            _ => vec![reply_to(
                user,
                &req.request_id,
                reply::Body::Ack(Ack::default()),
            )],
        })
    }

    fn opts(addr: SocketAddr) -> ClientOptions {
        ClientOptions::new(addr, "alice", "d", "pw")
            .request_timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_secs(5))
    }

    #[tokio::test]
    async fn requests_and_replies_travel_at_qos_0_and_the_inbox_at_qos_1() {
        let script = chat_script();
        let log = script.log.clone();
        let addr = start(script).await;
        let client = Client::connect(opts(addr)).await.unwrap();
        let ack = client.send("dm:alice:bob", "hello").await.unwrap();
        assert_eq!(ack.seq, 5, "the reply arrived at QoS 0");
        client
            .next_envelope(Duration::from_secs(2))
            .await
            .unwrap()
            .expect("the envelope arrived at QoS 1");
        client.disconnect().await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log,
            [
                "SUBSCRIBE inbox/alice qos 1",
                "SUBSCRIBE reply/alice/d qos 0",
                "PUBLISH req/alice/d qos 0",
            ]
        );
    }

    #[tokio::test]
    async fn send_is_answered_by_its_reply_and_echoed_in_the_inbox() {
        let addr = start(chat_script()).await;
        let client = Client::connect(opts(addr)).await.unwrap();
        assert!(client.is_connected());
        assert!(!client.session_present());
        let ack = client.send("dm:alice:bob", "hello").await.unwrap();
        assert_eq!((ack.channel.as_str(), ack.seq), ("dm:alice:bob", 5));
        // The undecodable publish is skipped; the real envelope comes through.
        let env = client
            .next_envelope(Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap();
        match env.body {
            Some(envelope::Body::Message(m)) => assert_eq!(m.text, "hello"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(client
            .next_envelope(Duration::from_millis(50))
            .await
            .unwrap()
            .is_none());
        let group = client.create_group("team", "Team", ["bob"]).await.unwrap();
        assert_eq!(group, Ack::default());
        client.disconnect().await.unwrap();
        assert!(!client.is_connected());
        assert!(matches!(
            client.send("dm:alice:bob", "again").await,
            Err(ClientError::Disconnected)
        ));
        assert!(matches!(
            client.next_envelope(Duration::from_millis(50)).await,
            Err(ClientError::Disconnected)
        ));
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_replies() {
        let addr = start(chat_script()).await;
        let client = Client::connect(opts(addr).request_timeout(Duration::from_secs(5)))
            .await
            .unwrap();
        let sends = (1..=50).map(|n| {
            let client = client.clone();
            async move { (n, client.send("g:x", &"x".repeat(n)).await) }
        });
        for (n, result) in futures_join_all(sends).await {
            assert_eq!(result.unwrap().seq, n as u64);
        }
    }

    #[tokio::test]
    async fn server_errors_and_raw_replies() {
        let addr = start(chat_script()).await;
        let client = Client::connect(opts(addr)).await.unwrap();
        let err = client.send("dm:alice:bob", "forbidden").await.unwrap_err();
        assert_eq!(err.server_code(), Some(ErrorCode::NotMember));
        let raw = client
            .request(request::Body::Send(parley_proto::v1::SendMessage {
                channel: "c".into(),
                client_msg_id: "m".into(),
                text: "forbidden".into(),
            }))
            .await
            .unwrap();
        assert!(matches!(raw.body, Some(reply::Body::Error(_))));
    }

    #[tokio::test]
    async fn unanswered_requests_time_out() {
        let addr = start(chat_script()).await;
        let client = Client::connect(opts(addr)).await.unwrap();
        let err = client.sync(0, 10).await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn refusals_are_reported() {
        let mut script = chat_script();
        script.connack = ConnectReturnCode::NotAuthorized;
        let addr = start(script).await;
        let err = Client::connect(opts(addr)).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Refused(ConnectReturnCode::NotAuthorized)),
            "{err}"
        );

        let mut script = chat_script();
        script.refuse_subscribe = true;
        let addr = start(script).await;
        let err = Client::connect(opts(addr)).await.unwrap_err();
        assert!(
            matches!(err, ClientError::SubscribeRefused(ref t) if t == "inbox/alice"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn cli_send_prints_the_ack_as_one_json_line() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: crate::cli::ChatCommand,
        }
        let addr = start(chat_script()).await;
        let broker = addr.to_string();
        let argv = [
            "t",
            "send",
            "--broker",
            &broker,
            "--user",
            "alice",
            "--device",
            "d",
            "--password",
            "pw",
            "@bob",
            "hey",
        ];
        let cmd = Cli::try_parse_from(argv).unwrap().cmd;
        let mut out = Vec::new();
        crate::cli::run_to(cmd, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let value: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(value["channel"], "dm:alice:bob");
        assert_eq!(value["seq"], 3);

        let argv = [
            "t",
            "send",
            "--broker",
            &broker,
            "--user",
            "alice",
            "--device",
            "d",
            "--password",
            "pw",
            "g:x",
            "forbidden",
        ];
        let cmd = Cli::try_parse_from(argv).unwrap().cmd;
        let mut out = Vec::new();
        assert!(crate::cli::run_to(cmd, &mut out).await.is_err());
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["error"]["code"], "NOT_MEMBER");
    }

    fn presence_payload(user: &str, online: bool) -> Vec<u8> {
        parley_proto::v1::Presence {
            user: user.into(),
            online,
            last_active_ms: 1_000,
        }
        .encode_to_vec()
    }

    fn typing_envelope(user: &str) -> Vec<u8> {
        Envelope {
            inbox_seq: 0,
            body: Some(envelope::Body::Typing(parley_proto::v1::TypingEvent {
                channel: "dm:alice:bob".into(),
                user: user.into(),
            })),
        }
        .encode_to_vec()
    }

    /// Friends and presence: bob's state retained on a presence
    /// subscription; typing, friends, presence queries, receipts, push and
    /// logout answered as the broker would.
    fn social_script() -> Script {
        let mut script = Script::answering(|user, req| {
            let ack = |ack: Ack| reply_to(user, &req.request_id, reply::Body::Ack(ack));
            match req.body {
                Some(request::Body::Typing(typing)) => vec![
                    (format!("inbox/{user}"), typing_envelope("bob")),
                    (format!("inbox/{user}"), typing_envelope("bob")),
                    (
                        format!("inbox/{user}"),
                        Envelope {
                            inbox_seq: 1,
                            body: None,
                        }
                        .encode_to_vec(),
                    ),
                    ack(Ack {
                        channel: typing.channel,
                        ..Ack::default()
                    }),
                ],
                Some(request::Body::ChangeFriends(change)) => vec![
                    (
                        format!("presence/mallory/{user}x"),
                        presence_payload("mallory", true),
                    ),
                    (
                        format!("presence/bob/{user}"),
                        presence_payload("bob", false),
                    ),
                    (format!("presence/carol/{user}"), Vec::new()),
                    ack(Ack {
                        seq: (change.add.len() * 10 + change.remove.len()) as u64,
                        ..Ack::default()
                    }),
                ],
                Some(request::Body::QueryPresence(query)) => {
                    let users = query
                        .users
                        .iter()
                        .map(|u| parley_proto::v1::Presence {
                            user: u.clone(),
                            online: u == "bob",
                            last_active_ms: 5,
                        })
                        .collect();
                    vec![reply_to(
                        user,
                        &req.request_id,
                        reply::Body::Presence(parley_proto::v1::PresenceList { users }),
                    )]
                }
                Some(request::Body::Receipt(receipt)) => vec![ack(Ack {
                    channel: receipt.channel,
                    seq: receipt.seq * 10 + receipt.kind as u64,
                    ..Ack::default()
                })],
                Some(request::Body::RegisterPush(push)) => vec![ack(Ack {
                    channel: format!("{}/{}", push.platform, push.token),
                    ..Ack::default()
                })],
                _ => vec![ack(Ack {
                    ts_ms: 9,
                    ..Ack::default()
                })],
            }
        });
        script.on_subscribe = Some(Arc::new(|user, filters| {
            if !filters.contains(&format!("presence/+/{user}")) {
                return Vec::new();
            }
            vec![
                (format!("presence/eve/{user}"), b"\xff\xff".to_vec(), true),
                (
                    format!("presence/bob/{user}"),
                    presence_payload("bob", true),
                    true,
                ),
            ]
        }));
        script
    }

    const SHORT: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn live_only_envelopes_reach_the_inbox_reader_every_time() {
        let addr = start(social_script()).await;
        let client = Client::connect(opts(addr)).await.unwrap();
        let ack = client.typing("dm:alice:bob").await.unwrap();
        assert_eq!(ack.channel, "dm:alice:bob");
        let mut seqs = Vec::new();
        while let Some(env) = client.next_envelope(Duration::from_secs(2)).await.unwrap() {
            seqs.push(env.inbox_seq);
            if seqs.len() == 3 {
                break;
            }
        }
        assert_eq!(seqs, [0, 0, 1], "inbox_seq 0 is never taken for a repeat");
    }

    #[tokio::test]
    async fn presence_arrives_with_its_retain_flag_and_clears() {
        let addr = start(social_script()).await;
        let client = Client::connect(opts(addr).presence(true)).await.unwrap();
        // the undecodable eve is skipped
        let retained = client.next_presence(Duration::from_secs(2)).await.unwrap();
        let retained = retained.expect("bob's retained state");
        assert_eq!(
            (
                retained.subject.as_str(),
                retained.online(),
                retained.retained
            ),
            ("bob", Some(true), true)
        );
        let ack = client.change_friends(["bob"], ["carol"]).await.unwrap();
        assert_eq!(ack.seq, 11, "one add, one remove");
        let live = client.next_presence(SHORT).await.unwrap().unwrap();
        assert_eq!(
            (live.subject.as_str(), live.online(), live.retained),
            ("bob", Some(false), false),
            "another observer's topic is ignored"
        );
        assert_eq!(live.last_active_ms(), Some(1_000));
        let cleared = client.next_presence(SHORT).await.unwrap().unwrap();
        assert_eq!(cleared.subject, "carol");
        assert!(cleared.is_cleared() && !cleared.retained);
        assert_eq!(client.next_presence(SHORT).await.unwrap(), None);
        client.disconnect().await.unwrap();
        assert!(matches!(
            client.next_presence(SHORT).await,
            Err(ClientError::Disconnected)
        ));
    }

    #[tokio::test]
    async fn presence_is_opt_in_and_can_be_subscribed_later() {
        let addr = start(social_script()).await;
        let client = Client::connect(opts(addr)).await.unwrap();
        assert_eq!(client.next_presence(SHORT).await.unwrap(), None);
        client.subscribe_presence().await.unwrap();
        let update = client.next_presence(Duration::from_secs(2)).await.unwrap();
        assert!(update.is_some_and(|u| u.subject == "bob" && u.retained));
        // again: the current states again
        client.subscribe_presence().await.unwrap();
        let update = client.next_presence(Duration::from_secs(2)).await.unwrap();
        assert!(update.is_some_and(|u| u.subject == "bob" && u.retained));
        // requests still meet their replies after the extra SUBACKs
        assert_eq!(client.typing("g:x").await.unwrap().channel, "g:x");

        let mut script = social_script();
        script.refused_filters = vec!["presence/+/alice".into()];
        let addr = start(script).await;
        let client = Client::connect(opts(addr)).await.unwrap();
        let err = client.subscribe_presence().await.unwrap_err();
        assert!(
            matches!(err, ClientError::SubscribeRefused(ref t) if t == "presence/+/alice"),
            "{err}"
        );
        let err = Client::connect(opts(addr).presence(true))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::SubscribeRefused(ref t) if t == "presence/+/alice"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn typed_helpers_send_their_requests() {
        let addr = start(social_script()).await;
        let client = Client::connect(opts(addr)).await.unwrap();
        let states = client.query_presence(["bob", "carol"]).await.unwrap();
        let states: Vec<(&str, bool)> =
            states.iter().map(|p| (p.user.as_str(), p.online)).collect();
        assert_eq!(states, [("bob", true), ("carol", false)]);
        let ack = client
            .receipt("dm:alice:bob", 4, parley_proto::v1::ReceiptKind::Read)
            .await
            .unwrap();
        assert_eq!((ack.channel.as_str(), ack.seq), ("dm:alice:bob", 42));
        let ack = client.register_push("app", "tok").await.unwrap();
        assert_eq!(ack.channel, "app/tok");
        let ack = client.logout().await.unwrap();
        assert_eq!(ack.ts_ms, 9);
        assert!(!client.is_connected(), "closed after the logout");
        assert!(matches!(
            client.query_presence(["bob"]).await,
            Err(ClientError::Disconnected)
        ));
    }

    /// Runs futures concurrently (a tiny join_all without the futures crate).
    async fn futures_join_all<F: std::future::Future + Send + 'static>(
        futs: impl Iterator<Item = F>,
    ) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futs.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}
