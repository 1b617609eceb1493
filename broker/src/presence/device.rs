//! One device's side: [`DevicePresence`], through which a connection
//! reports its packets and how it ended, and the sweeper that takes devices
//! silent past their deadline offline.
//!
//! Must not: publish anything itself: every transition goes to the tracker
//! and on through `Presence::tell`, so friends see changes in one order.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Departure, DeviceClock, Presence};
use crate::clock::now_ms;

/// One connection's presence: report every packet with [`seen`](Self::seen)
/// and how it ended with [`leave`](Self::leave) (a drop counts as
/// [`Departure::Dropped`]).
pub struct DevicePresence {
    pub(super) presence: Arc<Presence>,
    pub(super) user: String,
    pub(super) device: String,
    pub(super) generation: u64,
    pub(super) clock: Arc<DeviceClock>,
    pub(super) left: bool,
}

impl DevicePresence {
    /// A packet arrived from the device.
    pub fn seen(&self) {
        let now = now_ms();
        if self.clock.seen(now) {
            let mut tracker = self.presence.tracker();
            let transition = tracker.revive(&self.user, &self.device, self.generation, now);
            self.presence.tell(&tracker, transition);
        }
    }

    /// The connection ended.
    pub fn leave(&mut self, how: Departure) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        let mut tracker = self.presence.tracker();
        let transition = tracker.leave(&self.user, &self.device, self.generation, how);
        self.presence.tell(&tracker, transition);
    }
}

impl Drop for DevicePresence {
    fn drop(&mut self) {
        self.leave(Departure::Dropped);
    }
}

/// How often the sweeper looks for devices past their deadline: often
/// enough that one goes offline well within a second of it.
pub(super) fn sweep_interval(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(20), Duration::from_millis(250))
}

pub(super) async fn sweep(presence: Arc<Presence>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut tracker = presence.tracker();
        for transition in tracker.sweep(now_ms()) {
            presence.tell(&tracker, Some(transition));
        }
    }
}
