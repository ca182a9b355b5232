//! The request stream without a socket: fixtures named by what the client
//! does, a fake [`Respond`] that answers by path, and what the output offers
//! as the bytes a socket would take.

use std::io::IoSlice;
use std::net::Ipv4Addr;

use super::*;
use crate::reply::output::IOVECS_MAX;

/// Answers `/echo` at once, keeps a slot for `/slot` (as a step does),
/// waits for `/wait` (as a computation does), reads the body of `/body`.
#[derive(Default)]
struct Fake {
    next_ticket: u64,
    tickets: Vec<Ticket>,
    bodies: Vec<Vec<u8>>,
    rejected: Vec<ConnError>,
}

impl Respond for Fake {
    fn body_limit(&self, request: &Request<'_>) -> Option<usize> {
        (request.path == b"/body").then_some(16)
    }

    fn respond(
        &mut self,
        _from: Peer,
        request: &Request<'_>,
        body: &[u8],
        out: &mut Output,
    ) -> Reply {
        let close = request.persistence().closes();
        match request.path {
            b"/slot" | b"/wait" => {
                self.next_ticket += 1;
                let ticket = Ticket::for_tests(self.next_ticket);
                self.tickets.push(ticket);
                out.reserve(ticket);
                if request.path == b"/wait" {
                    return Reply::Wait(ticket);
                }
            }
            b"/body" => {
                self.bodies.push(body.to_vec());
                out.extend(b"body|");
            }
            path => {
                out.extend(path);
                out.extend(b"|");
            }
        }
        if close {
            Reply::Close
        } else {
            Reply::KeepAlive
        }
    }

    fn reject(&mut self, error: ConnError, out: &mut Output) {
        self.rejected.push(error);
        out.extend(b"rejected|");
    }
}

fn peer() -> Peer {
    Peer {
        conn: ConnId { key: 0, serial: 1 },
        addr: Ipv4Addr::LOCALHOST.into(),
        listener: Listener::Public,
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

/// A session with what a fresh connection has seen: nothing.
fn fresh() -> (Session, Fake, Limits) {
    (
        Session::new(Instant::now()),
        Fake::default(),
        Limits::default(),
    )
}

/// Everything the output offers now, as a socket that takes it all.
fn written(session: &mut Session) -> String {
    let mut sent = Vec::new();
    loop {
        let out = session.output_mut();
        let mut slices = [IoSlice::new(&[]); IOVECS_MAX];
        let count = out.writable(&mut slices);
        if count == 0 {
            return String::from_utf8(sent).unwrap();
        }
        let n: usize = slices[..count].iter().map(|s| s.len()).sum();
        for slice in &slices[..count] {
            sent.extend_from_slice(slice);
        }
        out.advance(n);
    }
}

#[test]
fn every_prefix_of_a_request_waits_and_pipelined_ones_answer_in_order() {
    let (mut s, mut app, limits) = fresh();
    let request = get("/a");
    for byte in &request[..request.len() - 1] {
        s.on_bytes(std::slice::from_ref(byte), peer(), &mut app, &limits);
        assert_eq!(written(&mut s), "", "a prefix is not a request");
    }
    s.on_bytes(&request[request.len() - 1..], peer(), &mut app, &limits);
    assert_eq!(written(&mut s), "/a|");
    let mut three = get("/b");
    three.extend(get("/c"));
    three.extend(get("/d"));
    s.on_bytes(&three, peer(), &mut app, &limits);
    assert_eq!(written(&mut s), "/b|/c|/d|");
    assert!(s.wants_input());
}

#[test]
fn a_body_the_route_does_not_read_is_skipped_before_the_next_head() {
    let (mut s, mut app, limits) = fresh();
    let mut bytes = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhel".to_vec();
    s.on_bytes(&bytes, peer(), &mut app, &limits);
    assert_eq!(written(&mut s), "/x|");
    bytes = b"lo".to_vec();
    bytes.extend(get("/y"));
    s.on_bytes(&bytes, peer(), &mut app, &limits);
    assert_eq!(
        written(&mut s),
        "/y|",
        "the body's bytes were not a request"
    );
    let chunked =
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    s.on_bytes(chunked, peer(), &mut app, &limits);
    s.on_bytes(&get("/z"), peer(), &mut app, &limits);
    assert_eq!(written(&mut s), "/x|/z|");
}

#[test]
fn a_read_body_is_collected_and_100_continue_is_sent_once() {
    let (mut s, mut app, limits) = fresh();
    let head =
        b"POST /body HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    s.on_bytes(head, peer(), &mut app, &limits);
    assert_eq!(written(&mut s), "HTTP/1.1 100 Continue\r\n\r\n");
    s.on_bytes(b"ab", peer(), &mut app, &limits);
    assert_eq!(written(&mut s), "", "no second 100, no answer yet");
    s.on_bytes(b"cd", peer(), &mut app, &limits);
    assert_eq!(written(&mut s), "body|");
    assert_eq!(app.bodies, [b"abcd".to_vec()]);
    // A body over the route's limit is refused, and the connection closes.
    let big = b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n";
    s.on_bytes(big, peer(), &mut app, &limits);
    assert_eq!(written(&mut s), "rejected|");
    assert_eq!(app.rejected, [ConnError::Parse(ParseError::BodyTooLarge)]);
    assert!(s.is_finished(false));
}

#[test]
fn a_request_that_waits_holds_the_ones_behind_it() {
    let (mut s, mut app, limits) = fresh();
    let mut bytes = get("/wait");
    bytes.extend(get("/after"));
    s.on_bytes(&bytes, peer(), &mut app, &limits);
    assert_eq!(written(&mut s), "");
    assert_eq!(
        s.expired(Instant::now() + Duration::from_secs(3600), &timeouts()),
        None
    );
    let ticket = app.tickets[0];
    let delivered = s.deliver(ticket, false, &limits, |out| {
        out.extend(b"late|");
        Reply::KeepAlive
    });
    assert_eq!(delivered, Some(vec![]));
    assert!(
        s.answer_kept(peer(), &mut app, &limits),
        "the kept request is answered now"
    );
    assert_eq!(written(&mut s), "late|/after|");
}

#[test]
fn replies_behind_a_slot_queue_but_leave_only_once_it_is_filled() {
    let (mut s, mut app, limits) = fresh();
    let mut bytes = get("/slot");
    bytes.extend(get("/slot"));
    bytes.extend(get("/now"));
    s.on_bytes(&bytes, peer(), &mut app, &limits);
    assert_eq!(app.tickets.len(), 2, "pipelining goes on behind a slot");
    assert_eq!(written(&mut s), "");
    assert_eq!(s.open_slots().collect::<Vec<_>>(), app.tickets);
    let (first, second) = (app.tickets[0], app.tickets[1]);
    s.deliver(second, false, &limits, |out| {
        out.extend(b"two|");
        Reply::KeepAlive
    });
    assert_eq!(written(&mut s), "", "the first still holds the rest");
    s.deliver(first, false, &limits, |out| {
        out.extend(b"one|");
        Reply::KeepAlive
    });
    assert_eq!(written(&mut s), "one|two|/now|");
}

#[test]
fn a_withdrawn_slot_drops_what_followed_and_closes() {
    let (mut s, mut app, limits) = fresh();
    let mut bytes = get("/a");
    bytes.extend(get("/slot"));
    bytes.extend(get("/b"));
    bytes.extend(get("/slot"));
    s.on_bytes(&bytes, peer(), &mut app, &limits);
    let dropped = s.deliver(app.tickets[0], true, &limits, |out| {
        out.extend(b"503|");
        Reply::Close
    });
    assert_eq!(
        dropped,
        Some(vec![app.tickets[1]]),
        "the later slot went too"
    );
    assert_eq!(written(&mut s), "/a|503|");
    assert!(s.is_finished(false), "closes once written");
    assert_eq!(
        s.deliver(app.tickets[1], false, &limits, |_| Reply::KeepAlive),
        None
    );
    s.on_bytes(&get("/late"), peer(), &mut app, &limits);
    assert_eq!(written(&mut s), "", "nothing more is answered");
}

#[test]
fn a_client_that_pipelines_without_reading_is_paused() {
    let (mut s, mut app, limits) = fresh();
    let request = get("/a-reply-of-some-length");
    let many: Vec<u8> = (0..5000).flat_map(|_| request.clone()).collect();
    // Fed as the shell reads: a chunk at a time, while input is wanted.
    let mut fed = 0;
    while fed < many.len() && s.wants_input() {
        let end = (fed + 16 * 1024).min(many.len());
        s.on_bytes(&many[fed..end], peer(), &mut app, &limits);
        fed = end;
    }
    assert!(fed < many.len(), "it stopped reading");
    assert!(
        s.output().backlog_bytes() >= OUTPUT_PAUSE_BYTES || s.kept_bytes() >= INPUT_KEPT_BYTES_MAX
    );
    assert!(s.kept_bytes() <= 4 * (INPUT_KEPT_BYTES_MAX + OUTPUT_PAUSE_BYTES));
    // Once the client reads, the rest is taken and answered, in order.
    let mut replies = 0;
    loop {
        replies += written(&mut s).matches("/a-reply-of-some-length|").count();
        let progress = s.answer_kept(peer(), &mut app, &limits);
        if fed < many.len() && s.wants_input() {
            let end = (fed + 16 * 1024).min(many.len());
            s.on_bytes(&many[fed..end], peer(), &mut app, &limits);
            fed = end;
        } else if !progress && s.output().is_empty() {
            break;
        }
    }
    assert_eq!(replies, 5000);
}

#[test]
fn a_malformed_head_is_answered_once_and_closes() {
    let (mut s, mut app, limits) = fresh();
    let mut bytes = b"GET / HTTP/1.1\r\nHost t\r\n\r\n".to_vec();
    bytes.extend(get("/after"));
    s.on_bytes(&bytes, peer(), &mut app, &limits);
    assert_eq!(written(&mut s), "rejected|");
    assert!(matches!(app.rejected[..], [ConnError::Parse(_)]));
    assert!(!s.wants_input());
    assert!(s.is_finished(false));
}

fn timeouts() -> Timeouts {
    Timeouts {
        request: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    }
}

#[test]
fn a_half_sent_request_times_out_and_an_idle_one_closes_quietly() {
    let t0 = Instant::now();
    let (mut s, mut app, limits) = fresh();
    s.on_bytes(b"GET /a HTTP/1.1\r\n", peer(), &mut app, &limits);
    s.stamp(t0, true);
    assert_eq!(s.expired(t0 + Duration::from_secs(9), &timeouts()), None);
    assert_eq!(
        s.expired(t0 + Duration::from_secs(10), &timeouts()),
        Some(Expiry::Request)
    );
    s.time_out(&mut app);
    assert_eq!(app.rejected, [ConnError::RequestTimeout]);
    let (mut idle, _, _) = fresh();
    idle.stamp(t0, true);
    assert_eq!(
        idle.expired(t0 + Duration::from_secs(60), &timeouts()),
        Some(Expiry::Idle)
    );
}

#[test]
fn a_peer_that_stops_mid_request_gets_no_answer() {
    let (mut s, mut app, limits) = fresh();
    s.on_bytes(b"GET /a HTTP/1.1\r\nHo", peer(), &mut app, &limits);
    s.on_eof();
    assert!(!s.wants_input());
    assert!(s.is_finished(false));
    assert_eq!(written(&mut s), "");
}
