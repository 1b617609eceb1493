use super::*;

fn envelope(seq: u64) -> LiveEnvelope {
    LiveEnvelope {
        inbox_seq: seq,
        payload: Bytes::from_static(b"x"),
    }
}

#[tokio::test]
async fn delivers_to_every_device_of_the_user_only() {
    let router = Router::new();
    let phone = register(&router, "alice", "phone");
    let laptop = register(&router, "alice", "laptop");
    let bob = register(&router, "bob", "phone");
    assert_eq!(router.deliver("alice", envelope(1)), 2);
    assert_eq!(router.deliver("alice", envelope(2)), 2);
    for link in [&phone, &laptop] {
        let batch = link.live.next().await;
        let seqs: Vec<u64> = batch.envelopes.iter().map(|e| e.inbox_seq).collect();
        assert_eq!(seqs, [1, 2]);
        assert!(!batch.missed);
    }
    assert!(bob.live.take().envelopes.is_empty());
    assert_eq!(router.inbox_head("alice"), 2);
    assert_eq!(router.inbox_head("bob"), 0);
}

fn register(router: &Arc<Router>, user: &str, device: &str) -> DeviceLink {
    router
        .register(user, device, 100)
        .expect("room for the device")
}

#[test]
fn a_second_connection_takes_over_the_first() {
    let router = Router::new();
    let first = register(&router, "alice", "phone");
    let second = register(&router, "alice", "phone");
    assert!(first.live.eviction().is_some());
    assert_eq!(first.live.eviction(), Some(Eviction::TakenOver));
    assert!(second.live.eviction().is_none());
    let predecessor = second.predecessor.clone().expect("first was registered");
    assert!(!predecessor.is_done());
    drop(first);
    assert!(predecessor.is_done(), "dropping a link tells its successor");
    assert_eq!(
        router.device_count("alice"),
        1,
        "the stale link leaving must not remove the successor"
    );
    drop(second);
    assert_eq!(router.device_count("alice"), 0);
}

#[test]
fn devices_per_user_are_limited_but_a_reconnect_is_not_counted_twice() {
    let router = Router::new();
    let phone = router.register("alice", "phone", 2).unwrap();
    let _laptop = router.register("alice", "laptop", 2).unwrap();
    assert_eq!(
        router.register("alice", "tablet", 2).err(),
        Some(TooManyDevices { max: 2 })
    );
    let _again = router
        .register("alice", "phone", 2)
        .expect("the same device replaces itself");
    assert!(phone.live.eviction().is_some());
    assert!(
        router.register("bob", "tablet", 2).is_ok(),
        "other users are not affected"
    );
    assert!(router.register("carol", "x", 0).is_err());
    assert_eq!(
        router.device_count("carol"),
        0,
        "a refusal leaves nothing behind"
    );
}

#[test]
fn eviction_reaches_the_chosen_devices_with_its_reason() {
    let router = Router::new();
    let phone = register(&router, "alice", "phone");
    let laptop = register(&router, "alice", "laptop");
    let bob = register(&router, "bob", "phone");
    let finished = router.evict(
        "alice",
        Devices::AllBut("phone"),
        Eviction::CredentialsRevoked,
    );
    assert_eq!(finished.len(), 1);
    assert!(phone.live.eviction().is_none() && laptop.live.eviction().is_some());
    assert_eq!(laptop.live.eviction(), Some(Eviction::CredentialsRevoked));
    drop(laptop);
    assert!(finished[0].is_done(), "finished once the link is dropped");
    router.evict("alice", Devices::Only("phone"), Eviction::LoggedOut);
    assert_eq!(phone.live.eviction(), Some(Eviction::LoggedOut));
    assert!(bob.live.eviction().is_none());
    assert!(router
        .evict("nobody", Devices::Only("x"), Eviction::LoggedOut)
        .is_empty());
}

#[test]
fn live_only_events_dropped_by_a_full_queue_are_not_missed() {
    let router = Router::new();
    let link = register(&router, "alice", "phone");
    for seq in 1..=DEVICE_QUEUE as u64 {
        router.deliver("alice", envelope(seq));
    }
    assert_eq!(router.deliver("alice", envelope(0)), 0, "typing dropped");
    assert!(!link.live.take().missed, "nothing to read back");
}

#[test]
fn presence_keeps_the_newest_update_per_subject() {
    let router = Router::new();
    let link = register(&router, "alice", "phone");
    let update = |subject: &str, payload: &'static [u8]| PresenceUpdate {
        subject: subject.to_owned(),
        payload: Bytes::from_static(payload),
    };
    router.deliver_presence("alice", update("bob", b"online"));
    router.deliver_presence("alice", update("carol", b"online"));
    router.deliver_presence("alice", update("bob", b"offline"));
    router.deliver_presence("nobody", update("bob", b"x"));
    let mut batch = link.live.take();
    batch.presence.sort_by(|a, b| a.subject.cmp(&b.subject));
    assert_eq!(
        batch.presence,
        [update("bob", b"offline"), update("carol", b"online")]
    );
    assert!(link.live.take().presence.is_empty());
}

#[test]
fn a_full_queue_drops_instead_of_blocking() {
    let router = Router::new();
    let link = register(&router, "alice", "phone");
    for seq in 1..=DEVICE_QUEUE as u64 {
        assert_eq!(router.deliver("alice", envelope(seq)), 1);
    }
    assert_eq!(
        router.deliver("alice", envelope(DEVICE_QUEUE as u64 + 1)),
        0
    );
    assert_eq!(router.inbox_head("alice"), DEVICE_QUEUE as u64 + 1);
    let batch = link.live.take();
    assert_eq!(batch.envelopes.len(), DEVICE_QUEUE);
    assert!(batch.missed, "the device is told");
    assert_eq!(
        router.deliver("alice", envelope(DEVICE_QUEUE as u64 + 2)),
        1
    );
    let batch = link.live.take();
    assert_eq!(batch.envelopes.len(), 1);
    assert!(!batch.missed, "told once");
}

#[test]
fn dropping_the_link_unregisters_the_device() {
    let router = Router::new();
    let link = register(&router, "alice", "phone");
    assert_eq!(router.device_count("alice"), 1);
    assert_eq!(router.deliver("alice", envelope(1)), 1);
    drop(link);
    assert_eq!(router.device_count("alice"), 0);
    assert_eq!(
        router.deliver("alice", envelope(2)),
        0,
        "nobody left to offer to"
    );
    assert!(
        router.users.read().unwrap().is_empty(),
        "the user's entry goes with its last device"
    );
}

#[test]
fn a_stale_link_does_not_unregister_its_successor() {
    let router = Router::new();
    let old = register(&router, "alice", "phone");
    let new = register(&router, "alice", "phone");
    assert!(
        old.live.eviction().is_some(),
        "the older connection is told to go"
    );
    drop(old);
    assert_eq!(router.device_count("alice"), 1);
    assert_eq!(
        router.deliver("alice", envelope(1)),
        1,
        "the newer connection still gets its envelopes"
    );
    assert_eq!(new.live.take().envelopes.len(), 1);
    drop(new);
    assert_eq!(router.device_count("alice"), 0);
}

#[tokio::test]
async fn waits_end_when_the_connection_is_evicted_and_when_it_has_finished() {
    let router = Router::new();
    let first = register(&router, "alice", "phone");
    let live = first.live.clone();
    let evicted = tokio::spawn(async move { live.evicted().await });
    tokio::task::yield_now().await;
    let second = register(&router, "alice", "phone");
    assert_eq!(evicted.await.unwrap(), Eviction::TakenOver);
    assert_eq!(
        first.live.evicted().await,
        Eviction::TakenOver,
        "an eviction that happened already is seen at once"
    );
    let predecessor = second.predecessor.clone().expect("first was registered");
    let waiting = tokio::spawn(async move { predecessor.wait().await });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    drop(first);
    waiting
        .await
        .expect("the successor learns that its predecessor finished");
    second.predecessor.as_ref().unwrap().wait().await;
}
