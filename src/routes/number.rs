//! The one writer of number replies, shared by the stepper and /v1/fib: a
//! Fibonacci value keyed by its index, as text or JSON, its big digits shared
//! rather than copied.

use crate::base::digits;
use crate::http::accept::Format;
use crate::http::date::HttpDate;
use crate::http::message::Persistence;
use crate::http::request_id::RequestId;
use crate::http::response::{ContentType, Head, Status};
use crate::reply::output::Output;
use crate::services::fib::Value;

/// What the stepper's and /v1/fib's replies have in common: a Fibonacci
/// value, keyed by its index, as text or JSON.
pub(super) struct NumberReply<'a> {
    pub(super) request_id: &'a RequestId,
    pub(super) json_key: &'static [u8],
    pub(super) key: u64,
    pub(super) value: &'a Value,
    pub(super) format: Format,
    pub(super) head_only: bool,
    pub(super) persistence: Persistence,
}

pub(super) fn write_number(
    out: &mut Output,
    date: &HttpDate,
    reply: &NumberReply<'_>,
    headers: impl FnOnce(&mut Head<'_>),
) {
    let (content_type, prefix_len, suffix): (ContentType, usize, &[u8]) = match reply.format {
        Format::Text => (ContentType::Text, 0, b"\n"),
        Format::Json => (
            ContentType::Json,
            reply.json_key.len() + digits::u128_len(u128::from(reply.key)) + JSON_VALUE.len(),
            b"\"}\n",
        ),
    };
    let length = prefix_len + reply.value.decimal_len() + suffix.len();
    let mut head = Head::start(out.buf(), Status::OK, date, reply.request_id);
    head.content_type(content_type);
    headers(&mut head);
    let buf = head.finish(Status::OK, length, reply.persistence);
    if reply.head_only {
        return;
    }
    if reply.format == Format::Json {
        buf.extend_from_slice(reply.json_key);
        digits::write_u64(buf, reply.key);
        buf.extend_from_slice(JSON_VALUE);
    }
    write_value(out, reply.value);
    out.extend(suffix);
}

fn write_value(out: &mut Output, value: &Value) {
    match value {
        Value::Small(v) => digits::write_u128(out.buf(), *v),
        Value::Big(shared) => out.push_shared(shared.clone()),
    }
}

pub(super) const JSON_INDEX: &[u8] = b"{\"index\": ";
pub(super) const JSON_N: &[u8] = b"{\"n\": ";
const JSON_VALUE: &[u8] = b", \"value\": \"";
