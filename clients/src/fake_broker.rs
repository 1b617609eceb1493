//! A scripted MQTT 3.1.1 peer for the SDK's unit tests: it answers CONNECT,
//! SUBSCRIBE, PINGREQ and QoS 1 PUBLISH, hands each decoded `Request` to a
//! handler and publishes what the handler returns. No chat logic: the real
//! broker is tested end to end in `tests/`.

use std::net::SocketAddr;
use std::sync::Arc;

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

/// How the fake answers.
#[derive(Clone)]
pub struct Script {
    pub connack: ConnectReturnCode,
    pub refuse_subscribe: bool,
    pub handler: Handler,
}

impl Script {
    pub fn answering(
        handler: impl Fn(&str, Request) -> Vec<(String, Vec<u8>)> + Send + Sync + 'static,
    ) -> Self {
        Script {
            connack: ConnectReturnCode::Success,
            refuse_subscribe: false,
            handler: Arc::new(handler),
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
                    let code = if script.refuse_subscribe {
                        SubscribeReasonCode::Failure
                    } else {
                        SubscribeReasonCode::Success(QoS::AtLeastOnce)
                    };
                    answers.push(Packet::SubAck(SubAck::new(
                        sub.pkid,
                        vec![code; sub.filters.len()],
                    )));
                }
                Packet::PingReq => answers.push(Packet::PingResp),
                Packet::Publish(publish) => {
                    if publish.qos == QoS::AtLeastOnce {
                        answers.push(Packet::PubAck(PubAck::new(publish.pkid)));
                    }
                    if let Ok(request) = Request::decode(publish.payload.as_ref()) {
                        for (topic, payload) in (script.handler)(&user, request) {
                            next_pkid = next_pkid % 60_000 + 1;
                            let mut out = Publish::new(topic, QoS::AtLeastOnce, payload);
                            out.pkid = next_pkid;
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
