//! etcd's v3 JSON gateway, as fibd's cluster mode speaks it: the request
//! bodies for the three calls it makes and the readers of their answers.
//! Sans-IO: bytes in, bytes out; `cluster` decides when to call, and the
//! outbound client (`crate::net::upstream`) carries the bytes.
//!
//! The gateway (etcd 3.4 paths, `/v3/kv/...`) takes and gives keys and
//! values in base64 and every int64 as a JSON string; proto3 leaves a field
//! out when it holds its default (`succeeded: false`, an empty `kvs`).
//!
//! Keys per cluster name:
//! - `/fibd/<cluster>/index`: the stepper's index, in ASCII decimal (absent
//!   means 0, with mod_revision 0, which a compare matches);
//! - `/fibd/<cluster>/writers/<node>`: the tag of the last step batch this
//!   node committed, written in the same transaction as the index, so a
//!   transaction whose answer was lost can be told applied or not by reading
//!   it back;
//! - `/fibd/<cluster>/losing/<node>`: rewritten by a node each time it loses
//!   the compare. A winner's transaction lists the ones rewritten in the
//!   last [`LOSING_WINDOW`] revisions, and a winner that sees another
//!   node's pauses before its next attempt: a node closer to etcd's leader
//!   would otherwise win every race and starve the others.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

pub const RANGE_PATH: &str = "/v3/kv/range";
pub const TXN_PATH: &str = "/v3/kv/txn";
/// How recent, in etcd revisions, a lost race must be for a winner to yield.
pub const LOSING_WINDOW: u64 = 32;

/// A key's value and the revision that last changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revisioned {
    pub index: u64,
    /// 0 when the key does not exist.
    pub mod_revision: u64,
}

/// What the transaction of a step batch answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnAnswer {
    /// The compare held: the new index is stored, at this revision;
    /// `others_losing`: another node lost a race lately.
    Committed { revision: u64, others_losing: bool },
    /// Another writer moved the index first: the index as it is now, and
    /// this node's writer tag as it is now.
    Moved {
        current: Revisioned,
        writer: Option<String>,
    },
}

/// An answer etcd gave that fibd cannot use: an error status, or a body
/// that is not the shape this file expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    Status { status: u16, message: String },
    Malformed(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Status { status, message } => write!(f, "etcd answered {status}: {message}"),
            WireError::Malformed(what) => write!(f, "etcd's answer is malformed: {what}"),
        }
    }
}

/// The two keys of one cluster name, base64-encoded once.
#[derive(Clone, Debug)]
pub struct Keys {
    index: String,
    writer: String,
    losing: String,
    losing_prefix: String,
    /// The prefix's range end: the prefix with its last byte plus one.
    losing_end: String,
    /// This node's own losing key, unencoded, to tell it from the others'.
    own_losing: Vec<u8>,
}

impl Keys {
    pub fn new(cluster_name: &str, node_name: &str) -> Keys {
        let prefix = format!("/fibd/{cluster_name}/losing/");
        let own_losing = format!("{prefix}{node_name}").into_bytes();
        Keys {
            index: B64.encode(index_key(cluster_name)),
            writer: B64.encode(format!("/fibd/{cluster_name}/writers/{node_name}")),
            losing: B64.encode(&own_losing),
            losing_prefix: B64.encode(&prefix),
            losing_end: B64.encode(format!("/fibd/{cluster_name}/losing0")),
            own_losing,
        }
    }

    /// `POST /v3/kv/range` of the index; a quorum read unless `serializable`.
    pub fn range_body(&self, serializable: bool) -> Vec<u8> {
        let body = serde_json::json!({ "key": self.index, "serializable": serializable });
        body.to_string().into_bytes()
    }

    /// `POST /v3/kv/txn`: if the index is still at `expected` (its
    /// mod_revision), store `index` and this node's `tag`; otherwise read
    /// both keys back, in the same round trip.
    pub fn step_txn_body(&self, expected: u64, index: u64, tag: &str) -> Vec<u8> {
        let body = serde_json::json!({
            "compare": [{
                "target": "MOD",
                "key": self.index,
                "result": "EQUAL",
                "mod_revision": expected.to_string(),
            }],
            "success": [
                { "request_put": { "key": self.index, "value": B64.encode(index.to_string()) } },
                { "request_put": { "key": self.writer, "value": B64.encode(tag) } },
                { "request_range": {
                    "key": self.losing_prefix,
                    "range_end": self.losing_end,
                    "keys_only": true,
                    "min_mod_revision": expected.saturating_sub(LOSING_WINDOW).max(1).to_string(),
                } },
            ],
            "failure": [
                { "request_range": { "key": self.index } },
                { "request_range": { "key": self.writer } },
                { "request_put": { "key": self.losing, "value": B64.encode("1") } },
            ],
        });
        body.to_string().into_bytes()
    }

    /// Whether a committed transaction's answer lists another node's
    /// recent lost race (its third response, the losing keys).
    fn others_losing(&self, txn: &Value) -> Result<bool, WireError> {
        let kvs = txn["responses"][2]["response_range"]["kvs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for kv in kvs {
            if decode(&kv["key"])? != self.own_losing {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `POST /v3/kv/txn` with no compare: both keys read at one revision,
    /// by a quorum, to resolve a transaction whose answer was lost.
    pub fn readback_body(&self) -> Vec<u8> {
        serde_json::json!({ "success": self.both_ranges() })
            .to_string()
            .into_bytes()
    }

    fn both_ranges(&self) -> serde_json::Value {
        serde_json::json!([
            { "request_range": { "key": self.index } },
            { "request_range": { "key": self.writer } },
        ])
    }
}

/// The index key in plain text, for logs and operators (`etcdctl get`).
pub fn index_key(cluster_name: &str) -> String {
    format!("/fibd/{cluster_name}/index")
}

/// Reads a range answer: the index and its mod_revision.
pub fn read_range(status: u16, body: &[u8]) -> Result<Revisioned, WireError> {
    index_of(&parse(status, body)?)
}

/// Reads a step transaction's answer.
pub fn read_txn(keys: &Keys, status: u16, body: &[u8]) -> Result<TxnAnswer, WireError> {
    let txn = parse(status, body)?;
    if txn["succeeded"].as_bool().unwrap_or(false) {
        return Ok(TxnAnswer::Committed {
            revision: int64(&txn["header"]["revision"])?,
            others_losing: keys.others_losing(&txn)?,
        });
    }
    let (current, writer) = both_keys(&txn)?;
    Ok(TxnAnswer::Moved { current, writer })
}

/// Reads a read-back's answer: the index now, and this node's writer tag.
pub fn read_readback(status: u16, body: &[u8]) -> Result<(Revisioned, Option<String>), WireError> {
    both_keys(&parse(status, body)?)
}

fn both_keys(txn: &Value) -> Result<(Revisioned, Option<String>), WireError> {
    let ranges = txn["responses"]
        .as_array()
        .map(|r| r.as_slice())
        .unwrap_or_default();
    let [index, writer, ..] = ranges else {
        return Err(WireError::Malformed("a transaction without two ranges"));
    };
    let (index, writer) = (&index["response_range"], &writer["response_range"]);
    if !index.is_object() || !writer.is_object() {
        return Err(WireError::Malformed(
            "a transaction response that is not a range",
        ));
    }
    let current = index_of(index)?;
    let writer = match first_kv(writer) {
        None => None,
        Some(kv) => Some(
            String::from_utf8(decode(&kv["value"])?)
                .map_err(|_| WireError::Malformed("a writer tag that is not UTF-8"))?,
        ),
    };
    Ok((current, writer))
}

fn index_of(range: &Value) -> Result<Revisioned, WireError> {
    let Some(kv) = first_kv(range) else {
        return Ok(Revisioned {
            index: 0,
            mod_revision: 0,
        });
    };
    let text = decode(&kv["value"])?;
    let index = std::str::from_utf8(&text)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
        .ok_or(WireError::Malformed("an index that is not a decimal u64"))?;
    Ok(Revisioned {
        index,
        mod_revision: int64(&kv["mod_revision"])?,
    })
}

/// A range's first key-value pair; proto3 leaves `kvs` out when empty.
fn first_kv(range: &Value) -> Option<&Value> {
    range["kvs"].as_array().and_then(|kvs| kvs.first())
}

fn parse(status: u16, body: &[u8]) -> Result<Value, WireError> {
    let parsed = serde_json::from_slice::<Value>(body);
    if status != 200 {
        let message = parsed
            .ok()
            .and_then(|e| e["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into());
        return Err(WireError::Status { status, message });
    }
    parsed
        .ok()
        .filter(Value::is_object)
        .ok_or(WireError::Malformed("not the JSON etcd sends"))
}

fn decode(value: &Value) -> Result<Vec<u8>, WireError> {
    // An empty value is left out, like every default.
    B64.decode(value.as_str().unwrap_or_default())
        .map_err(|_| WireError::Malformed("a value that is not base64"))
}

/// An int64 as the gateway writes it: a decimal string, left out when zero.
fn int64(value: &Value) -> Result<u64, WireError> {
    match value {
        Value::Null => Ok(0),
        Value::String(text) => text
            .parse()
            .map_err(|_| WireError::Malformed("an int64 that is not a decimal string")),
        _ => Err(WireError::Malformed("an int64 that is not a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Answers as etcd 3.4.23 gave them (captured with curl).
    const COMMITTED: &str = r#"{"header":{"cluster_id":"1","member_id":"2","revision":"2","raft_term":"2"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"2"}}},{"response_put":{"header":{"revision":"2"}}}]}"#;
    const MOVED: &str = r#"{"header":{"revision":"2"},"responses":[{"response_range":{"header":{"revision":"2"},"kvs":[{"key":"L2ZpYmQveC9pbmRleA==","create_revision":"2","mod_revision":"2","version":"1","value":"NQ=="}],"count":"1"}},{"response_range":{"header":{"revision":"2"},"kvs":[{"key":"eA==","create_revision":"2","mod_revision":"2","version":"1","value":"YWItNw=="}],"count":"1"}}]}"#;
    const ABSENT: &str =
        r#"{"header":{"cluster_id":"1","member_id":"2","revision":"2","raft_term":"2"}}"#;

    #[test]
    fn a_committed_txn_gives_its_revision() {
        assert_eq!(
            read_txn(&Keys::new("x", "n1"), 200, COMMITTED.as_bytes()),
            Ok(TxnAnswer::Committed {
                revision: 2,
                others_losing: false
            })
        );
    }

    #[test]
    fn a_commit_tells_whether_another_node_lost_a_race_lately() {
        let keys = Keys::new("x", "n1");
        let answer = |losing: &[&str]| {
            let kvs: Vec<String> = losing
                .iter()
                .map(|k| format!(r#"{{"key":"{}"}}"#, B64.encode(k)))
                .collect();
            let body = format!(
                r#"{{"header":{{"revision":"9"}},"succeeded":true,"responses":[{{}},{{}},{{"response_range":{{"kvs":[{}]}}}}]}}"#,
                kvs.join(",")
            );
            read_txn(&keys, 200, body.as_bytes())
        };
        let committed = |others_losing| {
            Ok(TxnAnswer::Committed {
                revision: 9,
                others_losing,
            })
        };
        assert_eq!(answer(&[]), committed(false));
        assert_eq!(answer(&["/fibd/x/losing/n1"]), committed(false), "its own");
        assert_eq!(
            answer(&["/fibd/x/losing/n1", "/fibd/x/losing/n2"]),
            committed(true)
        );
        let body: serde_json::Value =
            serde_json::from_slice(&keys.step_txn_body(100, 5, "t")).unwrap();
        assert_eq!(
            body["success"][2]["request_range"]["min_mod_revision"],
            "68"
        );
        assert_eq!(
            body["failure"][2]["request_put"]["key"],
            B64.encode("/fibd/x/losing/n1")
        );
    }

    #[test]
    fn a_failed_compare_gives_the_index_and_the_writer_tag() {
        assert_eq!(
            read_txn(&Keys::new("x", "n1"), 200, MOVED.as_bytes()),
            Ok(TxnAnswer::Moved {
                current: Revisioned {
                    index: 5,
                    mod_revision: 2
                },
                writer: Some("ab-7".into()),
            })
        );
        assert_eq!(
            read_readback(200, MOVED.as_bytes()).map(|(c, _)| c.index),
            Ok(5)
        );
    }

    #[test]
    fn an_absent_key_is_index_zero_at_revision_zero() {
        assert_eq!(
            read_range(200, ABSENT.as_bytes()),
            Ok(Revisioned {
                index: 0,
                mod_revision: 0
            })
        );
    }

    #[test]
    fn errors_and_garbage_are_typed() {
        let no_leader =
            br#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#;
        assert_eq!(
            read_range(503, no_leader),
            Err(WireError::Status {
                status: 503,
                message: "etcdserver: no leader".into()
            })
        );
        assert!(matches!(
            read_range(200, b"<html>"),
            Err(WireError::Malformed(_))
        ));
        let bad_index = br#"{"kvs":[{"mod_revision":"3","value":"LTE="}]}"#; // "-1"
        assert!(matches!(
            read_range(200, bad_index),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            read_readback(200, COMMITTED.as_bytes()),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn bodies_carry_base64_keys_and_string_revisions() {
        let keys = Keys::new("prod", "n1");
        let txn: serde_json::Value =
            serde_json::from_slice(&keys.step_txn_body(7, 42, "t-1")).unwrap();
        assert_eq!(txn["compare"][0]["mod_revision"], "7");
        assert_eq!(txn["compare"][0]["key"], B64.encode("/fibd/prod/index"));
        assert_eq!(txn["success"][0]["request_put"]["value"], B64.encode("42"));
        assert_eq!(
            txn["success"][1]["request_put"]["key"],
            B64.encode("/fibd/prod/writers/n1")
        );
        let range: serde_json::Value = serde_json::from_slice(&keys.range_body(true)).unwrap();
        assert_eq!(range["serializable"], true);
    }
}
