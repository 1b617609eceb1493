//! Packets from the device: the read buffer, one handler per packet kind,
//! request publishes (the rate limit, the chat service, the token revoked
//! at Logout) and the requests in flight, answered and acknowledged in
//! request order.

use std::future::Future;
use std::pin::Pin;

use futures_util::stream::{FuturesOrdered, StreamExt};

use parley_chat_logic::acl::{self, PublishTopic};
use parley_proto::v1::Reply;
use rumqttd::protocol::{
    Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, Publish,
    QoS,
};
use tokio::time::Instant;

use super::lifecycle::Close;
use super::Connection;
use crate::chat::{encode_reply, Requester, Then};
use crate::metrics as m;
use crate::mqtt::codec::{self, FrameError};
use crate::presence::Departure;

/// How to acknowledge a request publish once its reply is out.
#[derive(Debug, Clone, Copy)]
enum RequestAck {
    None,
    PubAck(u16),
    PubRec(u16),
}

impl RequestAck {
    fn for_publish(qos: QoS, pkid: u16) -> RequestAck {
        match qos {
            QoS::AtMostOnce => RequestAck::None,
            QoS::AtLeastOnce => RequestAck::PubAck(pkid),
            QoS::ExactlyOnce => RequestAck::PubRec(pkid),
        }
    }
}

pub(super) struct Done {
    reply: Reply,
    ack: RequestAck,
    then: Then,
}

pub(super) type RequestFuture = Pin<Box<dyn Future<Output = Done> + Send>>;

/// The requests in progress, answered in request order. The queue exists
/// only while a request is in progress: an empty `FuturesOrdered` still
/// holds two allocations (~200 bytes), which every idle connection would
/// keep.
#[derive(Default)]
pub(super) struct InFlight {
    queue: Option<FuturesOrdered<RequestFuture>>,
}

impl InFlight {
    pub(super) fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, FuturesOrdered::len)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push_back(&mut self, request: RequestFuture) {
        self.queue
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(request);
    }

    /// The oldest request once it is answered; never resolves while none
    /// is in progress.
    pub(super) async fn next(&mut self) -> Done {
        let Some(queue) = self.queue.as_mut() else {
            return std::future::pending().await;
        };
        let Some(done) = queue.next().await else {
            return std::future::pending().await;
        };
        if queue.is_empty() {
            self.queue = None;
        }
        done
    }
}

impl Connection {
    /// Whether another request may be read (the receive maximum).
    pub(super) fn may_read(&self) -> bool {
        self.requests.len() < usize::from(self.shared.config.receive_maximum)
    }

    /// A packet arrived: keep-alive and presence both count it.
    pub(super) fn touch(&mut self) {
        self.last_seen = Instant::now();
        self.presence.seen();
    }

    /// Handles every whole packet in the read buffer (until the request limit).
    pub(super) async fn handle_buffered(&mut self) -> Option<Close> {
        while self.may_read() && !self.logged_out {
            match self.codec.read(&mut self.rbuf) {
                Ok(packet) => {
                    self.touch();
                    if let Some(close) = self.handle_packet(packet).await {
                        return Some(close);
                    }
                }
                Err(FrameError::Incomplete) => return None,
                Err(FrameError::Malformed(error)) => {
                    return Some(Close::Malformed(error.to_string()))
                }
            }
        }
        None
    }

    async fn handle_packet(&mut self, packet: Packet) -> Option<Close> {
        match packet {
            Packet::Publish(publish, _) => self.on_publish(publish).await,
            Packet::PubAck(ack, _) => {
                if self.outbox.on_puback(ack.pkid) {
                    self.schedule_cursor_flush();
                }
            }
            Packet::PubRel(rel, _) => self.write(Packet::PubComp(
                PubComp {
                    pkid: rel.pkid,
                    reason: PubCompReason::Success,
                },
                None,
            )),
            Packet::PubRec(_, _) | Packet::PubComp(_, _) => {} // Parley never publishes at QoS 2
            Packet::Subscribe(subscribe, _) => self.on_subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe, _) => self.on_unsubscribe(unsubscribe).await,
            Packet::PingReq(_) => self.write(Packet::PingResp(PingResp)),
            Packet::Disconnect(_, _) => return Some(Close::Disconnect),
            Packet::Connect(..) => return Some(Close::Protocol("second CONNECT".into())),
            other => {
                return Some(Close::Protocol(format!(
                    "unexpected packet from a client: {other:?}"
                )))
            }
        }
        None
    }

    async fn on_publish(&mut self, publish: Publish) {
        let (qos, pkid) = codec::publish_qos_pkid(&publish);
        let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
        match acl::classify_publish(&self.user, &self.device, topic) {
            PublishTopic::Request => {
                m::message_in();
                let ack = RequestAck::for_publish(qos, pkid);
                self.on_request(&publish.payload, ack).await;
            }
            PublishTopic::Heartbeat => self.ack_publish(qos, pkid, true),
            PublishTopic::Forbidden => {
                tracing::warn!(topic, "publish to a forbidden topic dropped");
                m::publish_dropped("forbidden_topic");
                self.ack_publish(qos, pkid, false);
            }
        }
    }

    /// A request: refused over the device's rate, otherwise handed to the
    /// chat service; either way its reply joins the requests in flight.
    async fn on_request(&mut self, payload: &[u8], ack: RequestAck) {
        if let Err(error) = self.limits.take_request() {
            tracing::warn!("request refused: over the device's request rate");
            m::refused("request_rate");
            let reply = self.shared.chat.refuse(payload, error);
            let done = Done {
                reply,
                ack,
                then: Then::Continue,
            };
            self.requests.push_back(Box::pin(std::future::ready(done)));
            return;
        }
        let requester = Requester {
            user: &self.user,
            device: &self.device,
            typing: &mut self.typing,
        };
        let handled = self.shared.chat.handle(requester, payload).await;
        let (reply, then) = (handled.reply, handled.then);
        // A Logout revokes the token before it is answered, so no
        // new connection can use it once the device sees the reply.
        let revoke = match then {
            Then::Logout => self.token.take().map(|token| *token),
            Then::Continue => None,
        };
        let shared = self.shared.clone();
        self.requests.push_back(Box::pin(async move {
            if let Some(token) = revoke {
                if let Err(error) = shared.auth.revoke(token).await {
                    tracing::error!(%error, "cannot revoke the token at logout");
                }
            }
            Done {
                reply: reply.await,
                ack,
                then,
            }
        }));
    }

    /// Acknowledges a publish that produced no reply.
    fn ack_publish(&mut self, qos: QoS, pkid: u16, allowed: bool) {
        let packet = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(
                PubAck {
                    pkid,
                    reason: if allowed {
                        PubAckReason::Success
                    } else {
                        PubAckReason::NotAuthorized
                    },
                },
                None,
            ),
            QoS::ExactlyOnce => Packet::PubRec(
                PubRec {
                    pkid,
                    reason: if allowed {
                        PubRecReason::Success
                    } else {
                        PubRecReason::NotAuthorized
                    },
                },
                None,
            ),
        };
        self.write(packet);
    }

    pub(super) fn finish_request(&mut self, done: Done) {
        self.outbox.push_reply(encode_reply(&done.reply));
        self.pump();
        match done.ack {
            RequestAck::None => {}
            RequestAck::PubAck(pkid) => self.ack_publish(QoS::AtLeastOnce, pkid, true),
            RequestAck::PubRec(pkid) => self.ack_publish(QoS::ExactlyOnce, pkid, true),
        }
        if done.then == Then::Logout {
            // Answered: offline at once; the loop closes once the reply is
            // written.
            self.logged_out = true;
            self.presence.leave(Departure::Graceful);
        }
    }
}
