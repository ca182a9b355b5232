//! bare-responder: the floor under any HTTP server on this machine.
//!
//! One thread, one mio loop. It accepts, reads, finds the end of every
//! complete request head in the buffer (`\r\n\r\n`, so pipelined requests each
//! get an answer) and writes a fixed `HTTP/1.1 200 OK` reply with
//! Content-Length and no Date header (it has no clock: slightly less work
//! than a real origin server, which must send Date).
//!
//! `--durable FILE` group-commits per loop pass, as redis does with
//! `appendfsync always`: after all ready events of one poll pass, if any
//! request was seen, it writes 8 bytes at offset 0 and fdatasyncs, then 8
//! bytes at offset 4096 and fdatasyncs (what a default-flags LMDB commit
//! costs: data pages, then the meta page), and only then writes that pass's
//! answers. With `--flushes 1` it writes and fdatasyncs once per pass: the
//! one-flush limit, what any design that makes a batch durable with one
//! device flush can reach on this disk (redis `appendfsync always` does
//! exactly this).
//!
//! Usage: bare-responder [--port P] [--durable FILE [--flushes 1|2]]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n1\n";

struct Conn {
    sock: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    dead: bool,
}

fn main() -> std::io::Result<()> {
    let mut port = 8090u16;
    let mut durable: Option<File> = None;
    let mut flushes = 2u8;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port N"),
            "--durable" => {
                let path = args.next().expect("--durable FILE");
                let f = File::options().create(true).truncate(false).read(true).write(true).open(path)?;
                f.set_len(8192)?;
                durable = Some(f);
            }
            "--flushes" => {
                flushes = args.next().and_then(|n| n.parse().ok()).filter(|n| (1..=2).contains(n)).expect("--flushes 1|2");
            }
            _ => panic!("usage: bare-responder [--port P] [--durable FILE [--flushes 1|2]]"),
        }
    }
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(([127, 0, 0, 1], port).into())?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut pending: Vec<usize> = Vec::new(); // connections with answers to write this pass
    let mut buf = vec![0u8; 64 * 1024];
    let mut commits: u64 = 0;
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted { continue; }
            return Err(e);
        }
        let mut seen = false;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut sock, _)) = listener.accept() {
                    let _ = sock.set_nodelay(true);
                    let slot = conns.iter().position(Option::is_none).unwrap_or_else(|| { conns.push(None); conns.len() - 1 });
                    poll.registry().register(&mut sock, Token(slot), Interest::READABLE | Interest::WRITABLE)?;
                    conns[slot] = Some(Conn { sock, inbuf: Vec::new(), out: Vec::new(), dead: false });
                }
                continue;
            }
            let i = ev.token().0;
            let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else { continue };
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => { c.dead = true; break; }
                    Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => { c.dead = true; break; }
                }
            }
            // Every complete head in the buffer gets one answer.
            let mut start = 0;
            while let Some(end) = c.inbuf[start..].windows(4).position(|w| w == b"\r\n\r\n") {
                c.out.extend_from_slice(REPLY);
                start += end + 4;
                seen = true;
            }
            c.inbuf.drain(..start);
            if !c.out.is_empty() || c.dead { pending.push(i); }
        }
        if seen && let Some(f) = &durable {
            commits += 1;
            f.write_all_at(&commits.to_le_bytes(), 0)?;
            f.sync_data()?;
            if flushes == 2 {
                f.write_all_at(&commits.to_le_bytes(), 4096)?;
                f.sync_data()?;
            }
        }
        for i in pending.drain(..) {
            let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else { continue };
            while !c.out.is_empty() && !c.dead {
                match c.sock.write(&c.out) {
                    Ok(n) => { c.out.drain(..n); }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => c.dead = true,
                }
            }
            if c.dead {
                let mut c = conns[i].take().expect("present");
                let _ = poll.registry().deregister(&mut c.sock);
            }
        }
    }
}
