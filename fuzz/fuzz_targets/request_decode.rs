//! bytes -> `parley_chat_logic::command::decode_request`, the first thing
//! the broker does with a payload published on `req/{user}/{device}`.
//!
//! Checks, besides "no panic": a request the decoder accepts obeys the
//! limits it was decoded against, under the default limits and tiny ones.

#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_chat_logic::command::{decode_request, Command};
use parley_chat_logic::limits::Limits;

fn check(data: &[u8], limits: &Limits) {
    let decoded = decode_request(data, limits);
    let Ok(command) = decoded.command else {
        return;
    };
    match command {
        Command::Send(send) => {
            assert!(!send.text.is_empty(), "empty text accepted");
            assert!(
                send.text.chars().count() <= limits.max_text_chars,
                "text over the limit accepted"
            );
            assert!(
                send.client_msg_id.len() <= limits.max_client_msg_id_bytes,
                "long client_msg_id accepted"
            );
        }
        Command::Sync(sync) => assert!(
            (1..=limits.max_sync_limit).contains(&sync.limit),
            "sync limit {}",
            sync.limit
        ),
        Command::History(history) => {
            assert!(
                (1..=limits.max_history_limit).contains(&history.limit),
                "history limit {}",
                history.limit
            )
        }
        Command::CreateGroup(create) => {
            assert!(
                create.name.chars().count() <= limits.max_group_name_chars,
                "long group name accepted"
            );
            assert!(
                create.members.windows(2).all(|w| w[0] < w[1]),
                "members not sorted and unique"
            );
        }
        Command::ChangeMembers(change) => {
            assert!(
                !change.add.is_empty() || !change.remove.is_empty(),
                "empty change accepted"
            );
            assert!(
                change
                    .add
                    .iter()
                    .all(|u| change.remove.binary_search(u).is_err()),
                "user added and removed"
            );
        }
        Command::ChangeFriends(change) => {
            let total = change.add.len() + change.remove.len();
            assert!(total > 0, "empty friend change accepted");
            assert!(total <= limits.max_users_per_request, "too many friends at once");
        }
        Command::QueryPresence(query) => assert!(
            (1..=limits.max_users_per_request).contains(&query.users.len()),
            "presence of {} users",
            query.users.len()
        ),
        Command::System(system) => {
            assert!(!system.text.is_empty(), "empty system text accepted");
            assert!(
                system.text.chars().count() <= limits.max_text_chars,
                "system text over the limit accepted"
            );
        }
        Command::Receipt(receipt) => assert!(receipt.seq > 0, "receipt for seq 0"),
        Command::LeaveGroup(_)
        | Command::Typing(_)
        | Command::RegisterPush(_)
        | Command::Logout => {}
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, &Limits::default());
    let tiny = Limits {
        max_text_chars: 4,
        max_client_msg_id_bytes: 3,
        max_group_members: 2,
        max_group_name_chars: 2,
        default_sync_limit: 1,
        max_sync_limit: 2,
        default_history_limit: 1,
        max_history_limit: 2,
        max_users_per_request: 2,
        max_friends: 1,
    };
    check(data, &tiny);
});
