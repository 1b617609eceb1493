//! Cluster mode end to end (issue 12, docs/SCALE-OUT.md): three
//! `nats-server` processes as a JetStream cluster and three `parley serve`
//! nodes, all on loopback with ephemeral ports, started and stopped here.
//!
//! Users whose devices sit on different nodes chat 1:1 and in a group of
//! 100, see each other typing and online; logins on any node hand out a live
//! node's endpoints. Then, under a steady stream of sends, the leader node
//! is killed with SIGKILL and later one nats-server: the sender reconnects
//! through discovery and resends every unacked message with its
//! `client_msg_id`. Afterwards every acked message is in the history
//! exactly once with its acked seq, seqs and inbox_seqs have no gaps, and
//! the killed node, restarted on its data dir, catches up and serves the
//! same history.

mod node;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use parley_client::{direct_channel, group_channel, Client, ClientOptions};
use parley_proto::v1::envelope::Body;
use parley_tests::nats::NatsCluster;
use serde_json::json;

use node::Node;

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "cluster-password";
/// Messages alice sends while nodes and servers are killed.
const LOAD: usize = 240;

struct Cluster {
    nats: NatsCluster,
    nodes: Vec<Option<Node>>,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let nats = NatsCluster::start(3).await;
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut nodes = Vec::new();
        for i in 0..3 {
            nodes.push(Some(start_node(&nats, dir.path(), i).await));
        }
        Cluster { nats, nodes, dir }
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("a running node")
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, node)| node.as_ref().map(|node| (i, node)))
    }

    /// Polls until one live node leads; returns its index.
    async fn leader(&self) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for (i, node) in self.live() {
                if node.gauge("parley_cluster_leader").await == 1.0 {
                    return i;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no node leads after {WAIT:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        self.live()
            .map(|(_, node)| format!("--- {}\n{}", node.id, node.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn restart(&mut self, i: usize) {
        let node = start_node(&self.nats, self.dir.path(), i).await;
        self.nodes[i] = Some(node);
    }
}

async fn start_node(nats: &NatsCluster, dir: &std::path::Path, i: usize) -> Node {
    let id = format!("node-{i}");
    let data = dir.join(&id);
    std::fs::create_dir_all(&data).expect("a data dir");
    Node::start(&id, &nats.url_list(), &data, &dir.join(format!("{id}.log"))).await
}

async fn register(cluster: &Cluster, node: usize, user: &str) {
    let body = json!({ "user_id": user, "password": PASSWORD });
    let http = cluster.node(node).http;
    let answer = parley_tests::http::call(http, "POST", "/v1/register", None, Some(&body)).await;
    assert_eq!(
        answer.status,
        201,
        "register {user}: {}\nlogs:\n{}",
        answer.text,
        cluster.logs()
    );
}

/// `POST /v1/login` on `http`: the token and the discovered TCP endpoint.
async fn login(http: SocketAddr, user: &str, device: &str) -> (String, String) {
    let body = json!({ "user_id": user, "password": PASSWORD, "device_id": device });
    let answer = parley_tests::http::call(http, "POST", "/v1/login", None, Some(&body)).await;
    assert_eq!(answer.status, 200, "login {user}: {}", answer.text);
    let token = answer.json["token"].as_str().expect("a token").to_owned();
    let tcp = answer.json["mqtt"]["tcp"].as_str().expect("a tcp endpoint");
    (token, tcp.to_owned())
}

async fn connect_at(addr: SocketAddr, user: &str, device: &str, token: &str) -> Client {
    let options = ClientOptions::new(addr, user, device, token)
        .connect_timeout(WAIT)
        .request_timeout(WAIT);
    Client::connect(options)
        .await
        .unwrap_or_else(|e| panic!("{user} connects to {addr}: {e}"))
}

/// Logs in through any live node and connects where discovery says,
/// retrying while discovery still names a node that just died.
async fn connect_anywhere(cluster: &Cluster, user: &str, device: &str) -> Client {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for (_, node) in cluster.live() {
            let (token, endpoint) = login(node.http, user, device).await;
            let options = ClientOptions::parse(&endpoint, user, device, token)
                .expect("a valid endpoint")
                .connect_timeout(Duration::from_secs(3))
                .request_timeout(WAIT);
            if let Ok(client) = Client::connect(options).await {
                return client;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} found no live node through discovery"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `done` until it holds, failing after [`WAIT`] with `what`.
async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {WAIT:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next inbox envelope's body, skipping none.
async fn next_body(client: &Client) -> Body {
    let envelope = client
        .next_envelope(WAIT)
        .await
        .expect("a live envelope")
        .expect("an envelope in time");
    envelope.body.expect("an envelope body")
}

/// Waits for the live message `text` (skipping other envelopes).
async fn wait_message(client: &Client, text: &str) {
    loop {
        if let Body::Message(message) = next_body(client).await {
            if message.text == text {
                return;
            }
        }
    }
}

/// Every message of `channel`, oldest first, read by `client` (history).
async fn whole_history(client: &Client, channel: &str) -> Vec<parley_proto::v1::ChatMessage> {
    let mut messages = Vec::new();
    let mut before = 0;
    loop {
        let page = client
            .history(channel, before, 100)
            .await
            .expect("a history page");
        let Some(oldest) = page.messages.last() else {
            break;
        };
        before = oldest.seq;
        let more = page.more;
        messages.extend(page.messages);
        if !more {
            break;
        }
    }
    messages.reverse();
    messages
}

/// Every inbox_seq of `client`'s inbox, in order (sync pages).
async fn whole_inbox(client: &Client) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let after = seqs.last().copied().unwrap_or(0);
        let page = client.sync(after, 1000).await.expect("a sync page");
        seqs.extend(page.events.iter().map(|e| e.inbox_seq));
        if !page.more {
            return seqs;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_chat_across_nodes_and_survive_a_killed_node_and_server() {
    parley_tests::init_tracing();
    let mut cluster = Cluster::start().await;
    let leader = cluster.leader().await;

    // accounts, registered through different nodes
    let members: Vec<String> = (1..=98).map(|i| format!("m{i:02}")).collect();
    for (i, user) in ["alice", "bob"]
        .iter()
        .map(|u| u.to_string())
        .chain(members.clone())
        .enumerate()
    {
        register(&cluster, i % 3, &user).await;
    }

    // alice on the leader, bob and m01 on the two others
    let (a, b, c) = (leader, (leader + 1) % 3, (leader + 2) % 3);
    let (token, _) = login(cluster.node(b).http, "alice", "phone").await;
    let alice = connect_at(cluster.node(a).mqtt, "alice", "phone", &token).await;
    let (token, _) = login(cluster.node(c).http, "bob", "phone").await;
    let bob = connect_at(cluster.node(b).mqtt, "bob", "phone", &token).await;
    let (token, _) = login(cluster.node(a).http, "m01", "phone").await;
    let m01 = connect_at(cluster.node(c).mqtt, "m01", "phone", &token).await;

    // discovery answers a live node's endpoint, from any node
    let endpoints: HashSet<String> = [
        cluster.node(0).mqtt,
        cluster.node(1).mqtt,
        cluster.node(2).mqtt,
    ]
    .iter()
    .map(|addr| format!("mqtt://127.0.0.1:{}", addr.port()))
    .collect();
    for (_, node) in cluster.live() {
        let (_, endpoint) = login(node.http, "m02", "tablet").await;
        assert!(
            endpoints.contains(&endpoint),
            "{endpoint} is not a node's: {endpoints:?}"
        );
    }

    // friends across nodes, and each other's presence
    alice
        .change_friends(["bob"], Vec::<String>::new())
        .await
        .expect("ask bob");
    bob.change_friends(["alice"], Vec::<String>::new())
        .await
        .expect("accept alice");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = bob
            .query_presence(["alice"])
            .await
            .expect("alice's presence");
        let back = alice.query_presence(["bob"]).await.expect("bob's presence");
        if seen[0].online && back[0].online {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence across nodes: {seen:?} {back:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1:1 across nodes, live
    let dm = direct_channel("alice", "bob");
    let ack = alice
        .send_with_id(&dm, "hello-1", "hello bob")
        .await
        .expect("send");
    assert_eq!(ack.seq, 1);
    wait_message(&bob, "hello bob").await;
    bob.send(&dm, "hello alice").await.expect("bob answers");

    // typing, live only, across nodes
    alice.typing(&dm).await.expect("alice types");
    loop {
        if let Body::Typing(typing) = next_body(&bob).await {
            assert_eq!(
                (typing.user.as_str(), typing.channel.as_str()),
                ("alice", dm.as_str())
            );
            break;
        }
    }

    // a group of 100 across nodes
    let mut others = vec!["bob".to_owned()];
    others.extend(members.iter().cloned());
    alice
        .create_group("team", "Team", others)
        .await
        .expect("a group of 100");
    let team = group_channel("team");
    alice
        .send(&team, "hello team")
        .await
        .expect("send to the group");
    wait_message(&m01, "hello team").await;
    wait_message(&bob, "hello team").await;

    // steady sends from alice while her node (the leader) dies
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut sender = alice;
    let mut killed_node = None;
    let mut killed_server = false;
    let mut i = 0;
    while i < LOAD {
        if i == LOAD / 3 && killed_node.is_none() {
            cluster.nodes[a].take().expect("the leader").kill().await;
            killed_node = Some(a);
        }
        if i == 2 * LOAD / 3 && !killed_server {
            cluster.nats.kill(0).await;
            killed_server = true;
        }
        let id = format!("load-{i}");
        match sender.send_with_id(&dm, &id, &format!("message {i}")).await {
            Ok(ack) => {
                if let Some(first) = acked.insert(id.clone(), ack.seq) {
                    assert_eq!(first, ack.seq, "{id} acked with two seqs");
                }
                i += 1;
            }
            Err(error) if sender.is_connected() => {
                // no leader for a moment: the same id again
                tracing::info!(%error, %id, "send failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => {
                tracing::info!(%error, %id, "alice's node is gone; reconnecting");
                sender = connect_anywhere(&cluster, "alice", "phone").await;
            }
        }
    }
    cluster.nats.restart(0).await;

    // every acked message exactly once, with its acked seq, no gaps
    let history = whole_history(&bob, &dm).await;
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "dm seqs have a gap"
    );
    let mut seen = HashSet::new();
    for message in &history {
        if !message.client_msg_id.is_empty() && message.sender == "alice" {
            assert!(
                seen.insert(message.client_msg_id.clone()),
                "{} twice",
                message.client_msg_id
            );
        }
    }
    for (id, seq) in &acked {
        let stored = history.iter().find(|m| &m.client_msg_id == id);
        assert_eq!(stored.map(|m| m.seq), Some(*seq), "{id} acked at {seq}");
    }
    assert_eq!(acked.len(), LOAD);
    let inbox = whole_inbox(&bob).await;
    assert_eq!(
        inbox,
        (1..=inbox.len() as u64).collect::<Vec<_>>(),
        "bob's inbox has a gap"
    );

    // the killed node comes back, catches up, serves the same history
    let killed = killed_node.expect("a node was killed");
    cluster.restart(killed).await;
    let new_leader = cluster.leader().await;
    let target = cluster
        .node(new_leader)
        .gauge("parley_cluster_applied_seq")
        .await;
    wait_until("the restarted node to catch up", || async {
        cluster
            .node(killed)
            .gauge("parley_cluster_applied_seq")
            .await
            >= target
    })
    .await;
    let (token, _) = login(cluster.node(killed).http, "bob", "laptop").await;
    let reader = connect_at(cluster.node(killed).mqtt, "bob", "laptop", &token).await;
    let again = whole_history(&reader, &dm).await;
    assert_eq!(again, history, "the restarted node's history differs");
    drop(m01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sign_out_reaches_every_node_and_a_stopping_leader_hands_over() {
    parley_tests::init_tracing();
    let mut cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    register(&cluster, follower, "alice").await;
    register(&cluster, leader, "bob").await;

    // signed out on the leader's HTTP API, connected to a follower
    let (token, _) = login(cluster.node(leader).http, "alice", "phone").await;
    let alice = connect_at(cluster.node(follower).mqtt, "alice", "phone", &token).await;
    let answer = parley_tests::http::call(
        cluster.node(leader).http,
        "POST",
        "/v1/logout",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    wait_until("the other node to end alice's connection", || async {
        !alice.is_connected()
    })
    .await;

    // the same device connecting on another node takes over
    let (token, _) = login(cluster.node(follower).http, "bob", "phone").await;
    let first = connect_at(cluster.node(follower).mqtt, "bob", "phone", &token).await;
    let second = connect_at(cluster.node(leader).mqtt, "bob", "phone", &token).await;
    wait_until("the older connection of one device to end", || async {
        !first.is_connected()
    })
    .await;
    drop(second);

    // SIGTERM: the leader releases its lease; another node leads and
    // takes writes, with the data of the old term
    let stopping = cluster.nodes[leader].take().expect("the leader");
    let log = stopping.log.clone();
    let status = stopping.terminate().await;
    assert!(status.success(), "graceful stop: {status}");
    let stopped = std::fs::read_to_string(&log).expect("the node's log");
    assert!(
        stopped.contains("shutting down"),
        "the leader did not step down:\n{stopped}"
    );
    assert!(
        !stopped.contains("could not release the lease"),
        "{stopped}"
    );
    let next = cluster.leader().await;
    assert_ne!(next, leader);
    let (token, _) = login(cluster.node(next).http, "bob", "tablet").await;
    let bob = connect_at(cluster.node(next).mqtt, "bob", "tablet", &token).await;
    let ack = bob
        .send(&direct_channel("alice", "bob"), "after the handover")
        .await
        .expect("send");
    assert_eq!(ack.seq, 1);
}
