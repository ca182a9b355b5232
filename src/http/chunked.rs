//! Framing of `Transfer-Encoding: chunked` request bodies (RFC 9112 §7.1).
//!
//! Most of fibd's routes take no body, but it must find where one ends to
//! reach the next pipelined request, so this decoder skips the data
//! ([`ChunkedDecoder::feed`]); the routes that read one (primes tasks) get
//! the data too ([`ChunkedDecoder::feed_into`]), and the upstream response
//! reader (`super::upstream`) takes it run by run ([`ChunkedDecoder::feed_with`]).
//! It is sans-IO and byte-resumable: feed whatever arrived, in any split, and
//! it reports how much it consumed. It owns the chunk syntax
//! and its limits; the head parser (`super::parse`) decides a body is chunked.
//!
//! Unlike the head parser, every line here must end in CRLF: lenient line
//! endings inside chunked bodies are the known way to make two HTTP
//! implementations disagree on where a body ends ("chunk smuggling").

use std::fmt;

/// A size line is a few hex digits; a long one is an attack or a bug.
const SIZE_LINE_BYTES_MAX: usize = 4096;
/// Extensions are ignored, so bound what they can make us read in total.
const EXTENSION_BYTES_MAX: usize = 16 * 1024;
/// Trailer fields are ignored too; this bounds the whole trailer section.
const TRAILER_BYTES_MAX: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkProgress {
    /// All of the buffer was consumed and the body has not ended yet.
    NeedMore { consumed: usize },
    /// The body ended after `consumed` bytes of this buffer; the rest belongs
    /// to the next request.
    Done { consumed: usize },
}

/// Fieldless, like `ParseError`, so the response path can copy and match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    InvalidChunkSize,
    InvalidChunkFraming,
    BodyTooLarge,
}

impl ChunkError {
    /// Text for the client; no numbers, because the limits are configurable.
    pub fn message(self) -> &'static str {
        match self {
            ChunkError::InvalidChunkSize => {
                "a chunk size in the chunked request body is not a hexadecimal number that fits in 64 bits"
            }
            ChunkError::InvalidChunkFraming => {
                "the chunked request body is malformed: each chunk size line, chunk and trailer line must end in CRLF and stay short"
            }
            ChunkError::BodyTooLarge => "request body is larger than this server accepts",
        }
    }
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ChunkError {}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Reading hex digits; `digits` tells an empty size from a zero one.
    Size {
        size: u64,
        digits: bool,
    },
    /// Whitespace after the size, which may only lead to an extension.
    SizeSpace {
        size: u64,
    },
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
    /// Errors are sticky: a decoder that failed never resumes mid-garbage.
    Failed(ChunkError),
}

#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    body_bytes_max: u64,
    /// Data bytes announced so far, always at most `body_bytes_max`.
    body_bytes: u64,
    size_line_bytes: usize,
    extension_bytes: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new(super::parse::Limits::default().body_bytes_max)
    }
}

impl ChunkedDecoder {
    pub fn new(body_bytes_max: u64) -> Self {
        ChunkedDecoder {
            state: State::Size {
                size: 0,
                digits: false,
            },
            body_bytes_max,
            body_bytes: 0,
            size_line_bytes: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
        }
    }

    /// Consumes as much of `buf` as belongs to the body. After `Done`, further
    /// calls consume nothing and report `Done { consumed: 0 }`.
    pub fn feed(&mut self, buf: &[u8]) -> Result<ChunkProgress, ChunkError> {
        self.feed_with(buf, |_| {})
    }

    /// Like [`Self::feed`], appending the body's data bytes to `data` (at
    /// most `body_bytes_max` of them in all).
    pub fn feed_into(
        &mut self,
        buf: &[u8],
        data: &mut Vec<u8>,
    ) -> Result<ChunkProgress, ChunkError> {
        self.feed_with(buf, |bytes| data.extend_from_slice(bytes))
    }

    /// Like [`ChunkedDecoder::feed`], handing each run of chunk data to `data`
    /// in order (a chunk split across feeds arrives in several runs).
    pub fn feed_with(
        &mut self,
        buf: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<ChunkProgress, ChunkError> {
        let mut pos = 0;
        while let Some(rest) = buf.get(pos..).filter(|rest| !rest.is_empty()) {
            match self.state {
                State::Done => return Ok(ChunkProgress::Done { consumed: pos }),
                State::Failed(e) => return Err(e),
                State::Data { remaining } => {
                    let skipped =
                        usize::try_from(remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    data(rest.get(..skipped).unwrap_or_default());
                    // `skipped` is at most `remaining`, so this cannot underflow.
                    let remaining = remaining - skipped as u64;
                    self.state = if remaining == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining }
                    };
                    pos += skipped;
                }
                _ => {
                    let Some(&byte) = rest.first() else { break };
                    match self.step(byte) {
                        Ok(state) => self.state = state,
                        Err(e) => {
                            self.state = State::Failed(e);
                            return Err(e);
                        }
                    }
                    pos += 1;
                }
            }
        }
        match self.state {
            State::Done => Ok(ChunkProgress::Done { consumed: pos }),
            State::Failed(e) => Err(e),
            _ => Ok(ChunkProgress::NeedMore { consumed: pos }),
        }
    }

    /// Advances the line-oriented states by one byte.
    fn step(&mut self, byte: u8) -> Result<State, ChunkError> {
        use ChunkError::{InvalidChunkFraming, InvalidChunkSize};
        match self.state {
            State::Size { size, digits } => {
                self.count_size_line_byte()?;
                if let Some(digit) = char::from(byte).to_digit(16) {
                    let size = size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(digit)))
                        .ok_or(InvalidChunkSize)?;
                    // Refuse as soon as the size is known to be too big,
                    // before any of its data is read.
                    if size > self.body_bytes_max.saturating_sub(self.body_bytes) {
                        return Err(ChunkError::BodyTooLarge);
                    }
                    return Ok(State::Size { size, digits: true });
                }
                match (byte, digits) {
                    (b';', true) => Ok(State::Extension { size }),
                    (b' ' | b'\t', true) => Ok(State::SizeSpace { size }),
                    (b'\r', true) => Ok(State::SizeLf { size }),
                    (b'\n', true) => Err(InvalidChunkFraming),
                    _ => Err(InvalidChunkSize),
                }
            }
            State::SizeSpace { size } => {
                self.count_size_line_byte()?;
                match byte {
                    b' ' | b'\t' => Ok(State::SizeSpace { size }),
                    b';' => Ok(State::Extension { size }),
                    _ => Err(InvalidChunkFraming),
                }
            }
            State::Extension { size } => {
                self.count_size_line_byte()?;
                self.extension_bytes += 1;
                if self.extension_bytes > EXTENSION_BYTES_MAX {
                    return Err(InvalidChunkFraming);
                }
                match byte {
                    b'\r' => Ok(State::SizeLf { size }),
                    b'\t' => Ok(State::Extension { size }),
                    0..=0x1f | 0x7f => Err(InvalidChunkFraming),
                    _ => Ok(State::Extension { size }),
                }
            }
            State::SizeLf { size } => match byte {
                b'\n' => {
                    self.size_line_bytes = 0;
                    self.body_bytes = self.body_bytes.saturating_add(size);
                    Ok(if size == 0 {
                        State::TrailerLineStart
                    } else {
                        State::Data { remaining: size }
                    })
                }
                _ => Err(InvalidChunkFraming),
            },
            State::DataCr => match byte {
                b'\r' => Ok(State::DataLf),
                _ => Err(InvalidChunkFraming),
            },
            State::DataLf => match byte {
                b'\n' => Ok(State::Size {
                    size: 0,
                    digits: false,
                }),
                _ => Err(InvalidChunkFraming),
            },
            State::TrailerLineStart | State::TrailerLine | State::TrailerLf | State::EndLf => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > TRAILER_BYTES_MAX {
                    return Err(InvalidChunkFraming);
                }
                match (self.state, byte) {
                    (State::TrailerLineStart, b'\r') => Ok(State::EndLf),
                    (State::EndLf, b'\n') => Ok(State::Done),
                    (State::TrailerLf, b'\n') => Ok(State::TrailerLineStart),
                    (State::TrailerLine, b'\r') => Ok(State::TrailerLf),
                    (State::TrailerLineStart | State::TrailerLine, b'\n') => {
                        Err(InvalidChunkFraming)
                    }
                    (State::TrailerLineStart | State::TrailerLine, _) => Ok(State::TrailerLine),
                    _ => Err(InvalidChunkFraming),
                }
            }
            // `feed` handles these without calling `step`; staying put keeps
            // this total without a panic.
            State::Data { .. } | State::Done | State::Failed(_) => Ok(self.state),
        }
    }

    fn count_size_line_byte(&mut self) -> Result<(), ChunkError> {
        self.size_line_bytes += 1;
        if self.size_line_bytes > SIZE_LINE_BYTES_MAX {
            return Err(ChunkError::InvalidChunkFraming);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u64 = 65536;

    fn whole(body: &[u8], max: u64) -> Result<ChunkProgress, ChunkError> {
        ChunkedDecoder::new(max).feed(body)
    }

    /// Feeds one byte at a time and sums what was consumed, stopping at the
    /// first `Done` or error, so it can be compared with `whole`.
    fn bytewise(body: &[u8], max: u64) -> Result<ChunkProgress, ChunkError> {
        let mut decoder = ChunkedDecoder::new(max);
        let mut consumed = 0;
        for byte in body.chunks(1) {
            match decoder.feed(byte)? {
                ChunkProgress::NeedMore { consumed: c } => consumed += c,
                ChunkProgress::Done { consumed: c } => {
                    return Ok(ChunkProgress::Done {
                        consumed: consumed + c,
                    });
                }
            }
        }
        Ok(ChunkProgress::NeedMore { consumed })
    }

    const VALID: &[&[u8]] = &[
        b"0\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"A\r\n0123456789\r\n000\r\n\r\n",
        b"a;name=val\r\n0123456789\r\n0;last\r\n\r\n",
        b"3 ;x=\"q d\"\r\nabc\r\n0\r\n\r\n",
        b"3\r\n\r\n\r\r\n0\r\nX-Trailer: 1\r\nOther: two\r\n\r\n",
        b"00000000000000000001\r\nx\r\n0\r\n\r\n",
    ];

    #[test]
    fn valid_bodies_are_done_at_their_end() {
        for body in VALID {
            let expected = Ok(ChunkProgress::Done {
                consumed: body.len(),
            });
            assert_eq!(
                whole(body, MAX),
                expected,
                "{:?}",
                body.escape_ascii().to_string()
            );
            assert_eq!(bytewise(body, MAX), expected);
        }
    }

    #[test]
    fn feed_into_returns_the_data_across_splits() {
        let body = b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nT: 1\r\n\r\nNEXT";
        for split in 0..body.len() - 4 {
            let (a, b) = body.split_at(split);
            let mut decoder = ChunkedDecoder::new(MAX);
            let mut data = Vec::new();
            decoder.feed_into(a, &mut data).unwrap();
            assert_eq!(
                decoder.feed_into(b, &mut data),
                Ok(ChunkProgress::Done {
                    consumed: b.len() - 4
                })
            );
            assert_eq!(data, b"hello world", "split {split}");
        }
    }

    #[test]
    fn every_split_point_agrees_with_whole_feeding() {
        for body in VALID {
            for split in 0..body.len() {
                let (a, b) = body.split_at(split);
                let mut decoder = ChunkedDecoder::new(MAX);
                let ChunkProgress::NeedMore { consumed } = decoder.feed(a).unwrap() else {
                    panic!("done early at split {split}");
                };
                assert_eq!(consumed, a.len());
                assert_eq!(
                    decoder.feed(b),
                    Ok(ChunkProgress::Done { consumed: b.len() })
                );
            }
        }
    }

    #[test]
    fn proper_prefixes_need_more() {
        for body in VALID {
            for end in 0..body.len() {
                let prefix = &body[..end];
                assert_eq!(
                    whole(prefix, MAX),
                    Ok(ChunkProgress::NeedMore { consumed: end })
                );
            }
        }
    }

    #[test]
    fn pipelined_bytes_after_the_body_are_not_consumed() {
        let body = b"2\r\nhi\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let mut decoder = ChunkedDecoder::new(MAX);
        assert_eq!(decoder.feed(body), Ok(ChunkProgress::Done { consumed: 12 }));
        assert_eq!(
            decoder.feed(b"more"),
            Ok(ChunkProgress::Done { consumed: 0 })
        );
        assert_eq!(
            bytewise(body, MAX),
            Ok(ChunkProgress::Done { consumed: 12 })
        );
    }

    #[test]
    fn rejections() {
        use ChunkError::*;
        let cases: &[(&[u8], u64, ChunkError)] = &[
            (b"g\r\n", MAX, InvalidChunkSize),
            (b"\r\n", MAX, InvalidChunkSize),
            (b";ext\r\n", MAX, InvalidChunkSize),
            (b"-1\r\n", MAX, InvalidChunkSize),
            (b"0x10\r\n", MAX, InvalidChunkSize),
            (b"1g\r\n", MAX, InvalidChunkSize),
            (b"10000000000000000\r\n", u64::MAX, InvalidChunkSize),
            (b"FFFFFFFFFFFFFFFF0\r\n", u64::MAX, InvalidChunkSize),
            (b"10001\r\n", MAX, BodyTooLarge),
            (b"5 \r\nhello\r\n", MAX, InvalidChunkFraming),
            (b"5\nhello\r\n", MAX, InvalidChunkFraming),
            (b"5\r\r\nhello\r\n", MAX, InvalidChunkFraming),
            (b"5\r\nhelloX\r\n", MAX, InvalidChunkFraming),
            (b"5\r\nhello\n0\r\n\r\n", MAX, InvalidChunkFraming),
            (b"5;a\nb\r\nhello\r\n", MAX, InvalidChunkFraming),
            (b"5;a\0\r\nhello\r\n", MAX, InvalidChunkFraming),
            (b"0\r\nX: 1\n\r\n", MAX, InvalidChunkFraming),
            (b"0\r\nX: 1\rY\r\n\r\n", MAX, InvalidChunkFraming),
            (b"0\r\n\n", MAX, InvalidChunkFraming),
            (b"0\r\n\rX", MAX, InvalidChunkFraming),
        ];
        for &(body, max, expected) in cases {
            assert_eq!(
                whole(body, max),
                Err(expected),
                "{:?}",
                body.escape_ascii().to_string()
            );
            assert_eq!(bytewise(body, max), Err(expected));
        }
    }

    #[test]
    fn body_limit_counts_all_chunks() {
        let limit = 10;
        assert!(matches!(
            whole(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", limit),
            Ok(ChunkProgress::Done { .. })
        ));
        assert_eq!(
            whole(b"5\r\nhello\r\n5\r\nworld\r\n1\r\n", limit),
            Err(ChunkError::BodyTooLarge)
        );
    }

    #[test]
    fn long_lines_are_refused() {
        let mut size_line = b"1;".to_vec();
        size_line.resize(SIZE_LINE_BYTES_MAX + 1, b'x');
        assert_eq!(whole(&size_line, MAX), Err(ChunkError::InvalidChunkFraming));

        let mut zeros = vec![b'0'; SIZE_LINE_BYTES_MAX + 1];
        zeros.push(b'1');
        assert_eq!(whole(&zeros, MAX), Err(ChunkError::InvalidChunkFraming));

        let mut trailer = b"0\r\nX: ".to_vec();
        trailer.resize(TRAILER_BYTES_MAX + 10, b'y');
        assert_eq!(whole(&trailer, MAX), Err(ChunkError::InvalidChunkFraming));

        let mut many_trailers = b"0\r\n".to_vec();
        while many_trailers.len() < TRAILER_BYTES_MAX + 10 {
            many_trailers.extend_from_slice(b"X: y\r\n");
        }
        assert_eq!(
            whole(&many_trailers, MAX),
            Err(ChunkError::InvalidChunkFraming)
        );

        let mut many_extensions = Vec::new();
        while many_extensions.len() < 2 * EXTENSION_BYTES_MAX {
            many_extensions.extend_from_slice(b"1;aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nx\r\n");
        }
        assert_eq!(
            whole(&many_extensions, MAX),
            Err(ChunkError::InvalidChunkFraming)
        );
    }

    #[test]
    fn feed_with_hands_over_the_data_in_any_split() {
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut decoder = ChunkedDecoder::new(MAX);
            let mut data = Vec::new();
            let (a, b) = body.split_at(split);
            decoder.feed_with(a, |d| data.extend_from_slice(d)).unwrap();
            let done = decoder.feed_with(b, |d| data.extend_from_slice(d));
            assert_eq!(done, Ok(ChunkProgress::Done { consumed: b.len() }));
            assert_eq!(data, b"hello world", "split at {split}");
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut decoder = ChunkedDecoder::new(MAX);
        assert_eq!(decoder.feed(b"z"), Err(ChunkError::InvalidChunkSize));
        assert_eq!(
            decoder.feed(b"0\r\n\r\n"),
            Err(ChunkError::InvalidChunkSize)
        );
    }

    #[test]
    fn default_uses_the_default_body_limit() {
        let mut decoder = ChunkedDecoder::default();
        assert_eq!(
            decoder.feed(b"10000\r\n"),
            Ok(ChunkProgress::NeedMore { consumed: 7 })
        );
        let mut decoder = ChunkedDecoder::default();
        assert_eq!(decoder.feed(b"10001"), Err(ChunkError::BodyTooLarge));
    }

    #[test]
    fn messages_display() {
        for e in [
            ChunkError::InvalidChunkSize,
            ChunkError::InvalidChunkFraming,
            ChunkError::BodyTooLarge,
        ] {
            assert_eq!(e.to_string(), e.message());
        }
    }

    fn encode(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    proptest! {
        #[test]
        fn encoded_bodies_end_exactly_in_any_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            splits in proptest::collection::vec(any::<usize>(), 0..6),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let body = encode(&chunks);
            let mut input = body.clone();
            input.extend_from_slice(&tail);
            let mut cuts: Vec<usize> = splits.iter().map(|s| s % (input.len() + 1)).collect();
            cuts.push(input.len());
            cuts.sort_unstable();
            let mut decoder = ChunkedDecoder::new(u64::MAX);
            let mut start = 0;
            let mut total = 0;
            let mut done = false;
            for cut in cuts {
                match decoder.feed(&input[start..cut]) {
                    Ok(ChunkProgress::NeedMore { consumed }) => total += consumed,
                    Ok(ChunkProgress::Done { consumed }) => { total += consumed; done = true; break; }
                    Err(e) => prop_assert!(false, "error {e:?}"),
                }
                start = cut;
            }
            prop_assert!(done);
            prop_assert_eq!(total, body.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_agree_bytewise(
            input in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'a')],
                0..400,
            ),
            max in any::<u64>(),
        ) {
            prop_assert_eq!(whole(&input, max), bytewise(&input, max));
        }
    }
}
