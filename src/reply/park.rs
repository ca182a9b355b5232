//! Requests answered later. A request the loop cannot answer at once (a
//! step waiting for its commit, a computation, a task, an upstream call) is
//! parked here under a [`Ticket`], with what its reply will need (`P`, the
//! routes' business); its connection keeps a slot for it
//! (`reply::output`). The service that will settle it keeps only the
//! ticket and knows nothing of connections. When the service is done, or
//! the park's deadline passes, the loop takes the ticket back and routes the
//! reply to the connection, if that connection still exists (a reused slot
//! is told apart by its serial, [`ConnId`]).
//!
//! Sans-IO and sans-clock: `now` is an argument. The table is bounded; an
//! entry costs a few words and the reply's shape, never a thread.

use std::collections::HashMap;
use std::time::Instant;

use crate::base::deadlines::Deadlines;

/// Names one parked request. Opaque: only this table makes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

impl Ticket {
    /// Lets other modules' tests name tickets without a table.
    #[cfg(test)]
    pub(crate) const fn for_tests(n: u64) -> Ticket {
        Ticket(n)
    }
}

/// Names a connection across loop passes: its key in the loop's table, and a
/// serial, because keys are reused after a close.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub key: usize,
    pub serial: u64,
}

/// The table holds `parked_max` requests already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkingFull;

/// One parked request: whose it is, and what its reply needs.
#[derive(Debug)]
pub struct Parked<P> {
    pub conn: ConnId,
    pub payload: P,
}

/// Parked requests by ticket, with their deadlines in time order.
#[derive(Debug)]
pub struct Parking<P> {
    next: u64,
    parked: HashMap<Ticket, Parked<P>>,
    deadlines: Deadlines<Ticket>,
    parked_max: usize,
}

impl<P> Parking<P> {
    pub fn new(parked_max: usize) -> Parking<P> {
        Parking {
            next: 0,
            parked: HashMap::new(),
            deadlines: Deadlines::default(),
            parked_max,
        }
    }

    /// Parks a request of `conn`; with a `deadline`, the loop expires it
    /// then (see [`Parking::expired`]) if nobody settled it first.
    pub fn park(
        &mut self,
        conn: ConnId,
        payload: P,
        deadline: Option<Instant>,
    ) -> Result<Ticket, ParkingFull> {
        if self.parked.len() >= self.parked_max {
            return Err(ParkingFull);
        }
        self.next += 1;
        let ticket = Ticket(self.next);
        self.parked.insert(ticket, Parked { conn, payload });
        if let Some(at) = deadline {
            let parked = &self.parked;
            self.deadlines
                .push(at, ticket, parked.len(), |t| parked.contains_key(t));
        }
        Ok(ticket)
    }

    /// Takes a ticket back to answer it; `None` if it was already taken
    /// (it expired, was settled, or its client left).
    pub fn take(&mut self, ticket: Ticket) -> Option<Parked<P>> {
        let parked = self.parked.remove(&ticket)?;
        if self.parked.is_empty() {
            // Nothing can be due any more: drop the stale deadlines at once.
            self.deadlines.clear();
        }
        Some(parked)
    }

    pub fn get(&self, ticket: Ticket) -> Option<&Parked<P>> {
        self.parked.get(&ticket)
    }

    /// The earliest deadline of a request still parked, for the loop's sleep.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let parked = &self.parked;
        self.deadlines.next(|t| parked.contains_key(t))
    }

    /// A parked request whose deadline is at or before `now`; it stays
    /// parked until the caller takes it.
    pub fn expired(&mut self, now: Instant) -> Option<(Ticket, &Parked<P>)> {
        let parked = &self.parked;
        let ticket = self.deadlines.pop_due(now, |t| parked.contains_key(t))?;
        self.parked.get(&ticket).map(|p| (ticket, p))
    }

    pub fn len(&self) -> usize {
        self.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn conn(n: usize) -> ConnId {
        ConnId {
            key: n,
            serial: n as u64,
        }
    }

    #[test]
    fn a_ticket_is_taken_once() {
        let mut parking = Parking::new(4);
        let t = parking.park(conn(1), 'a', None).unwrap();
        let parked = parking.take(t).unwrap();
        assert_eq!((parked.conn, parked.payload), (conn(1), 'a'));
        assert!(parking.take(t).is_none());
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
        assert!(parking.expired(t0 + ms(9)).is_none());
        let due = parking.expired(t0 + ms(40)).map(|(t, p)| (t, p.payload));
        assert_eq!(due, Some((early, 'e')));
        // Expiry reports; the caller takes.
        assert_eq!(parking.take(early).map(|p| p.conn), Some(conn(2)));
        let due = parking.expired(t0 + ms(40)).map(|(t, p)| (t, p.payload));
        assert_eq!(due, Some((late, 'l')));
        parking.take(late);
        assert!(parking.expired(t0 + ms(1000)).is_none());
        assert_eq!(parking.next_deadline(), None);
        assert_eq!(parking.len(), 1);
    }
}
