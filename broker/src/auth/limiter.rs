//! Failed-login limits: per user id and per client IP address, each a
//! token bucket of `login_failures_per_*` over `login_failure_window_secs`.
//!
//! Only failures are charged, so any number of successful logins pass. While
//! either bucket is empty every attempt is refused (429) without checking
//! the password: answering a right password during a lockout would tell a
//! guesser that it is right.

use std::net::IpAddr;
use std::time::Instant;

use crate::config::Config;
use crate::rate::{Keyed, Quota};

/// Most users and addresses tracked at once (each map).
const TRACKED: usize = 100_000;

/// The failed-login limits of one broker.
pub struct LoginLimiter {
    users: Keyed<String>,
    addrs: Keyed<IpAddr>,
}

impl LoginLimiter {
    pub fn new(config: &Config) -> Self {
        let window = config.login_failure_window();
        LoginLimiter {
            users: Keyed::new(
                Quota::per_window(config.login_failures_per_user, window),
                TRACKED,
            ),
            addrs: Keyed::new(
                Quota::per_window(config.login_failures_per_addr, window),
                TRACKED,
            ),
        }
    }

    /// Whether a login of `user` from `addr` may be tried now.
    pub fn allows(&self, user: &str, addr: IpAddr) -> bool {
        let now = Instant::now();
        self.users.allows(&user.to_owned(), now) && self.addrs.allows(&addr, now)
    }

    /// Records a failed attempt.
    pub fn failed(&self, user: &str, addr: IpAddr) {
        let now = Instant::now();
        self.users.charge(user.to_owned(), now);
        self.addrs.charge(addr, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_the_user_and_the_address_but_successes_never() {
        let mut config = Config::defaults();
        config.login_failures_per_user = 3;
        config.login_failures_per_addr = 5;
        let limiter = LoginLimiter::new(&config);
        let (here, there): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..1000 {
            assert!(limiter.allows("alice", here), "successes are not counted");
        }
        for _ in 0..3 {
            limiter.failed("alice", here);
        }
        assert!(!limiter.allows("alice", here));
        assert!(
            !limiter.allows("alice", there),
            "the user is locked from everywhere"
        );
        assert!(limiter.allows("bob", here), "the address has failures left");
        limiter.failed("bob", here);
        limiter.failed("carol", here);
        assert!(
            !limiter.allows("dave", here),
            "the address is locked for everyone"
        );
        assert!(limiter.allows("dave", there));
    }
}
