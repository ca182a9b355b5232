//! What a primes request may say: the POST body `{"n": N}` with an optional
//! `"callback_url"` (JSON, read with serde_json), its Content-Type, the
//! callback URL checked against the allow-list, and `?wait=SECONDS` on a
//! GET. Each refusal names what to change.

use std::net::SocketAddr;

use serde_json::Value;

use super::callback::CALLBACK_URL_MAX;
use crate::access::destinations::{Destinations, NotAllowed};
use crate::http::query::{self, Lookup};
use crate::http::trim_ows;
use crate::net::upstream::HttpUrl;

/// Bytes a task body may have; `{"n": 1000000}` needs 14, a callback URL
/// up to 1024 more.
pub const BODY_BYTES_MAX: usize = 4096;

/// A task body, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskBody {
    pub n: u64,
    /// As given; checked against the allow-list by [`admit_callback`].
    pub callback_url: Option<String>,
}
/// The longest `?wait` a client may ask for, in seconds.
pub const WAIT_SECS_MAX: u64 = 30;

/// Why a task body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskBodyError {
    NotJson,
    NotAnObject,
    MissingN,
    /// A string, a fraction, an exponent, a boolean, null, an array…
    NotAnInteger,
    Negative,
    Zero,
    AboveMax,
    /// `callback_url` is there but not a string.
    CallbackNotAString,
    CallbackTooLong,
}

impl TaskBodyError {
    /// Text for the client; the real limit is in the error's `max_n`.
    pub fn message(self) -> &'static str {
        match self {
            TaskBodyError::NotJson => {
                "the body is not valid JSON; send {\"n\": N} with N a whole number from 1 to max_n"
            }
            TaskBodyError::NotAnObject => {
                "the body must be a JSON object: {\"n\": N} with N a whole number from 1 to max_n"
            }
            TaskBodyError::MissingN => {
                "the body has no \"n\"; send {\"n\": N} with N a whole number from 1 to max_n"
            }
            TaskBodyError::NotAnInteger => {
                "n must be a JSON number written as a whole number (no quotes, fraction or \
                 exponent) from 1 to max_n"
            }
            TaskBodyError::Negative => {
                "n must not be negative; it is a whole number from 1 to max_n"
            }
            TaskBodyError::Zero => "n must be at least 1: the task asks for the first n primes",
            TaskBodyError::AboveMax => {
                "n is above this server's limit; it must be a whole number from 1 to max_n"
            }
            TaskBodyError::CallbackNotAString => {
                "callback_url must be a string: the http:// URL fibd POSTs the settled task to"
            }
            TaskBodyError::CallbackTooLong => "callback_url must be at most 1024 bytes long",
        }
    }

    /// Well-formed requests the server will not do (422): n out of range, or
    /// a callback_url it cannot take.
    pub fn is_unprocessable(self) -> bool {
        matches!(
            self,
            TaskBodyError::Zero
                | TaskBodyError::AboveMax
                | TaskBodyError::CallbackNotAString
                | TaskBodyError::CallbackTooLong
        )
    }
}

/// Why a `callback_url` is refused (422).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackUrlError {
    /// Not an `http://HOST[:PORT]/PATH` URL; the text says what is wrong.
    Malformed(&'static str),
    /// The server takes no callbacks.
    Off,
    /// Its host is not in the allow-list.
    NotAllowed,
}

impl CallbackUrlError {
    pub fn message(self) -> &'static str {
        match self {
            CallbackUrlError::Malformed(_) => {
                "callback_url must be an http://HOST[:PORT]/PATH URL (no https, user info or \
                 fragment; put a local TLS proxy in front of an HTTPS receiver)"
            }
            CallbackUrlError::Off => {
                "this server takes no callback_url: its operator has not set --callback-allow"
            }
            CallbackUrlError::NotAllowed => {
                "callback_url's host is not in this server's --callback-allow list; ask its \
                 operator to allow it, or poll the task (GET with ?wait) instead"
            }
        }
    }
}

/// Where a callback URL goes, if the allow-list admits it.
pub fn admit_callback(url: &str, allow: &Destinations) -> Result<SocketAddr, CallbackUrlError> {
    let url = HttpUrl::parse(url).map_err(CallbackUrlError::Malformed)?;
    allow.admit(&url).map_err(|refused| match refused {
        NotAllowed::NoList => CallbackUrlError::Off,
        NotAllowed::Host => CallbackUrlError::NotAllowed,
    })
}

/// n and the callback URL from a task body.
pub fn parse_body(body: &[u8], max_n: u64) -> Result<TaskBody, TaskBodyError> {
    let mut value: Value = serde_json::from_slice(body).map_err(|_| TaskBodyError::NotJson)?;
    let object = value.as_object_mut().ok_or(TaskBodyError::NotAnObject)?;
    // Taken out of the tree: the URL's string moves, it is not copied.
    let callback_url = match object.remove("callback_url") {
        None => None,
        Some(Value::String(url)) if url.len() > CALLBACK_URL_MAX => {
            return Err(TaskBodyError::CallbackTooLong);
        }
        Some(Value::String(url)) => Some(url),
        Some(_) => return Err(TaskBodyError::CallbackNotAString),
    };
    let n = parse_n(object.get("n").ok_or(TaskBodyError::MissingN)?, max_n)?;
    Ok(TaskBody { n, callback_url })
}

fn parse_n(n: &Value, max_n: u64) -> Result<u64, TaskBodyError> {
    let Value::Number(number) = n else {
        return Err(TaskBodyError::NotAnInteger);
    };
    let n = if let Some(n) = number.as_u64() {
        n
    } else if number.is_i64() {
        return Err(TaskBodyError::Negative);
    } else {
        // A float: huge integers land here too (serde_json has no big
        // integers), and so do fractions and exponents.
        let f = number.as_f64().unwrap_or(f64::NAN);
        return Err(if f >= 2f64.powi(63) {
            TaskBodyError::AboveMax
        } else if f <= -(2f64.powi(63)) {
            TaskBodyError::Negative
        } else {
            TaskBodyError::NotAnInteger
        });
    };
    match n {
        0 => Err(TaskBodyError::Zero),
        n if n > max_n => Err(TaskBodyError::AboveMax),
        n => Ok(n),
    }
}

/// Whether a Content-Type names JSON (`application/json`, any parameters).
pub fn is_json(content_type: Option<&[u8]>) -> bool {
    let Some(value) = content_type else {
        return false;
    };
    let essence = value.split(|&b| b == b';').next().unwrap_or_default();
    trim_ows(essence).eq_ignore_ascii_case(b"application/json")
}

/// `?wait=SECONDS` (0 to 30; 0 when absent); other parameters are refused.
pub fn parse_wait(query_text: &[u8]) -> Result<u64, &'static str> {
    const BAD: &str = "wait must be a whole number of seconds from 0 to 30, given once; \
                       it is the only parameter a task takes";
    if query::has_unknown(query_text, &["wait"]).is_some() {
        return Err(BAD);
    }
    match query::get(query_text, "wait") {
        Lookup::Missing => Ok(0),
        Lookup::Repeated => Err(BAD),
        Lookup::Present(raw) => {
            let digits = !raw.is_empty() && raw.len() <= 3 && raw.iter().all(u8::is_ascii_digit);
            let secs = std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok());
            match secs {
                Some(secs) if digits && secs <= WAIT_SECS_MAX => Ok(secs),
                _ => Err(BAD),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskBodyError::*;

    #[test]
    fn bodies() {
        let max = 1000;
        let n = |n| TaskBody {
            n,
            callback_url: None,
        };
        assert_eq!(parse_body(br#"{"n": 100}"#, max), Ok(n(100)));
        assert_eq!(
            parse_body(br#" {"n":1000, "extra": [1]} "#, max),
            Ok(n(1000))
        );
        assert_eq!(
            parse_body(br#"{"n": 7, "callback_url": "http://h/x"}"#, max),
            Ok(TaskBody {
                n: 7,
                callback_url: Some("http://h/x".into())
            })
        );
        let long = format!(
            r#"{{"n": 7, "callback_url": "http://h/{}"}}"#,
            "x".repeat(1020)
        );
        for (body, error) in [
            (&br#"{"n": 100"#[..], NotJson),
            (b"", NotJson),
            (b"n=100", NotJson),
            (b"[100]", NotAnObject),
            (b"100", NotAnObject),
            (br#"{}"#, MissingN),
            (br#"{"N": 5}"#, MissingN),
            (br#"{"n": "100"}"#, NotAnInteger),
            (br#"{"n": 1.5}"#, NotAnInteger),
            (br#"{"n": 100.0}"#, NotAnInteger),
            (br#"{"n": 1e2}"#, NotAnInteger),
            (br#"{"n": null}"#, NotAnInteger),
            (br#"{"n": true}"#, NotAnInteger),
            (br#"{"n": -1}"#, Negative),
            (br#"{"n": -1e300}"#, Negative),
            (br#"{"n": 0}"#, Zero),
            (br#"{"n": 1001}"#, AboveMax),
            (br#"{"n": 18446744073709551616}"#, AboveMax),
            (br#"{"n": 1e300}"#, AboveMax),
            (br#"{"n": 1, "callback_url": 5}"#, CallbackNotAString),
            (br#"{"n": 1, "callback_url": null}"#, CallbackNotAString),
            (long.as_bytes(), CallbackTooLong),
        ] {
            assert_eq!(
                parse_body(body, max),
                Err(error),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn callback_urls_need_the_allow_list() {
        let allow = Destinations::resolve(&["127.0.0.1".into()]).unwrap();
        assert_eq!(
            admit_callback("http://127.0.0.1:9000/hook", &allow),
            Ok("127.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(
            admit_callback("http://10.0.0.1/", &allow),
            Err(CallbackUrlError::NotAllowed)
        );
        assert!(matches!(
            admit_callback("https://127.0.0.1/", &allow),
            Err(CallbackUrlError::Malformed(_))
        ));
        assert_eq!(
            admit_callback("http://127.0.0.1/", &Destinations::default()),
            Err(CallbackUrlError::Off)
        );
    }

    #[test]
    fn content_types() {
        assert!(is_json(Some(b"application/json")));
        assert!(is_json(Some(b"Application/JSON; charset=utf-8")));
        assert!(!is_json(None));
        assert!(!is_json(Some(b"text/plain")));
        assert!(!is_json(Some(b"application/x-www-form-urlencoded")));
        assert!(!is_json(Some(b"application/jsonx")));
    }

    #[test]
    fn waits() {
        assert_eq!(parse_wait(b""), Ok(0));
        assert_eq!(parse_wait(b"wait=0"), Ok(0));
        assert_eq!(parse_wait(b"wait=30"), Ok(30));
        for bad in [
            &b"wait=31"[..],
            b"wait=-1",
            b"wait=",
            b"wait=1.5",
            b"wait=1&wait=2",
            b"x=1",
            b"wait=0001",
        ] {
            assert!(parse_wait(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
