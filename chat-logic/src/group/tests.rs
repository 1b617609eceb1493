use std::cell::Cell;

use parley_proto::v1::ErrorCode;

use super::*;

/// Registered: every user whose id does not start with "ghost".
fn directory(id: &str) -> Result<bool, ChatError> {
    Ok(!id.starts_with("ghost"))
}

fn broken_directory(_: &str) -> Result<bool, ChatError> {
    Err(ChatError::internal("disk on fire"))
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn group(owner: &str, members: &[&str]) -> Group {
    Group {
        id: "g1".into(),
        name: "Team".into(),
        owner: owner.into(),
        members: strings(members),
    }
}

fn create_cmd(members: &[&str]) -> CreateGroup {
    CreateGroup {
        group_id: "g1".into(),
        name: "Team".into(),
        members: strings(members),
    }
}

fn change_cmd(add: &[&str], remove: &[&str]) -> ChangeMembers {
    ChangeMembers {
        group_id: "g1".into(),
        add: strings(add),
        remove: strings(remove),
    }
}

fn leave_cmd() -> LeaveGroup {
    LeaveGroup {
        group_id: "g1".into(),
    }
}

fn small(max_group_members: usize) -> Limits {
    Limits {
        max_group_members,
        ..Limits::default()
    }
}

fn limits() -> Limits {
    Limits::default()
}

#[test]
fn create_makes_the_creator_owner_and_member() {
    let change = create(
        "carol",
        &create_cmd(&["bob", "alice"]),
        None,
        &directory,
        &limits(),
    )
    .unwrap();
    let after = change.after.unwrap();
    assert_eq!(after.owner, "carol");
    assert_eq!(after.members, strings(&["alice", "bob", "carol"]));
    assert_eq!(change.notify, strings(&["alice", "bob", "carol"]));
    assert_eq!(change.event.members, after.members);
    assert_eq!(change.event.actor, "carol");
    assert_eq!(change.event.group_id, "g1");
    assert_eq!(change.event.name, "Team");
}

#[test]
fn create_alone_and_with_creator_listed() {
    let alone = create("carol", &create_cmd(&[]), None, &directory, &limits()).unwrap();
    assert_eq!(alone.after.unwrap().members, strings(&["carol"]));
    let listed = create(
        "carol",
        &create_cmd(&["carol"]),
        None,
        &directory,
        &limits(),
    )
    .unwrap();
    assert_eq!(listed.notify, strings(&["carol"]));
}

#[test]
fn create_refuses_an_existing_group() {
    let existing = group("bob", &["bob"]);
    let error = create(
        "carol",
        &create_cmd(&[]),
        Some(&existing),
        &directory,
        &limits(),
    )
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::BadRequest);
    assert!(error.message.contains("group g1 exists"), "{error}");
    assert_eq!(ensure_new("g1", None), Ok(()));
}

#[test]
fn create_counts_the_creator_against_the_limit() {
    // 2 listed + creator = 3 > 2
    let error = create(
        "carol",
        &create_cmd(&["alice", "bob"]),
        None,
        &directory,
        &small(2),
    )
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::LimitExceeded);
    assert!(error.message.contains("at most 2"), "{error}");
    // creator listed too: still 3 members
    let ok = create(
        "carol",
        &create_cmd(&["alice", "bob", "carol"]),
        None,
        &directory,
        &small(3),
    );
    assert!(ok.is_ok());
}

#[test]
fn create_at_default_limit_edges() {
    let hundred: Vec<String> = (0..99).map(|i| format!("u{i:03}")).collect();
    let mut cmd = create_cmd(&[]);
    cmd.members = hundred;
    let ok = create("creator", &cmd, None, &directory, &limits()).unwrap();
    assert_eq!(ok.after.unwrap().members.len(), 100);
    cmd.members.push("u999".into());
    let error = create("creator", &cmd, None, &directory, &limits()).unwrap_err();
    assert_eq!(error.code, ErrorCode::LimitExceeded);
}

#[test]
fn create_refuses_unknown_users() {
    let error = create(
        "carol",
        &create_cmd(&["ghost1", "bob", "ghost2"]),
        None,
        &directory,
        &limits(),
    )
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound);
    assert!(error.message.contains("ghost1, ghost2"), "{error}");
    assert!(!error.message.contains("bob"), "{error}");
}

#[test]
fn unknown_user_list_is_cut() {
    let ghosts: Vec<String> = (0..15).map(|i| format!("ghost{i:02}")).collect();
    let mut cmd = create_cmd(&[]);
    cmd.members = ghosts;
    let error = create("carol", &cmd, None, &directory, &limits()).unwrap_err();
    assert!(error.message.contains("and 5 more"), "{error}");
}

#[test]
fn directory_failure_is_passed_on() {
    let error = create(
        "carol",
        &create_cmd(&["bob"]),
        None,
        &broken_directory,
        &limits(),
    )
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::Internal);
}

#[test]
fn creator_is_not_looked_up() {
    let asked = Cell::new(0);
    let counting = |id: &str| {
        assert_ne!(id, "carol");
        asked.set(asked.get() + 1);
        Ok(true)
    };
    create(
        "carol",
        &create_cmd(&["bob", "carol"]),
        None,
        &counting,
        &limits(),
    )
    .unwrap();
    assert_eq!(asked.get(), 1);
}

#[test]
fn any_member_may_add() {
    let g = group("alice", &["alice", "bob"]);
    let change = change_members(
        Some(&g),
        "bob",
        &change_cmd(&["carol"], &[]),
        &directory,
        &limits(),
    )
    .unwrap();
    let after = change.after.unwrap();
    assert_eq!(after.members, strings(&["alice", "bob", "carol"]));
    assert_eq!(after.owner, "alice");
    assert_eq!(change.notify, strings(&["alice", "bob", "carol"]));
    assert_eq!(change.event.members, after.members);
    assert_eq!(change.event.actor, "bob");
}

#[test]
fn change_needs_an_existing_group_and_membership() {
    let cmd = change_cmd(&["carol"], &[]);
    let error = change_members(None, "bob", &cmd, &directory, &limits()).unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound);
    assert!(error.message.contains("no group g1"), "{error}");
    let g = group("alice", &["alice", "bob"]);
    let error = change_members(Some(&g), "dave", &cmd, &directory, &limits()).unwrap_err();
    assert_eq!(error.code, ErrorCode::NotMember);
}

#[test]
fn wrong_group_is_internal() {
    let mut g = group("alice", &["alice"]);
    g.id = "other".into();
    let error = leave(Some(&g), "alice", &leave_cmd()).unwrap_err();
    assert_eq!(error.code, ErrorCode::Internal);
}

#[test]
fn only_the_owner_removes_others() {
    let g = group("alice", &["alice", "bob", "carol"]);
    let cmd = change_cmd(&[], &["carol"]);
    let error = change_members(Some(&g), "bob", &cmd, &directory, &limits()).unwrap_err();
    assert_eq!(error.code, ErrorCode::Forbidden);
    let change = change_members(Some(&g), "alice", &cmd, &directory, &limits()).unwrap();
    assert_eq!(change.after.unwrap().members, strings(&["alice", "bob"]));
    // the removed member is told too
    assert_eq!(change.notify, strings(&["alice", "bob", "carol"]));
    assert_eq!(change.event.members, strings(&["alice", "bob"]));
}

#[test]
fn a_member_may_remove_itself() {
    let g = group("alice", &["alice", "bob"]);
    let change = change_members(
        Some(&g),
        "bob",
        &change_cmd(&[], &["bob"]),
        &directory,
        &limits(),
    )
    .unwrap();
    assert_eq!(change.after.unwrap().members, strings(&["alice"]));
}

#[test]
fn owner_removing_itself_hands_over() {
    let g = group("bob", &["alice", "bob", "carol"]);
    let change = change_members(
        Some(&g),
        "bob",
        &change_cmd(&[], &["bob"]),
        &directory,
        &limits(),
    )
    .unwrap();
    assert_eq!(change.after.unwrap().owner, "alice");
}

#[test]
fn add_respects_the_limit() {
    let g = group("alice", &["alice", "bob"]);
    let error = change_members(
        Some(&g),
        "alice",
        &change_cmd(&["carol"], &[]),
        &directory,
        &small(2),
    )
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::LimitExceeded);
    // swapping one member for another stays at the limit
    let swap = change_cmd(&["carol"], &["bob"]);
    assert!(change_members(Some(&g), "alice", &swap, &directory, &small(2)).is_ok());
    // re-adding existing members is not growth, even over a lowered limit
    let readd = change_cmd(&["bob"], &[]);
    assert!(change_members(Some(&g), "alice", &readd, &directory, &small(1)).is_ok());
}

#[test]
fn add_refuses_unknown_users() {
    let g = group("alice", &["alice"]);
    let error = change_members(
        Some(&g),
        "alice",
        &change_cmd(&["ghost"], &[]),
        &directory,
        &limits(),
    )
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound);
    assert!(error.message.contains("ghost"), "{error}");
}

#[test]
fn existing_members_are_not_looked_up() {
    let g = group("alice", &["alice", "bob"]);
    let never = |_: &str| -> Result<bool, ChatError> { panic!("directory consulted") };
    let change = change_members(
        Some(&g),
        "alice",
        &change_cmd(&["bob"], &["zed"]),
        &never,
        &limits(),
    )
    .unwrap();
    assert_eq!(change.after, Some(g.clone()));
}

#[test]
fn removing_everyone_deletes_the_group() {
    let g = group("alice", &["alice", "bob"]);
    let change = change_members(
        Some(&g),
        "alice",
        &change_cmd(&[], &["alice", "bob"]),
        &directory,
        &limits(),
    )
    .unwrap();
    assert_eq!(change.after, None);
    assert!(change.event.members.is_empty());
    assert_eq!(change.notify, strings(&["alice", "bob"]));
}

#[test]
fn leave_removes_the_member() {
    let g = group("alice", &["alice", "bob", "carol"]);
    let change = leave(Some(&g), "carol", &leave_cmd()).unwrap();
    let after = change.after.unwrap();
    assert_eq!(after.members, strings(&["alice", "bob"]));
    assert_eq!(after.owner, "alice");
    assert_eq!(change.notify, strings(&["alice", "bob", "carol"]));
    assert_eq!(change.event.actor, "carol");
    assert_eq!(change.event.members, strings(&["alice", "bob"]));
}

#[test]
fn owner_leaving_hands_ownership_to_the_smallest_id() {
    let g = group("bob", &["Zed", "alice", "bob", "carol"]);
    let change = leave(Some(&g), "bob", &leave_cmd()).unwrap();
    // byte-wise: "Zed" < "alice"
    assert_eq!(change.after.unwrap().owner, "Zed");
}

#[test]
fn last_member_leaving_deletes_the_group() {
    let g = group("alice", &["alice"]);
    let change = leave(Some(&g), "alice", &leave_cmd()).unwrap();
    assert_eq!(change.after, None);
    assert_eq!(change.notify, strings(&["alice"]));
    assert_eq!(change.event.group_id, "g1");
    assert_eq!(change.event.name, "Team");
    assert!(change.event.members.is_empty());
}

#[test]
fn leave_errors() {
    let error = leave(None, "alice", &leave_cmd()).unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound);
    let g = group("alice", &["alice"]);
    let error = leave(Some(&g), "bob", &leave_cmd()).unwrap_err();
    assert_eq!(error.code, ErrorCode::NotMember);
    assert!(
        error.message.contains("bob is not a member of group g1"),
        "{error}"
    );
}

#[test]
fn group_helpers() {
    let g = group("alice", &["alice", "bob"]);
    assert!(g.is_member("bob"));
    assert!(!g.is_member("bo"));
    assert!(!g.is_member("carol"));
    assert_eq!(g.channel().to_string(), "g:g1");
    let event = g.event("bob");
    assert_eq!(event.members, strings(&["alice", "bob"]));
    assert_eq!(event.actor, "bob");
    assert_eq!(ensure_member(&g, "alice"), Ok(()));
    assert_eq!(require("g1", Some(&g)), Ok(&g));
}
