//! Fuzzes the sans-IO request parser and the chunked-body decoder with
//! arbitrary bytes, the way a pipelining client would present them: heads,
//! bodies and the next request back to back in one buffer.
//!
//! Beyond "never panics", it checks the promises the connection code relies
//! on: a `Complete` head fits in the buffer and the limit, every strict prefix
//! of a complete head is `Partial`, and the decoder gives the same answer
//! whatever split the bytes arrive in.

#![no_main]

use fibd::http::chunked::{ChunkProgress, ChunkedDecoder};
use fibd::http::parse::{BodyFraming, Limits, Parsed, parse};
use libfuzzer_sys::fuzz_target;

/// Bounds the work of one input even if it is many tiny requests.
const PIPELINED_MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut rest = data;
    for _ in 0..PIPELINED_MAX {
        let head_len = match parse(rest, &limits) {
            Ok(Parsed::Complete { request, head_len }) => {
                assert!(head_len > 0 && head_len <= rest.len());
                assert!(head_len <= limits.head_bytes_max);
                assert_eq!(parse(&rest[..head_len - 1], &limits), Ok(Parsed::Partial));
                if let BodyFraming::Length(len) = request.body {
                    assert!(len > 0 && len <= limits.body_bytes_max);
                }
                (head_len, request.body)
            }
            Ok(Parsed::Partial) => {
                assert!(rest.len() < limits.head_bytes_max);
                break;
            }
            Err(_) => break,
        };
        rest = &rest[head_len.0..];
        match head_len.1 {
            BodyFraming::None => {}
            BodyFraming::Length(len) => match usize::try_from(len) {
                Ok(len) if len <= rest.len() => rest = &rest[len..],
                _ => break,
            },
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new(limits.body_bytes_max);
                match decoder.feed(rest) {
                    Ok(ChunkProgress::Done { consumed }) => rest = &rest[consumed..],
                    Ok(ChunkProgress::NeedMore { consumed }) => {
                        assert_eq!(consumed, rest.len());
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }
    chunked_split_invariance(data);
});

/// Feeding `data` whole and in two pieces (split where the first byte says)
/// must end the body at the same byte, or fail the same way.
fn chunked_split_invariance(data: &[u8]) {
    let whole = ChunkedDecoder::default().feed(data);
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (first, second) = data.split_at(split);
    let mut decoder = ChunkedDecoder::default();
    let parts = match decoder.feed(first) {
        Ok(ChunkProgress::NeedMore { consumed }) => {
            assert_eq!(consumed, first.len());
            match decoder.feed(second) {
                Ok(ChunkProgress::Done { consumed }) => Ok(ChunkProgress::Done {
                    consumed: split + consumed,
                }),
                Ok(ChunkProgress::NeedMore { consumed }) => Ok(ChunkProgress::NeedMore {
                    consumed: split + consumed,
                }),
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    assert_eq!(whole, parts);
    if let Ok(ChunkProgress::Done { consumed } | ChunkProgress::NeedMore { consumed }) = whole {
        assert!(consumed <= data.len());
    }
}
