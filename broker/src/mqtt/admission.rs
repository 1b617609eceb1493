//! Connection admission: the limits a new connection is checked against the
//! moment it is accepted, before a byte of it is read.
//!
//! - `max_connections`: every open connection counts, whatever its listener
//!   and whether or not it has sent CONNECT yet.
//! - `max_connecting_per_addr`: connections from one IP address still in
//!   their handshakes (TLS, WebSocket) or before their CONNECT was
//!   authenticated. Established connections do not count, so many devices
//!   behind one NAT address are fine.
//!
//! A connection beyond either limit is closed at once by the accept loop
//! (not left waiting in the kernel's accept queue), logged and counted in
//! `parley_refusals_total`.
//! Must not: read from the socket or know about MQTT packets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits, shared by every accept loop of one broker.
pub struct Admission {
    open: Arc<Semaphore>,
    connecting: Arc<ConnectingTable>,
    max_connecting_per_addr: usize,
}

/// Connections not yet past CONNECT, per IP address (no zero entries).
#[derive(Default)]
struct ConnectingTable(Mutex<HashMap<IpAddr, usize>>);

impl ConnectingTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    MaxConnections,
    MaxConnectingPerAddr,
}

impl Refused {
    /// The `reason` label of `parley_refusals_total` (the config key's name).
    pub fn reason(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectingPerAddr => "max_connecting_per_addr",
        }
    }
}

/// An admitted connection: hold `open` for its whole life, drop `connecting`
/// once its CONNECT is authenticated.
pub struct Admitted {
    pub open: OwnedSemaphorePermit,
    pub connecting: Connecting,
}

/// A connection from one address that has not completed CONNECT yet; it
/// counts towards `max_connecting_per_addr` until dropped.
pub struct Connecting {
    table: Arc<ConnectingTable>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(max_connections: usize, max_connecting_per_addr: usize) -> Self {
        Self {
            open: Arc::new(Semaphore::new(max_connections)),
            connecting: Arc::default(),
            max_connecting_per_addr,
        }
    }

    /// Admits a new connection from `ip`, or says which limit it is beyond.
    /// Never waits.
    pub fn admit(&self, ip: IpAddr) -> Result<Admitted, Refused> {
        let open = self
            .open
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::MaxConnections)?;
        let connecting = self.start_connecting(ip)?;
        Ok(Admitted { open, connecting })
    }

    /// Connections from `ip` not yet past CONNECT.
    #[cfg(test)]
    fn connecting_from(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.connecting.lock().get(&ip).copied().unwrap_or(0)
    }

    fn start_connecting(&self, ip: IpAddr) -> Result<Connecting, Refused> {
        // `::ffff:a.b.c.d` on a dual-stack listener is the IPv4 peer a.b.c.d
        let ip = ip.to_canonical();
        let mut table = self.connecting.lock();
        let count = table.get(&ip).copied().unwrap_or(0);
        if count >= self.max_connecting_per_addr {
            return Err(Refused::MaxConnectingPerAddr);
        }
        table.insert(ip, count + 1);
        Ok(Connecting {
            table: self.connecting.clone(),
            ip,
        })
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        if let Some(count) = table.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn max_connections_counts_every_open_connection() {
        let admission = Admission::new(2, 10);
        let first = admission.admit(A).unwrap();
        let second = admission.admit(B).unwrap();
        assert_eq!(admission.admit(A).err(), Some(Refused::MaxConnections));
        // Past CONNECT it still counts as open.
        drop(second.connecting);
        assert_eq!(admission.admit(B).err(), Some(Refused::MaxConnections));
        drop(second.open);
        let third = admission.admit(B).unwrap();
        drop((first, third));
    }

    #[test]
    fn connecting_is_limited_per_address_until_connect_completes() {
        let admission = Admission::new(100, 2);
        let a1 = admission.admit(A).unwrap();
        let a2 = admission.admit(A).unwrap();
        assert_eq!(
            admission.admit(A).err(),
            Some(Refused::MaxConnectingPerAddr)
        );
        // Another address is not affected.
        let b1 = admission.admit(B).unwrap();
        assert_eq!(admission.connecting_from(A), 2);
        // a1 completes CONNECT: room for one more from A, a1 stays open.
        let Admitted {
            open: a1_open,
            connecting,
        } = a1;
        drop(connecting);
        assert_eq!(admission.connecting_from(A), 1);
        let a3 = admission.admit(A).unwrap();
        assert_eq!(
            admission.admit(A).err(),
            Some(Refused::MaxConnectingPerAddr)
        );
        drop((a2, a3, b1, a1_open));
        assert_eq!(admission.connecting_from(A), 0);
        assert!(
            admission.connecting.lock().is_empty(),
            "no zero entries left"
        );
    }

    #[test]
    fn a_refusal_leaves_no_trace() {
        let admission = Admission::new(1, 1);
        let a = admission.admit(A).unwrap();
        assert_eq!(admission.admit(B).err(), Some(Refused::MaxConnections));
        assert_eq!(admission.connecting_from(B), 0);
        drop(a);
        assert!(admission.connecting.lock().is_empty());
        assert_eq!(admission.open.available_permits(), 1);
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
        let admission = Admission::new(10, 1);
        let _a = admission.admit(A).unwrap();
        let IpAddr::V4(v4) = A else { unreachable!() };
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert_eq!(
            admission.admit(mapped).err(),
            Some(Refused::MaxConnectingPerAddr)
        );
        assert!(admission.admit(IpAddr::V6(Ipv6Addr::LOCALHOST)).is_ok());
    }

    #[test]
    fn reasons_are_the_config_keys() {
        assert_eq!(Refused::MaxConnections.reason(), "max_connections");
        assert_eq!(
            Refused::MaxConnectingPerAddr.reason(),
            "max_connecting_per_addr"
        );
    }
}
