//! Replies answered later. A request the loop cannot answer at once (a
//! computation, a task, an upstream call) is parked here under a [`Ticket`];
//! the service that will settle it keeps only the ticket and knows nothing of
//! connections. When the service is done, or the park's deadline passes, the
//! loop takes the ticket back and routes the reply to the connection, if that
//! connection still exists (a reused token is told apart by its serial).
//!
//! A stepper reply held for its commit is not parked: it is already written
//! into the connection's output behind a hold (`conn::Output::push_hold`), so
//! pipelined steps on one connection keep flowing into the same batch, which
//! a parked request (that stops the connection's later requests) would not.
//!
//! Sans-IO and sans-clock: `now` is an argument. The table is bounded; each
//! entry is a few words, so a parked request costs a connection slot and a
//! few bytes, never a thread.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use mio::Token;

use crate::net::conn::ConnRef;

/// Names one parked request. Opaque: only this table makes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

/// The table holds `parked_max` requests already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkingFull;

#[derive(Debug)]
struct Parked<T> {
    conn: ConnRef,
    /// Who settles the ticket, so an expiry reaches the right service.
    owner: T,
}

/// Parked requests by ticket, with their deadlines in time order.
#[derive(Debug)]
pub struct Parking<T> {
    next: u64,
    parked: HashMap<Ticket, Parked<T>>,
    /// May hold tickets already taken; they are skipped when they surface.
    deadlines: BinaryHeap<Reverse<(Instant, Ticket)>>,
    /// The ticket of each connection (token, serial) that has one, so a
    /// client that leaves gives its request up (a connection waits for one
    /// parked request at a time).
    by_conn: HashMap<(Token, u64), Ticket>,
    parked_max: usize,
}

impl<T: Copy> Parking<T> {
    pub fn new(parked_max: usize) -> Parking<T> {
        Parking {
            next: 0,
            parked: HashMap::new(),
            deadlines: BinaryHeap::new(),
            by_conn: HashMap::new(),
            parked_max,
        }
    }

    /// Parks a request for `owner` to settle; with a `deadline`, the loop
    /// expires it then (see [`Parking::expired`]) if nobody settled it first.
    pub fn park(
        &mut self,
        conn: ConnRef,
        owner: T,
        deadline: Option<Instant>,
    ) -> Result<Ticket, ParkingFull> {
        if self.parked.len() >= self.parked_max {
            return Err(ParkingFull);
        }
        self.next += 1;
        let ticket = Ticket(self.next);
        self.parked.insert(ticket, Parked { conn, owner });
        self.by_conn.insert((conn.token, conn.serial), ticket);
        if let Some(at) = deadline {
            // Settled tickets leave their deadline behind until it surfaces;
            // with long deadlines and a high rate that is a lot of garbage,
            // so rebuild before it outnumbers the live entries.
            if self.deadlines.len() > 64 + 2 * self.parked.len() {
                let parked = &self.parked;
                self.deadlines
                    .retain(|Reverse((_, ticket))| parked.contains_key(ticket));
            }
            self.deadlines.push(Reverse((at, ticket)));
        }
        Ok(ticket)
    }

    /// Takes a ticket back to answer it; `None` if it was already taken
    /// (it expired, or was settled).
    pub fn take(&mut self, ticket: Ticket) -> Option<(ConnRef, T)> {
        let parked = self.parked.remove(&ticket)?;
        let key = (parked.conn.token, parked.conn.serial);
        if self.by_conn.get(&key) == Some(&ticket) {
            self.by_conn.remove(&key);
        }
        if self.parked.is_empty() {
            // Nothing can be due any more: drop the stale deadlines at once.
            self.deadlines.clear();
        }
        Some((parked.conn, parked.owner))
    }

    /// The request the connection `token` (with `serial`) left parked when
    /// it closed, with its owner; it stays parked until the caller takes it.
    pub fn left_by(&self, token: Token, serial: u64) -> Option<(Ticket, T)> {
        let ticket = *self.by_conn.get(&(token, serial))?;
        self.parked.get(&ticket).map(|p| (ticket, p.owner))
    }

    /// The earliest deadline of a request still parked, for the loop's sleep.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_stale_deadlines();
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// A parked request whose deadline is at or before `now`, with its owner;
    /// it stays parked until the caller takes it.
    pub fn expired(&mut self, now: Instant) -> Option<(Ticket, T)> {
        self.drop_stale_deadlines();
        let Reverse((at, ticket)) = *self.deadlines.peek()?;
        if at > now {
            return None;
        }
        self.deadlines.pop();
        self.parked.get(&ticket).map(|p| (ticket, p.owner))
    }

    pub fn len(&self) -> usize {
        self.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    fn drop_stale_deadlines(&mut self) {
        while let Some(Reverse((_, ticket))) = self.deadlines.peek() {
            if self.parked.contains_key(ticket) {
                return;
            }
            self.deadlines.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    fn conn(n: usize) -> ConnRef {
        ConnRef {
            token: Token(n),
            serial: n as u64,
            peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    #[test]
    fn a_ticket_is_taken_once() {
        let mut parking = Parking::new(4);
        let t = parking.park(conn(1), 'a', None).unwrap();
        assert_eq!(parking.take(t), Some((conn(1), 'a')));
        assert_eq!(parking.take(t), None);
        assert!(parking.is_empty());
    }

    #[test]
    fn tickets_are_distinct_and_the_table_is_bounded() {
        let mut parking = Parking::new(2);
        let a = parking.park(conn(1), (), None).unwrap();
        let b = parking.park(conn(1), (), None).unwrap();
        assert_ne!(a, b);
        assert_eq!(parking.park(conn(2), (), None), Err(ParkingFull));
        parking.take(a);
        assert!(parking.park(conn(2), (), None).is_ok());
        assert_eq!(parking.len(), 2);
    }

    #[test]
    fn a_closed_connection_finds_its_ticket() {
        let mut parking = Parking::new(4);
        let t = parking.park(conn(3), 'x', None).unwrap();
        assert_eq!(parking.left_by(Token(3), 3), Some((t, 'x')));
        assert_eq!(parking.left_by(Token(3), 4), None, "another serial");
        parking.take(t);
        assert_eq!(parking.left_by(Token(3), 3), None);
    }

    #[test]
    fn settled_deadlines_do_not_pile_up() {
        let far = Instant::now() + Duration::from_secs(60);
        let mut parking = Parking::new(8);
        let _held = parking.park(conn(1), (), Some(far)).unwrap();
        for _ in 0..10_000 {
            let t = parking.park(conn(2), (), Some(far)).unwrap();
            parking.take(t);
        }
        assert!(
            parking.deadlines.len() <= 64 + 2 * 2 + 1,
            "{}",
            parking.deadlines.len()
        );
        assert_eq!(parking.next_deadline(), Some(far));
    }

    #[test]
    fn deadlines_expire_in_time_order_and_settled_ones_never() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut parking = Parking::new(8);
        let late = parking.park(conn(1), 'l', Some(t0 + ms(30))).unwrap();
        let early = parking.park(conn(2), 'e', Some(t0 + ms(10))).unwrap();
        let settled = parking.park(conn(3), 's', Some(t0 + ms(5))).unwrap();
        let _forever = parking.park(conn(4), 'f', None).unwrap();
        parking.take(settled);
        assert_eq!(parking.next_deadline(), Some(t0 + ms(10)));
        assert_eq!(parking.expired(t0 + ms(9)), None);
        assert_eq!(parking.expired(t0 + ms(40)), Some((early, 'e')));
        // Expiry reports; the caller takes.
        assert_eq!(parking.take(early), Some((conn(2), 'e')));
        assert_eq!(parking.expired(t0 + ms(40)), Some((late, 'l')));
        parking.take(late);
        assert_eq!(parking.expired(t0 + ms(1000)), None);
        assert_eq!(parking.next_deadline(), None);
        assert_eq!(parking.len(), 1);
    }
}
