//! Raw rumqttc clients, 3.1.1 ([`RawV4`]) and 5 ([`RawV5`]), for what the
//! SDK hides: refused CONNACKs and SUBACKs, session present, raw payloads,
//! subscriptions made (or not) by hand, manual PUBACKs.
//!
//! Each client polls its rumqttc event loop in a task that forwards every
//! event to a channel; the test reads the channel. Publishes that arrive
//! while the test waits for something else are buffered, so nothing is
//! lost. The task stops at the first connection error (no reconnection).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use parley_proto::topics;
use parley_proto::v1::{request, Envelope, Reply, Request};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::WAIT;

/// Largest packet the raw clients accept (a 100,000-emoji message is ~400 KB).
const MAX_PACKET: usize = 4 * 1024 * 1024;

/// rumqttc 3.1.1 options: keep-alive 30 s, large packets allowed.
pub fn v4_options(
    addr: SocketAddr,
    client_id: &str,
    user: &str,
    password: &str,
    clean_session: bool,
) -> rumqttc::MqttOptions {
    let mut opts = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_credentials(user, password)
        .set_clean_session(clean_session)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts
}

/// rumqttc 5 options; `session_expiry` > 0 asks for a durable session, and
/// clean start is off then (resume the session if there is one).
pub fn v5_options(
    addr: SocketAddr,
    client_id: &str,
    user: &str,
    password: &str,
    session_expiry: Option<u32>,
) -> rumqttc::v5::MqttOptions {
    let mut opts = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_credentials(user, password)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(MAX_PACKET as u32))
        .set_session_expiry_interval(session_expiry)
        .set_clean_start(session_expiry.unwrap_or(0) == 0);
    opts
}

/// TCP_NODELAY: without it, a request written right after a PUBACK waits
/// for the broker's delayed ACK (Nagle), about 40 ms per request.
fn nodelay() -> rumqttc::NetworkOptions {
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(WAIT.as_secs());
    network
}

macro_rules! raw_client {
    (
        $(#[$doc:meta])*
        $name:ident,
        client = $client:ty,
        options = $options:ty,
        eventloop = $eventloop:ty,
        event = $event:ty,
        error = $error:ty,
        publish = $publish:ty,
        reason = $reason:ty,
        qos1 = $qos1:expr,
        new = $new:path,
        tune = |$el:ident| $tune:expr,
        connack = $connack:pat => $present:expr,
        suback = $suback:pat => $codes:expr,
        incoming_publish = $inpub:pat => $pubval:expr,
        disconnected = $disc:pat,
        topic_of = $topic_of:expr,
        subscribe = |$sc:ident, $filters:ident| $subscribe:expr,
    ) => {
        $(#[$doc])*
        pub struct $name {
            /// The rumqttc handle, for anything the helpers do not cover.
            pub client: $client,
            /// CONNACK session present.
            pub session_present: bool,
            user: String,
            device: String,
            events: mpsc::UnboundedReceiver<Result<$event, String>>,
            publishes: VecDeque<$publish>,
            closed: Option<String>,
            task: JoinHandle<()>,
            next_request: u64,
        }

        impl $name {
            /// Connects and waits for the CONNACK; a refusal is the error.
            pub async fn connect(opts: $options, user: &str, device: &str) -> Result<Self, $error> {
                let (client, mut eventloop): ($client, $eventloop) = $new(opts, 1000);
                {
                    let $el = &mut eventloop;
                    $tune;
                }
                let deadline = Instant::now() + WAIT;
                let session_present = loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, eventloop.poll()).await {
                        Err(_) => panic!("no CONNACK within {WAIT:?} for {user}:{device}"),
                        Ok(Err(error)) => return Err(error),
                        Ok(Ok($connack)) => break $present,
                        Ok(Ok(_)) => continue,
                    }
                };
                let (tx, events) = mpsc::unbounded_channel();
                let task = tokio::spawn(async move {
                    loop {
                        match eventloop.poll().await {
                            Ok(event) => {
                                let last = matches!(event, $disc);
                                if tx.send(Ok(event)).is_err() || last {
                                    return;
                                }
                            }
                            Err(error) => {
                                let _ = tx.send(Err(error.to_string()));
                                return;
                            }
                        }
                    }
                });
                Ok(Self {
                    client,
                    session_present,
                    user: user.to_string(),
                    device: device.to_string(),
                    events,
                    publishes: VecDeque::new(),
                    closed: None,
                    task,
                    next_request: 0,
                })
            }

            /// The next event before `deadline`; publishes are buffered
            /// instead of returned. None: deadline passed or connection closed.
            async fn next_other_event(&mut self, deadline: Instant) -> Option<$event> {
                loop {
                    if self.closed.is_some() {
                        return None;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, self.events.recv()).await {
                        Err(_) => return None,
                        Ok(None) => {
                            self.closed = Some("event loop ended".into());
                            return None;
                        }
                        Ok(Some(Err(error))) => {
                            self.closed = Some(error);
                            return None;
                        }
                        Ok(Some(Ok($inpub))) => self.publishes.push_back($pubval),
                        Ok(Some(Ok(event))) => return Some(event),
                    }
                }
            }

            /// Subscribes to `filters` (QoS 1, one SUBSCRIBE) and returns the
            /// SUBACK's codes, one per filter.
            pub async fn subscribe(&mut self, filters: &[&str]) -> Vec<$reason> {
                let $sc = &self.client;
                let $filters = filters;
                $subscribe.await.expect("send SUBSCRIBE");
                let deadline = Instant::now() + WAIT;
                loop {
                    match self.next_other_event(deadline).await {
                        Some($suback) => return $codes,
                        Some(_) => continue,
                        None => panic!(
                            "{}:{}: no SUBACK for {filters:?} ({})",
                            self.user,
                            self.device,
                            self.closed.as_deref().unwrap_or("timed out")
                        ),
                    }
                }
            }

            /// Subscribes to `inbox/{user}` and `reply/{user}/{device}`,
            /// asserting that both are granted.
            pub async fn subscribe_own(&mut self) {
                let inbox = topics::inbox(&self.user);
                let reply = topics::reply(&self.user, &self.device);
                let codes = self.subscribe(&[&inbox, &reply]).await;
                assert_eq!(codes.len(), 2, "SUBACK codes for own topics: {codes:?}");
                for code in &codes {
                    assert!(
                        format!("{code:?}").starts_with("Success"),
                        "own topics refused: {codes:?}"
                    );
                }
            }

            /// Publishes `payload` on `topic` at QoS 1.
            pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
                self.client
                    .publish(topic, $qos1, false, payload)
                    .await
                    .expect("queue a PUBLISH");
            }

            /// The next publish whose topic is `topic` (others stay buffered).
            pub async fn next_publish_on(&mut self, topic: &str, timeout: Duration) -> Option<$publish> {
                let deadline = Instant::now() + timeout;
                loop {
                    let topic_of = $topic_of;
                    if let Some(i) = self.publishes.iter().position(|p| topic_of(p) == topic) {
                        return self.publishes.remove(i);
                    }
                    if self.closed.is_some() || Instant::now() >= deadline {
                        return None;
                    }
                    // Returns on a new event (buffered if a publish) or the deadline.
                    let _ = self.next_other_event_or_publish(deadline).await;
                }
            }

            async fn next_other_event_or_publish(&mut self, deadline: Instant) -> bool {
                let before = self.publishes.len();
                let left = deadline.saturating_duration_since(Instant::now());
                // Wait for one event; a publish is buffered by next_other_event's logic.
                match tokio::time::timeout(left, self.events.recv()).await {
                    Err(_) => false,
                    Ok(None) => {
                        self.closed = Some("event loop ended".into());
                        false
                    }
                    Ok(Some(Err(error))) => {
                        self.closed = Some(error);
                        false
                    }
                    Ok(Some(Ok($inpub))) => {
                        self.publishes.push_back($pubval);
                        self.publishes.len() > before
                    }
                    Ok(Some(Ok(_))) => true,
                }
            }

            /// The next envelope published on `inbox/{user}`, decoded.
            pub async fn next_envelope(&mut self, timeout: Duration) -> Option<Envelope> {
                let inbox = topics::inbox(&self.user);
                let publish = self.next_publish_on(&inbox, timeout).await?;
                Some(Envelope::decode(publish.payload.as_ref()).expect("an inbox payload decodes as Envelope"))
            }

            /// The next inbox publish, undecoded (to ack it by hand).
            pub async fn next_inbox_publish(&mut self, timeout: Duration) -> Option<$publish> {
                let inbox = topics::inbox(&self.user);
                self.next_publish_on(&inbox, timeout).await
            }

            /// Publishes `payload` on `req/{user}/{device}` and returns the
            /// next reply on `reply/{user}/{device}`, whatever its id.
            pub async fn request_payload(&mut self, payload: Vec<u8>) -> Reply {
                let (req, reply) = (topics::request(&self.user, &self.device), topics::reply(&self.user, &self.device));
                self.publish(&req, payload).await;
                let publish = self
                    .next_publish_on(&reply, WAIT)
                    .await
                    .unwrap_or_else(|| panic!("{}:{}: no reply within {WAIT:?} ({:?})", self.user, self.device, self.closed));
                Reply::decode(publish.payload.as_ref()).expect("a reply payload decodes as Reply")
            }

            /// Sends a request with a fresh `request_id`; returns its reply.
            pub async fn request(&mut self, body: request::Body) -> Reply {
                self.next_request += 1;
                let request_id = format!("raw-{}", self.next_request);
                let payload = Request { request_id: request_id.clone(), body: Some(body) }.encode_to_vec();
                let reply = self.request_payload(payload).await;
                assert_eq!(reply.request_id, request_id, "reply to another request: {reply:?}");
                reply
            }

            /// Waits until the connection is closed by the broker; returns
            /// why (None if it is still open after `timeout`). Buffered and
            /// later publishes are kept.
            pub async fn wait_closed(&mut self, timeout: Duration) -> Option<String> {
                let deadline = Instant::now() + timeout;
                while self.closed.is_none() && Instant::now() < deadline {
                    self.next_other_event_or_publish(deadline).await;
                }
                self.closed.clone()
            }

            /// Whether the connection has been seen closed.
            pub fn is_closed(&self) -> bool {
                self.closed.is_some()
            }

            /// Sends DISCONNECT and waits for the event loop to end.
            pub async fn disconnect(mut self) {
                if self.closed.is_none() {
                    let _ = self.client.disconnect().await;
                    let _ = tokio::time::timeout(WAIT, &mut self.task).await;
                }
                self.task.abort();
            }

            /// Drops the connection without a DISCONNECT (like a lost network).
            pub fn drop_connection(self) {
                self.task.abort();
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.task.abort();
            }
        }
    };
}

raw_client! {
    /// A raw MQTT 3.1.1 client (rumqttc v4).
    RawV4,
    client = rumqttc::AsyncClient,
    options = rumqttc::MqttOptions,
    eventloop = rumqttc::EventLoop,
    event = rumqttc::Event,
    error = rumqttc::ConnectionError,
    publish = rumqttc::Publish,
    reason = rumqttc::SubscribeReasonCode,
    qos1 = rumqttc::QoS::AtLeastOnce,
    new = rumqttc::AsyncClient::new,
    tune = |eventloop| eventloop.set_network_options(nodelay()),
    connack = rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) => ack.session_present,
    suback = rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) => ack.return_codes,
    incoming_publish = rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => p,
    disconnected = rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect),
    topic_of = |p: &rumqttc::Publish| p.topic.clone(),
    subscribe = |client, filters| client.subscribe_many(
        filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.to_string(), rumqttc::QoS::AtLeastOnce)).collect::<Vec<_>>()
    ),
}

raw_client! {
    /// A raw MQTT 5 client (rumqttc v5).
    RawV5,
    client = rumqttc::v5::AsyncClient,
    options = rumqttc::v5::MqttOptions,
    eventloop = rumqttc::v5::EventLoop,
    event = rumqttc::v5::Event,
    error = rumqttc::v5::ConnectionError,
    publish = rumqttc::v5::mqttbytes::v5::Publish,
    reason = rumqttc::v5::mqttbytes::v5::SubscribeReasonCode,
    qos1 = rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    new = rumqttc::v5::AsyncClient::new,
    tune = |eventloop| eventloop.options.set_network_options(nodelay()),
    connack = rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::ConnAck(ack)) => ack.session_present,
    suback = rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::SubAck(ack)) => ack.return_codes,
    incoming_publish = rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Publish(p)) => p,
    disconnected = rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect),
    topic_of = |p: &rumqttc::v5::mqttbytes::v5::Publish| String::from_utf8_lossy(&p.topic).into_owned(),
    subscribe = |client, filters| client.subscribe_many(
        filters.iter().map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(f.to_string(), rumqttc::v5::mqttbytes::QoS::AtLeastOnce)).collect::<Vec<_>>()
    ),
}

impl RawV5 {
    /// Sends the PUBACK for `publish` (with `set_manual_acks(true)`).
    pub async fn ack(&self, publish: &rumqttc::v5::mqttbytes::v5::Publish) {
        self.client.ack(publish).await.expect("queue a PUBACK");
    }
}

impl RawV4 {
    /// Sends the PUBACK for `publish` (with `set_manual_acks(true)`).
    pub async fn ack(&self, publish: &rumqttc::Publish) {
        self.client.ack(publish).await.expect("queue a PUBACK");
    }
}
