//! Presence across a cluster: which other nodes have a user online.
//!
//! Each node tracks its own devices (the [`Tracker`](super::tracker)) and
//! reports its users' local state changes to the other nodes through a
//! [`PresenceBus`]; what the others report lands here. A user is online
//! while any node has them online: the local tracker or any entry here.
//! A node that stops reporting (it died) is dropped as a whole by
//! [`RemoteUsers::forget_node`].
//!
//! Must not: know NATS (the cluster module implements the bus) or decide
//! grace periods: a node reports a user offline only once its own tracker
//! has, after the grace period.

use std::collections::{HashMap, HashSet};

/// Where a node's local presence changes go (the cluster's NATS subject).
pub trait PresenceBus: Send + Sync + 'static {
    /// `user` has (`online`) or no longer has a device online on this node.
    fn report(&self, user: &str, online: bool);
}

/// The users other nodes report online, by user.
#[derive(Default)]
pub struct RemoteUsers {
    nodes_of: HashMap<String, HashSet<String>>,
}

impl RemoteUsers {
    /// True if some other node has `user` online.
    pub fn is_online(&self, user: &str) -> bool {
        self.nodes_of.contains_key(user)
    }

    /// `node` reports `user` online or offline.
    pub fn set(&mut self, node: &str, user: &str, online: bool) {
        if online {
            self.nodes_of
                .entry(user.to_owned())
                .or_default()
                .insert(node.to_owned());
            return;
        }
        if let Some(nodes) = self.nodes_of.get_mut(user) {
            nodes.remove(node);
            if nodes.is_empty() {
                self.nodes_of.remove(user);
            }
        }
    }

    /// Replaces everything `node` reported with its full `online` set;
    /// returns the users whose entry for `node` changed.
    pub fn replace_node(&mut self, node: &str, online: &[String]) -> Vec<String> {
        let now: HashSet<&str> = online.iter().map(String::as_str).collect();
        let before = self.users_of(node);
        let mut changed: Vec<String> = before
            .iter()
            .filter(|user| !now.contains(user.as_str()))
            .cloned()
            .collect();
        for user in &changed {
            self.set(node, user, false);
        }
        for user in online {
            if !before.contains(user) {
                self.set(node, user, true);
                changed.push(user.clone());
            }
        }
        changed
    }

    /// Drops every user `node` reported (the node is gone); returns them.
    pub fn forget_node(&mut self, node: &str) -> Vec<String> {
        let users: Vec<String> = self.users_of(node).into_iter().collect();
        for user in &users {
            self.set(node, user, false);
        }
        users
    }

    /// The users `node` reported online.
    pub fn users_reported_by(&self, node: &str) -> Vec<String> {
        self.users_of(node).into_iter().collect()
    }

    fn users_of(&self, node: &str) -> HashSet<String> {
        self.nodes_of
            .iter()
            .filter(|(_, nodes)| nodes.contains(node))
            .map(|(user, _)| user.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_online_while_any_node_reports_them() {
        let mut remote = RemoteUsers::default();
        remote.set("n1", "alice", true);
        remote.set("n2", "alice", true);
        remote.set("n1", "alice", false);
        assert!(remote.is_online("alice"));
        remote.set("n2", "alice", false);
        assert!(!remote.is_online("alice"));
    }

    #[test]
    fn a_full_report_replaces_the_nodes_entries() {
        let mut remote = RemoteUsers::default();
        remote.set("n1", "alice", true);
        remote.set("n1", "bob", true);
        let mut changed = remote.replace_node("n1", &["bob".into(), "carol".into()]);
        changed.sort();
        assert_eq!(changed, ["alice", "carol"]);
        assert!(!remote.is_online("alice") && remote.is_online("bob") && remote.is_online("carol"));
    }

    #[test]
    fn a_forgotten_node_takes_its_users_offline() {
        let mut remote = RemoteUsers::default();
        remote.set("n1", "alice", true);
        remote.set("n2", "alice", true);
        remote.set("n1", "bob", true);
        let mut gone = remote.forget_node("n1");
        gone.sort();
        assert_eq!(gone, ["alice", "bob"]);
        assert!(remote.is_online("alice"), "still online on n2");
        assert!(!remote.is_online("bob"));
        assert_eq!(remote.users_reported_by("n2"), ["alice"]);
    }
}
