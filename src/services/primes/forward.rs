//! A follower's task requests, forwarded to the leader (`--store etcd`):
//! `POST /internal/v1/tasks`, authenticated with the cluster secret like
//! the steps' relay and not part of the public API. Sans-IO: the bodies a
//! follower sends and the leader reads, and the answers back.
//!
//! The leader holds the cluster's tasks (`store::etcd::records`), so every
//! rule that needs all of them (fair shares, idempotency keys, who may
//! cancel, one deliverer of a callback) is decided there. A follower checks
//! what needs no state (the body, the allow-list, its own rate limit), asks
//! the leader, and renders the public reply itself from the task's record,
//! with the result from its own prime table: a result never crosses
//! between nodes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::service::{CancelRefused, Refused};
use super::task::{IdempotencyKey, Owner, TaskId};

pub const FORWARD_PATH: &str = "/internal/v1/tasks";
/// An ask's body at most: a callback URL and about a hundred bytes more.
pub const ASK_BYTES_MAX: usize = 4096;

/// What a follower asks the leader, for one of its clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    Post {
        owner: Owner,
        n: u64,
        callback_url: Option<String>,
        idempotency: Option<IdempotencyKey>,
    },
    /// The task, once final or after `wait` seconds.
    Get {
        id: TaskId,
        wait: u64,
    },
    Delete {
        id: TaskId,
        owner: Owner,
    },
}

/// Why the leader did not do what was asked: the same refusals a node
/// alone makes, so the follower answers exactly as the leader would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Room(Refused),
    IdempotencyKeyReused,
    NotFound,
    Cancel(CancelRefused),
    /// The leader's `--callback-allow` refuses the URL.
    CallbackNotAllowed,
}

const REFUSALS: [(Refusal, &str); 11] = [
    (Refusal::Room(Refused::StoreFull), "store_full"),
    (Refusal::Room(Refused::QueueFull), "queue_full"),
    (Refusal::Room(Refused::ClientShare), "client_share"),
    (Refusal::Room(Refused::CallbackBacklog), "callback_backlog"),
    (Refusal::IdempotencyKeyReused, "idempotency_key_reused"),
    (Refusal::NotFound, "not_found"),
    (Refusal::Cancel(CancelRefused::NotOwner), "not_owner"),
    (Refusal::Cancel(CancelRefused::Running), "running"),
    (Refusal::Cancel(CancelRefused::Done), "done"),
    (Refusal::Cancel(CancelRefused::Failed), "failed"),
    (Refusal::CallbackNotAllowed, "callback_not_allowed"),
];

/// The leader's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The task's record as the leader holds it (durable), whether a sieve
    /// covering it runs there, and whether a POST was a replay.
    Task {
        seq: u64,
        record: Vec<u8>,
        processing: bool,
        replayed: bool,
    },
    Refused(Refusal),
}

pub fn ask_body(ask: &Ask) -> Vec<u8> {
    let id_text = |id: &TaskId| {
        let mut text = Vec::new();
        id.write(&mut text);
        String::from_utf8(text).unwrap_or_default()
    };
    let body = match ask {
        Ask::Post {
            owner,
            n,
            callback_url,
            idempotency,
        } => json!({
            "op": "post",
            "owner": B64.encode(owner.bytes()),
            "n": n.to_string(),
            "callback_url": callback_url,
            "idempotency": idempotency.map(|k| B64.encode(k.bytes())),
        }),
        Ask::Get { id, wait } => json!({ "op": "get", "id": id_text(id), "wait": wait }),
        Ask::Delete { id, owner } => json!({
            "op": "delete", "id": id_text(id), "owner": B64.encode(owner.bytes()),
        }),
    };
    body.to_string().into_bytes()
}

/// Reads an ask; the error says what is wrong with it.
pub fn read_ask(body: &[u8]) -> Result<Ask, &'static str> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "a JSON object")?;
    let bytes = |field: &str| value[field].as_str().and_then(|t| B64.decode(t).ok());
    let owner = || {
        bytes("owner")
            .and_then(|b| Owner::from_bytes(&b))
            .ok_or("an owner: 17 bytes in base64")
    };
    let id = || {
        value["id"]
            .as_str()
            .and_then(|t| TaskId::parse(t.as_bytes()))
            .ok_or("a task id")
    };
    match value["op"].as_str() {
        Some("post") => Ok(Ask::Post {
            owner: owner()?,
            n: value["n"]
                .as_str()
                .and_then(|n| n.parse().ok())
                .ok_or("n: a decimal in a string")?,
            callback_url: match &value["callback_url"] {
                Value::Null => None,
                Value::String(url) if url.len() <= ASK_BYTES_MAX => Some(url.clone()),
                _ => return Err("callback_url: a string or null"),
            },
            idempotency: match &value["idempotency"] {
                Value::Null => None,
                _ => Some(
                    bytes("idempotency")
                        .and_then(|b| IdempotencyKey::from_bytes(&b))
                        .ok_or("idempotency: 16 bytes in base64, or null")?,
                ),
            },
        }),
        Some("get") => Ok(Ask::Get {
            id: id()?,
            wait: value["wait"]
                .as_u64()
                .filter(|w| *w <= 30)
                .ok_or("wait: 0 to 30 seconds")?,
        }),
        Some("delete") => Ok(Ask::Delete {
            id: id()?,
            owner: owner()?,
        }),
        _ => Err("op: post, get or delete"),
    }
}

pub fn reply_body(reply: &Reply) -> Vec<u8> {
    let body = match reply {
        Reply::Task {
            seq,
            record,
            processing,
            replayed,
        } => json!({
            "seq": seq.to_string(),
            "record": B64.encode(record),
            "processing": processing,
            "replayed": replayed,
        }),
        Reply::Refused(refusal) => {
            let code = REFUSALS
                .iter()
                .find(|(r, _)| r == refusal)
                .map_or("unknown", |(_, code)| code);
            json!({ "refused": code })
        }
    };
    body.to_string().into_bytes()
}

/// Reads the leader's answer to an ask (a 200; anything else is the
/// transport's failure: no leader, a wrong secret).
pub fn read_reply(status: u16, body: &[u8]) -> Result<Reply, String> {
    if status != 200 {
        return Err(format!("the leader answered {status}"));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|_| "the leader's answer is not JSON".to_owned())?;
    if let Some(code) = value["refused"].as_str() {
        return REFUSALS
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(refusal, _)| Reply::Refused(*refusal))
            .ok_or_else(|| format!("the leader refused with an unknown code {code}"));
    }
    let seq = value["seq"].as_str().and_then(|s| s.parse().ok());
    let record = value["record"].as_str().and_then(|r| B64.decode(r).ok());
    let (Some(seq), Some(record)) = (seq, record) else {
        return Err("the leader's answer holds no task record".to_owned());
    };
    Ok(Reply::Task {
        seq,
        record,
        processing: value["processing"].as_bool().unwrap_or(false),
        replayed: value["replayed"].as_bool().unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::name_digest;
    use crate::services::primes::task::ID_BYTES;

    #[test]
    fn asks_and_replies_round_trip() {
        let owner = Owner::key(name_digest("alice"));
        let id = TaskId::from_bytes([3; ID_BYTES]);
        for ask in [
            Ask::Post {
                owner,
                n: 1_000_000,
                callback_url: Some("http://127.0.0.1:9/hook".into()),
                idempotency: IdempotencyKey::new(owner, b"k-1"),
            },
            Ask::Post {
                owner: Owner::addr("10.0.0.1".parse().unwrap()),
                n: 5,
                callback_url: None,
                idempotency: None,
            },
            Ask::Get { id, wait: 30 },
            Ask::Delete { id, owner },
        ] {
            assert_eq!(read_ask(&ask_body(&ask)), Ok(ask));
        }
        for (refusal, _) in REFUSALS {
            let reply = Reply::Refused(refusal);
            assert_eq!(read_reply(200, &reply_body(&reply)), Ok(reply));
        }
        let task = Reply::Task {
            seq: 7,
            record: vec![0, 1, 2, 255],
            processing: true,
            replayed: false,
        };
        assert_eq!(read_reply(200, &reply_body(&task)), Ok(task));
    }

    #[test]
    fn bad_asks_and_answers_are_refused() {
        for bad in [
            &b"nope"[..],
            br#"{"op":"post","n":"5"}"#,
            br#"{"op":"get","id":"short","wait":1}"#,
            br#"{"op":"get","id":"AAAAAAAAAAAAAAAAAAAAAA","wait":31}"#,
            br#"{"op":"shred"}"#,
        ] {
            assert!(read_ask(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(read_reply(421, b"{}").is_err());
        assert!(read_reply(200, br#"{"refused":"who knows"}"#).is_err());
        assert!(read_reply(200, br#"{"seq":"1"}"#).is_err());
    }
}
