//! End-to-end tests: the real broker (TCP, TLS, WebSocket and secure
//! WebSocket listeners, RocksDB in a temp dir) driven by real MQTT clients:
//! the Parley SDK, raw rumqttc 3.1.1 and 5 clients, raw TCP sockets, and the
//! mosquitto command-line clients as an independent implementation.
//!
//! One test binary (to link once); one module per area of the contract.
//! Every test polls for what it waits for (see `parley_tests::eventually`
//! and `collect_envelopes`); the only timed waits are the short quiet
//! periods that prove that something did *not* happen, and those come after
//! a barrier (a later message that did arrive) wherever one exists.

mod acl;
mod attacks;
mod cluster;
mod crash;
mod direct;
mod errors;
mod friends;
mod groups;
mod http_api;
mod independent_client;
mod limits;
mod memory;
mod nats_harness;
mod presence;
mod push;
mod quotas;
mod reads;
mod receipts;
mod restart;
mod sessions;
mod system_messages;
mod tls;
mod tokens;
mod transport;
mod typing;
