//! Which devices are online, in memory: each device's last packet time, and
//! the deadlines at which silent devices go offline.
//!
//! A device is online while a packet from it arrived within the timeout. A
//! connection records every packet in its [`DeviceClock`] (one atomic
//! store); the tracker only takes its lock when a device appears, leaves,
//! comes back from silence, or reaches its deadline. Every deadline is in a
//! heap, so a sweep costs nothing for devices that are not due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// One device's packet clock, shared by its connection and the tracker.
#[derive(Debug)]
pub struct DeviceClock {
    last_seen_ms: AtomicI64,
    online: AtomicBool,
}

impl DeviceClock {
    fn new(now_ms: i64) -> Self {
        DeviceClock {
            last_seen_ms: AtomicI64::new(now_ms),
            online: AtomicBool::new(true),
        }
    }

    /// Records a packet; true when the device was offline (silent past its
    /// timeout) and the tracker must hear that it is back.
    pub fn seen(&self, now_ms: i64) -> bool {
        // SeqCst with the tracker's `expire`: either it sees this packet, or
        // this sees the device offline and revives it.
        self.last_seen_ms.fetch_max(now_ms, Ordering::SeqCst);
        !self.online.load(Ordering::SeqCst)
    }

    fn last_seen(&self) -> i64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }
}

/// A user's online state changed: what friends are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub user: String,
    pub online: bool,
    /// When the user was last active: their last packet when going offline,
    /// the moment they came online otherwise.
    pub last_active_ms: i64,
}

/// How a connection ends, for presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// DISCONNECT, Logout, revoked credentials: offline at once.
    Graceful,
    /// The connection dropped: offline once the device's timeout passes, so
    /// a phone that loses signal briefly and reconnects never shows offline.
    Dropped,
}

struct Device {
    clock: std::sync::Arc<DeviceClock>,
    /// Which connection of the device this is (a reconnect replaces it).
    generation: u64,
    connected: bool,
}

#[derive(Default)]
struct UserState {
    devices: HashMap<String, Device>,
    online: bool,
    last_active_ms: i64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Deadline {
    at_ms: i64,
    user: String,
    device: String,
    generation: u64,
}

/// The online state of every user with a device known since start.
pub struct Tracker {
    timeout_ms: i64,
    users: HashMap<String, UserState>,
    deadlines: BinaryHeap<Reverse<Deadline>>,
    next_generation: u64,
}

impl Tracker {
    pub fn new(timeout_ms: i64) -> Self {
        Tracker {
            timeout_ms: timeout_ms.max(1),
            users: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_generation: 0,
        }
    }

    /// A device connected (or reconnected, replacing its older connection).
    /// Returns its clock and generation, and the user's transition if any.
    pub fn connect(
        &mut self,
        user: &str,
        device: &str,
        now_ms: i64,
    ) -> (std::sync::Arc<DeviceClock>, u64, Option<Transition>) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let clock = std::sync::Arc::new(DeviceClock::new(now_ms));
        let state = self.users.entry(user.to_owned()).or_default();
        let entry = Device {
            clock: clock.clone(),
            generation,
            connected: true,
        };
        if let Some(replaced) = state.devices.insert(device.to_owned(), entry) {
            state.last_active_ms = state.last_active_ms.max(replaced.clock.last_seen());
        }
        self.schedule(user, device, generation, now_ms + self.timeout_ms);
        (clock, generation, self.came_online(user, now_ms))
    }

    /// A device that had gone silent sent a packet again.
    pub fn revive(
        &mut self,
        user: &str,
        device: &str,
        generation: u64,
        now_ms: i64,
    ) -> Option<Transition> {
        let entry = self.device(user, device, generation)?;
        if entry.clock.online.swap(true, Ordering::AcqRel) {
            return None; // revived already by another packet
        }
        let due = entry.clock.last_seen() + self.timeout_ms;
        self.schedule(user, device, generation, due);
        self.came_online(user, now_ms)
    }

    /// A connection of a device ended.
    pub fn leave(
        &mut self,
        user: &str,
        device: &str,
        generation: u64,
        how: Departure,
    ) -> Option<Transition> {
        let entry = self.device_mut(user, device, generation)?;
        match how {
            Departure::Dropped => {
                entry.connected = false;
                None
            }
            Departure::Graceful => {
                entry.clock.online.store(false, Ordering::Release);
                self.remove_device(user, device);
                self.went_quiet(user)
            }
        }
    }

    /// A device signed out without a connection (a logout over HTTP):
    /// whatever connection it had is over, offline at once.
    pub fn sign_out(&mut self, user: &str, device: &str) -> Option<Transition> {
        let state = self.users.get(user)?;
        let entry = state.devices.get(device)?;
        if entry.connected {
            return None; // its connection leaves by itself, at once
        }
        entry.clock.online.store(false, Ordering::Release);
        self.remove_device(user, device);
        self.went_quiet(user)
    }

    /// Takes every device whose deadline has passed offline; returns the
    /// users who went offline.
    pub fn sweep(&mut self, now_ms: i64) -> Vec<Transition> {
        let mut transitions = Vec::new();
        while let Some(Reverse(next)) = self.deadlines.peek() {
            if next.at_ms > now_ms {
                break;
            }
            let Some(Reverse(due)) = self.deadlines.pop() else {
                break;
            };
            if let Some(transition) = self.expire(due, now_ms) {
                transitions.push(transition);
            }
        }
        transitions
    }

    /// Whether `user` has an online device.
    pub fn is_online(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|state| state.online)
    }

    /// `(online, last_active_ms)` of a user known here; `None` for users
    /// with no device since start (offline; their last activity is stored).
    pub fn state(&self, user: &str) -> Option<(bool, i64)> {
        let state = self.users.get(user)?;
        Some((state.online, self.last_seen_of(state)))
    }

    /// Every online user, with the time of their latest packet.
    pub fn online_users(&self) -> Vec<(String, i64)> {
        self.users
            .iter()
            .filter(|(_, state)| state.online)
            .map(|(user, state)| (user.clone(), self.last_seen_of(state)))
            .collect()
    }

    fn expire(&mut self, due: Deadline, now_ms: i64) -> Option<Transition> {
        let timeout = self.timeout_ms;
        let entry = self.device(&due.user, &due.device, due.generation)?;
        let deadline = entry.clock.last_seen() + timeout;
        if deadline > now_ms {
            // a packet came since this deadline was set: wait again
            self.schedule(&due.user, &due.device, due.generation, deadline);
            return None;
        }
        entry.clock.online.store(false, Ordering::SeqCst);
        // A packet recorded between the check above and that store saw the
        // device online and asked for no revive: it is still online.
        let last_seen = entry.clock.last_seen_ms.load(Ordering::SeqCst);
        if last_seen + timeout > now_ms {
            entry.clock.online.store(true, Ordering::SeqCst);
            self.schedule(&due.user, &due.device, due.generation, last_seen + timeout);
            return None;
        }
        if !entry.connected {
            self.remove_device(&due.user, &due.device);
        }
        self.went_quiet(&due.user)
    }

    fn came_online(&mut self, user: &str, now_ms: i64) -> Option<Transition> {
        let state = self.users.get_mut(user)?;
        if state.online {
            return None;
        }
        state.online = true;
        state.last_active_ms = now_ms;
        Some(Transition {
            user: user.to_owned(),
            online: true,
            last_active_ms: now_ms,
        })
    }

    /// After a device went offline: the user's transition, if it was their
    /// last online device. A user with no device left is forgotten.
    fn went_quiet(&mut self, user: &str) -> Option<Transition> {
        let state = self.users.get(user)?;
        let any_online = state
            .devices
            .values()
            .any(|device| device.clock.online.load(Ordering::Acquire));
        let last_active_ms = self.last_seen_of(state);
        let was_online = state.online;
        let forget = state.devices.is_empty();
        if forget {
            self.users.remove(user);
        } else if let Some(state) = self.users.get_mut(user) {
            state.online = any_online;
            state.last_active_ms = last_active_ms;
        }
        (was_online && !any_online).then(|| Transition {
            user: user.to_owned(),
            online: false,
            last_active_ms,
        })
    }

    fn last_seen_of(&self, state: &UserState) -> i64 {
        state
            .devices
            .values()
            .map(|device| device.clock.last_seen())
            .fold(state.last_active_ms, i64::max)
    }

    fn remove_device(&mut self, user: &str, device: &str) {
        if let Some(state) = self.users.get_mut(user) {
            if let Some(removed) = state.devices.remove(device) {
                state.last_active_ms = state.last_active_ms.max(removed.clock.last_seen());
            }
        }
    }

    fn device(&self, user: &str, device: &str, generation: u64) -> Option<&Device> {
        let entry = self.users.get(user)?.devices.get(device)?;
        (entry.generation == generation).then_some(entry)
    }

    fn device_mut(&mut self, user: &str, device: &str, generation: u64) -> Option<&mut Device> {
        let entry = self.users.get_mut(user)?.devices.get_mut(device)?;
        (entry.generation == generation).then_some(entry)
    }

    fn schedule(&mut self, user: &str, device: &str, generation: u64, at_ms: i64) {
        self.deadlines.push(Reverse(Deadline {
            at_ms,
            user: user.to_owned(),
            device: device.to_owned(),
            generation,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: i64 = 1_000;

    fn went(user: &str, online: bool, at: i64) -> Transition {
        Transition {
            user: user.to_owned(),
            online,
            last_active_ms: at,
        }
    }

    #[test]
    fn a_user_is_online_while_any_device_is() {
        let mut tracker = Tracker::new(TIMEOUT);
        let (_, phone, first) = tracker.connect("alice", "phone", 0);
        assert_eq!(first, Some(went("alice", true, 0)));
        let (_, laptop, second) = tracker.connect("alice", "laptop", 10);
        assert_eq!(second, None, "already online");
        assert_eq!(
            tracker.leave("alice", "phone", phone, Departure::Graceful),
            None
        );
        assert!(tracker.is_online("alice"));
        assert_eq!(
            tracker.leave("alice", "laptop", laptop, Departure::Graceful),
            Some(went("alice", false, 10))
        );
        assert!(!tracker.is_online("alice"));
        assert_eq!(tracker.state("alice"), None, "forgotten once offline");
    }

    #[test]
    fn silence_past_the_timeout_goes_offline_and_a_packet_comes_back() {
        let mut tracker = Tracker::new(TIMEOUT);
        let (clock, generation, _) = tracker.connect("alice", "phone", 0);
        assert!(!clock.seen(600), "still online");
        assert!(tracker.sweep(1_000).is_empty(), "the packet at 600 counts");
        assert_eq!(tracker.sweep(1_600), vec![went("alice", false, 600)]);
        assert!(clock.seen(2_000), "back from silence: tell the tracker");
        assert_eq!(
            tracker.revive("alice", "phone", generation, 2_000),
            Some(went("alice", true, 2_000))
        );
        assert_eq!(tracker.revive("alice", "phone", generation, 2_001), None);
        assert!(tracker.is_online("alice"));
    }

    #[test]
    fn a_dropped_connection_stays_online_until_its_timeout() {
        let mut tracker = Tracker::new(TIMEOUT);
        let (_, old, _) = tracker.connect("alice", "phone", 0);
        assert_eq!(
            tracker.leave("alice", "phone", old, Departure::Dropped),
            None
        );
        assert!(tracker.is_online("alice"));
        // the phone comes back through the tunnel before the deadline
        let (_, new, again) = tracker.connect("alice", "phone", 500);
        assert_eq!(again, None, "never shown offline");
        assert!(tracker.sweep(1_200).is_empty(), "the old deadline is void");
        assert_eq!(
            tracker.leave("alice", "phone", new, Departure::Dropped),
            None
        );
        assert_eq!(tracker.sweep(1_500), vec![went("alice", false, 500)]);
        assert_eq!(tracker.state("alice"), None);
    }

    #[test]
    fn signing_out_ends_the_grace_period() {
        let mut tracker = Tracker::new(TIMEOUT);
        let (_, phone, _) = tracker.connect("alice", "phone", 0);
        tracker.leave("alice", "phone", phone, Departure::Dropped);
        assert_eq!(
            tracker.sign_out("alice", "phone"),
            Some(went("alice", false, 0))
        );
        assert_eq!(tracker.sign_out("alice", "phone"), None);
    }

    #[test]
    fn a_stale_connection_cannot_take_its_successor_offline() {
        let mut tracker = Tracker::new(TIMEOUT);
        let (_, old, _) = tracker.connect("alice", "phone", 0);
        let (_, _new, _) = tracker.connect("alice", "phone", 1);
        assert_eq!(
            tracker.leave("alice", "phone", old, Departure::Graceful),
            None
        );
        assert!(tracker.is_online("alice"));
    }

    #[test]
    fn state_reports_last_activity() {
        let mut tracker = Tracker::new(TIMEOUT);
        let (clock, _, _) = tracker.connect("alice", "phone", 100);
        clock.seen(700);
        assert_eq!(tracker.state("alice"), Some((true, 700)));
        assert_eq!(tracker.online_users(), vec![("alice".to_owned(), 700)]);
        tracker.sweep(1_700);
        assert_eq!(
            tracker.state("alice"),
            Some((false, 700)),
            "still connected"
        );
    }
}
