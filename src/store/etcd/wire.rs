//! etcd's v3 JSON gateway, as fibd's cluster mode speaks it: the request
//! bodies of every call it makes and the readers of their answers.
//! Sans-IO: bytes in, bytes out; the index (`super`) and the election
//! (`super::election`) decide when to call, and the outbound client
//! (`crate::net::upstream`) carries the bytes.
//!
//! The gateway (etcd 3.4 paths, `/v3/kv/...`, `/v3/lease/...`) takes and
//! gives keys and values in base64 and every int64 as a JSON string; proto3
//! leaves a field out when it holds its default (`succeeded: false`, an
//! empty `kvs`).
//!
//! Keys per cluster name:
//! - `/fibd/<cluster>/index`: the stepper's index, in ASCII decimal (absent
//!   means 0, with mod_revision 0, which a compare matches);
//! - `/fibd/<cluster>/leader`: `<node> <url>` of the elected node, bound to
//!   its lease, so it goes when the lease does;
//! - `/fibd/<cluster>/writers/<node>`: `<tag> <base>` of the last batch of
//!   this node's steps that was applied, and on which index. It is the
//!   node's *fence*: every attempt of its steps compares the key's
//!   mod_revision, so once the node rewrites it ([`Keys::fence_body`]) no
//!   attempt sent before can apply.
//! - `/fibd/<cluster>/tasks/<seq>`: a primes task's record (`seq` in 16 hex
//!   digits, so keys sort in acceptance order), written only by the leader,
//!   under its term (`super::records`).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::store::index::WriterPut;
use crate::store::lmdb::RecordWrite;

pub const RANGE_PATH: &str = "/v3/kv/range";
pub const TXN_PATH: &str = "/v3/kv/txn";
pub const GRANT_PATH: &str = "/v3/lease/grant";
pub const KEEPALIVE_PATH: &str = "/v3/lease/keepalive";
pub const REVOKE_PATH: &str = "/v3/lease/revoke";

/// A key's value and the revision that last changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revisioned {
    pub index: u64,
    /// 0 when the key does not exist.
    pub mod_revision: u64,
}

/// A node's writer key: the batch last applied for it, and the key's
/// mod_revision (its fence; 0 while the key does not exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Writer {
    /// `(tag, base)` of the batch, None while the key does not exist or
    /// holds a fence rather than a batch.
    pub applied: Option<(String, u64)>,
    pub mod_revision: u64,
}

/// The leader key as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderKey {
    pub node: String,
    pub url: String,
    pub create_revision: u64,
    pub lease: i64,
}

/// What a leader's transaction compares, besides the index: that the leader
/// key is still the one it created, under its lease. A node that lost the
/// leadership can never apply a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    pub create_revision: u64,
    pub lease: i64,
}

/// What a leader's step transaction answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnAnswer {
    /// Every compare held: the new index is stored, at this revision.
    Committed { revision: u64 },
    /// A compare failed; nothing was applied. What the compared keys hold
    /// now: the index, the leader key, and each writer key's mod_revision
    /// (this node's first, then the relayed nodes', in the order sent).
    Refused {
        current: Revisioned,
        leader: Option<LeaderKey>,
        fences: Vec<u64>,
    },
}

/// What a fence call answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceAnswer {
    /// The writer key was still at the fence and is rewritten: no attempt
    /// sent before can apply. The new fence, and the index.
    Fenced { fence: u64, current: Revisioned },
    /// The writer key had moved: an attempt applied. The key as it is now.
    Moved { writer: Writer, current: Revisioned },
}

/// What a campaign answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CampaignAnswer {
    /// The leader key was free and is this node's now, at this revision.
    Won { create_revision: u64 },
    /// Someone holds it (maybe this node, under its own lease).
    Held(LeaderKey),
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

/// The keys of one cluster name and node, base64-encoded once.
#[derive(Clone, Debug)]
pub struct Keys {
    cluster: String,
    index: String,
    leader: String,
    writer: String,
}

impl Keys {
    pub fn new(cluster_name: &str, node_name: &str) -> Keys {
        Keys {
            cluster: cluster_name.to_owned(),
            index: B64.encode(index_key(cluster_name)),
            leader: B64.encode(leader_key(cluster_name)),
            writer: B64.encode(writer_key(cluster_name, node_name)),
        }
    }

    /// `POST /v3/kv/range` of the index; a quorum read unless `serializable`.
    pub fn range_body(&self, serializable: bool) -> Vec<u8> {
        let body = json!({ "key": self.index, "serializable": serializable });
        body.to_string().into_bytes()
    }

    /// `POST /v3/kv/txn` with no compare: the index and this node's writer
    /// key at one revision, by a quorum (the first read).
    pub fn first_read_body(&self) -> Vec<u8> {
        json!({ "success": [
            { "request_range": { "key": self.index } },
            { "request_range": { "key": self.writer } },
        ] })
        .to_string()
        .into_bytes()
    }

    /// `POST /v3/kv/txn`: if this node still holds the leadership of `term`,
    /// the index is still at `expected` (its mod_revision) and every
    /// writer key at its fence, store `index` and every writer's batch;
    /// otherwise read all of those keys back, in the same round trip.
    /// `writers[0]` is this node's own.
    pub fn step_txn_body(
        &self,
        term: Term,
        expected: u64,
        index: u64,
        writers: &[WriterPut],
    ) -> Vec<u8> {
        let writer_keys: Vec<String> = writers
            .iter()
            .map(|w| B64.encode(writer_key(&self.cluster, &w.node)))
            .collect();
        let mut compare = vec![
            json!({ "target": "CREATE", "key": self.leader, "result": "EQUAL",
                    "create_revision": term.create_revision.to_string() }),
            json!({ "target": "LEASE", "key": self.leader, "result": "EQUAL",
                    "lease": term.lease.to_string() }),
            json!({ "target": "MOD", "key": self.index, "result": "EQUAL",
                    "mod_revision": expected.to_string() }),
        ];
        let mut success = vec![json!({ "request_put": {
            "key": self.index, "value": B64.encode(index.to_string()) } })];
        let mut failure = vec![
            json!({ "request_range": { "key": self.index } }),
            json!({ "request_range": { "key": self.leader } }),
        ];
        for (w, key) in writers.iter().zip(&writer_keys) {
            compare.push(json!({ "target": "MOD", "key": key, "result": "EQUAL",
                                 "mod_revision": w.fence.to_string() }));
            success.push(json!({ "request_put": {
                "key": key, "value": B64.encode(format!("{} {}", w.tag, w.base)) } }));
            failure.push(json!({ "request_range": { "key": key, "keys_only": true } }));
        }
        json!({ "compare": compare, "success": success, "failure": failure })
            .to_string()
            .into_bytes()
    }

    /// `POST /v3/kv/txn`: if this node's writer key is still at `fence`,
    /// rewrite it with `mark` (no attempt that compared `fence` can apply
    /// after this) and read the index; otherwise read both keys.
    pub fn fence_body(&self, fence: u64, mark: &str) -> Vec<u8> {
        json!({
            "compare": [{ "target": "MOD", "key": self.writer, "result": "EQUAL",
                          "mod_revision": fence.to_string() }],
            "success": [
                { "request_put": { "key": self.writer, "value": B64.encode(mark) } },
                { "request_range": { "key": self.index } },
            ],
            "failure": [
                { "request_range": { "key": self.index } },
                { "request_range": { "key": self.writer } },
            ],
        })
        .to_string()
        .into_bytes()
    }

    /// `POST /v3/kv/txn`: claim the leader key under `lease` if nobody holds
    /// it; otherwise read who does.
    pub fn campaign_body(&self, lease: i64, node: &str, url: &str) -> Vec<u8> {
        json!({
            "compare": [{ "target": "CREATE", "key": self.leader, "result": "EQUAL",
                          "create_revision": "0" }],
            "success": [{ "request_put": { "key": self.leader,
                "value": B64.encode(format!("{node} {url}")), "lease": lease.to_string() } }],
            "failure": [{ "request_range": { "key": self.leader } }],
        })
        .to_string()
        .into_bytes()
    }
}

/// The prefix of a cluster's task records, in plain text.
pub fn records_prefix(cluster_name: &str) -> String {
    format!("/fibd/{cluster_name}/tasks/")
}

/// A task record's key: the prefix and the record's sequence number in 16
/// hex digits.
pub fn record_key(prefix: &str, seq: u64) -> String {
    format!("{prefix}{seq:016x}")
}

/// `POST /v3/kv/txn`: if the leader key is still the one of `term`, make
/// every write (a put of a record, or its deletion); otherwise nothing.
pub fn records_txn_body(leader: &str, term: Term, prefix: &str, writes: &[RecordWrite]) -> Vec<u8> {
    let leader = B64.encode(leader);
    let success: Vec<Value> = writes
        .iter()
        .map(|write| match write {
            RecordWrite::Put { key, value } => json!({ "request_put": {
                "key": B64.encode(record_key(prefix, *key)), "value": B64.encode(value) } }),
            RecordWrite::Delete { key } => json!({ "request_delete_range": {
                "key": B64.encode(record_key(prefix, *key)) } }),
        })
        .collect();
    json!({
        "compare": [
            { "target": "CREATE", "key": leader, "result": "EQUAL",
              "create_revision": term.create_revision.to_string() },
            { "target": "LEASE", "key": leader, "result": "EQUAL",
              "lease": term.lease.to_string() },
        ],
        "success": success,
    })
    .to_string()
    .into_bytes()
}

/// `POST /v3/kv/range`: up to `limit` records from sequence number `from`
/// on, by a quorum read.
pub fn records_page_body(prefix: &str, from: u64, limit: usize) -> Vec<u8> {
    // The prefix ends in '/'; the next byte, '0', ends the range.
    let end = format!("{}0", &prefix[..prefix.len() - 1]);
    json!({
        "key": B64.encode(record_key(prefix, from)),
        "range_end": B64.encode(end),
        "limit": limit.to_string(),
    })
    .to_string()
    .into_bytes()
}

/// Reads a records transaction's answer: whether it committed (a refusal
/// means the term is over).
pub fn read_records_txn(status: u16, body: &[u8]) -> Result<bool, WireError> {
    Ok(parse(status, body)?["succeeded"].as_bool().unwrap_or(false))
}

/// Task records as read: `(seq, record)`, in acceptance order.
pub type RecordPage = Vec<(u64, Vec<u8>)>;

/// Reads a page of records: each one's sequence number and value, and
/// whether more follow.
pub fn read_records_page(
    status: u16,
    body: &[u8],
    prefix: &str,
) -> Result<(RecordPage, bool), WireError> {
    let page = parse(status, body)?;
    let kvs = page["kvs"].as_array().map_or(&[][..], Vec::as_slice);
    let records = kvs
        .iter()
        .map(|kv| {
            let key = decode(&kv["key"])?;
            let seq = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| k.strip_prefix(prefix))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .ok_or(WireError::Malformed(
                    "a task key that is not <prefix><16 hex digits>",
                ))?;
            Ok((seq, decode(&kv["value"])?))
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok((records, page["more"].as_bool().unwrap_or(false)))
}

/// `POST /v3/lease/grant`.
pub fn grant_body(ttl_secs: u64) -> Vec<u8> {
    json!({ "TTL": ttl_secs.to_string() })
        .to_string()
        .into_bytes()
}

/// `POST /v3/lease/keepalive` and `/v3/lease/revoke`.
pub fn lease_body(lease: i64) -> Vec<u8> {
    json!({ "ID": lease.to_string() }).to_string().into_bytes()
}

/// The index key in plain text, for logs and operators (`etcdctl get`).
pub fn index_key(cluster_name: &str) -> String {
    format!("/fibd/{cluster_name}/index")
}

/// The leader key in plain text.
pub fn leader_key(cluster_name: &str) -> String {
    format!("/fibd/{cluster_name}/leader")
}

fn writer_key(cluster_name: &str, node: &str) -> String {
    format!("/fibd/{cluster_name}/writers/{node}")
}

/// Reads a range answer: the index and its mod_revision.
pub fn read_range(status: u16, body: &[u8]) -> Result<Revisioned, WireError> {
    index_of(&parse(status, body)?)
}

/// Reads the first read's answer: the index and this node's writer key.
pub fn read_first(status: u16, body: &[u8]) -> Result<(Revisioned, Writer), WireError> {
    let txn = parse(status, body)?;
    Ok((index_of(range(&txn, 0)?)?, writer_of(range(&txn, 1)?)?))
}

/// Reads a step transaction's answer; `writers` is how many writer keys it
/// compared.
pub fn read_txn(status: u16, body: &[u8], writers: usize) -> Result<TxnAnswer, WireError> {
    let txn = parse(status, body)?;
    if txn["succeeded"].as_bool().unwrap_or(false) {
        return Ok(TxnAnswer::Committed {
            revision: int64(&txn["header"]["revision"])?,
        });
    }
    let current = index_of(range(&txn, 0)?)?;
    let leader = first_kv(range(&txn, 1)?).map(leader_of).transpose()?;
    let fences = (0..writers)
        .map(|i| first_kv(range(&txn, 2 + i)?).map_or(Ok(0), |kv| int64(&kv["mod_revision"])))
        .collect::<Result<Vec<u64>, WireError>>()?;
    Ok(TxnAnswer::Refused {
        current,
        leader,
        fences,
    })
}

/// Reads a fence call's answer.
pub fn read_fence(status: u16, body: &[u8]) -> Result<FenceAnswer, WireError> {
    let txn = parse(status, body)?;
    if txn["succeeded"].as_bool().unwrap_or(false) {
        return Ok(FenceAnswer::Fenced {
            fence: int64(&txn["header"]["revision"])?,
            current: index_of(range(&txn, 1)?)?,
        });
    }
    Ok(FenceAnswer::Moved {
        current: index_of(range(&txn, 0)?)?,
        writer: writer_of(range(&txn, 1)?)?,
    })
}

/// Reads a campaign's answer.
pub fn read_campaign(status: u16, body: &[u8]) -> Result<CampaignAnswer, WireError> {
    let txn = parse(status, body)?;
    if txn["succeeded"].as_bool().unwrap_or(false) {
        return Ok(CampaignAnswer::Won {
            create_revision: int64(&txn["header"]["revision"])?,
        });
    }
    let kv = first_kv(range(&txn, 0)?).ok_or(WireError::Malformed(
        "a lost campaign that names no leader key",
    ))?;
    Ok(CampaignAnswer::Held(leader_of(kv)?))
}

/// Reads a lease grant's answer: the lease and its TTL in seconds.
pub fn read_grant(status: u16, body: &[u8]) -> Result<(i64, u64), WireError> {
    let grant = parse(status, body)?;
    let id = int64(&grant["ID"])?;
    let ttl = int64(&grant["TTL"])?;
    if id == 0 || ttl == 0 {
        return Err(WireError::Malformed(
            "a lease grant without an ID and a TTL",
        ));
    }
    Ok((id, ttl))
}

/// Reads a keep-alive's answer: the lease's TTL in seconds, 0 when the
/// lease is gone (expired or revoked).
pub fn read_keepalive(status: u16, body: &[u8]) -> Result<u64, WireError> {
    // The gateway streams: one JSON object per message, one message here.
    let first = body.split(|&b| b == b'\n').next().unwrap_or_default();
    let answer = parse(status, first)?;
    int64(&answer["result"]["TTL"])
}

fn range(txn: &Value, i: usize) -> Result<&Value, WireError> {
    let range = &txn["responses"][i]["response_range"];
    if range.is_object() {
        Ok(range)
    } else {
        Err(WireError::Malformed(
            "a transaction without the ranges asked",
        ))
    }
}

fn writer_of(range: &Value) -> Result<Writer, WireError> {
    let Some(kv) = first_kv(range) else {
        return Ok(Writer {
            applied: None,
            mod_revision: 0,
        });
    };
    let text = String::from_utf8(decode(&kv["value"])?)
        .map_err(|_| WireError::Malformed("a writer key that is not UTF-8"))?;
    let applied = text
        .split_once(' ')
        .and_then(|(tag, base)| Some((tag.to_owned(), base.parse().ok()?)));
    Ok(Writer {
        applied,
        mod_revision: int64(&kv["mod_revision"])?,
    })
}

fn leader_of(kv: &Value) -> Result<LeaderKey, WireError> {
    let text = String::from_utf8(decode(&kv["value"])?)
        .map_err(|_| WireError::Malformed("a leader key that is not UTF-8"))?;
    let (node, url) = text.split_once(' ').ok_or(WireError::Malformed(
        "a leader key that is not `<node> <url>`",
    ))?;
    Ok(LeaderKey {
        node: node.to_owned(),
        url: url.to_owned(),
        create_revision: int64(&kv["create_revision"])?,
        lease: int64(&kv["lease"])?,
    })
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
    B64.decode(value.as_str().unwrap_or_default())
        .map_err(|_| WireError::Malformed("a value that is not base64"))
}

/// An int64 as the gateway writes it, a decimal in a string (absent: 0).
fn int64<T: std::str::FromStr + Default>(value: &Value) -> Result<T, WireError> {
    match value {
        Value::Null => Ok(T::default()),
        Value::String(text) => text
            .parse()
            .map_err(|_| WireError::Malformed("an int64 that is not a decimal string")),
        _ => Err(WireError::Malformed("an int64 that is not a string")),
    }
}

/// Answers as the gateway gives them, for the tests of this file and of
/// the stepper.
#[cfg(test)]
pub mod fixtures {
    use super::B64;
    use base64::Engine;

    /// One key.
    pub fn kv(key: &str, value: &str, create: u64, modr: u64, lease: i64) -> String {
        format!(
            r#"{{"key":"{}","create_revision":"{create}","mod_revision":"{modr}","version":"1","value":"{}","lease":"{lease}"}}"#,
            B64.encode(key),
            B64.encode(value)
        )
    }

    /// A transaction's answer of ranges only (a refused compare, or none).
    pub fn ranges(kvs: &[Option<String>]) -> String {
        let responses: Vec<String> = kvs
            .iter()
            .map(|kv| match kv {
                Some(kv) => format!(r#"{{"response_range":{{"kvs":[{kv}],"count":"1"}}}}"#),
                None => r#"{"response_range":{"header":{"revision":"9"}}}"#.to_owned(),
            })
            .collect();
        format!(
            r#"{{"header":{{"revision":"9"}},"responses":[{}]}}"#,
            responses.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{kv, ranges};
    use super::*;

    #[test]
    fn a_committed_txn_gives_its_revision() {
        let body =
            r#"{"header":{"revision":"12"},"succeeded":true,"responses":[{"response_put":{}}]}"#;
        assert_eq!(
            read_txn(200, body.as_bytes(), 2),
            Ok(TxnAnswer::Committed { revision: 12 })
        );
    }

    #[test]
    fn a_refused_txn_gives_the_index_the_leader_and_every_fence() {
        let body = ranges(&[
            Some(kv("/fibd/x/index", "5", 2, 8, 0)),
            Some(kv("/fibd/x/leader", "n2 http://127.0.0.1:81", 7, 7, 99)),
            Some(kv("/fibd/x/writers/n1", "", 3, 6, 0)),
            None,
        ]);
        assert_eq!(
            read_txn(200, body.as_bytes(), 2),
            Ok(TxnAnswer::Refused {
                current: Revisioned {
                    index: 5,
                    mod_revision: 8
                },
                leader: Some(LeaderKey {
                    node: "n2".into(),
                    url: "http://127.0.0.1:81".into(),
                    create_revision: 7,
                    lease: 99
                }),
                fences: vec![6, 0],
            })
        );
    }

    #[test]
    fn a_fence_call_tells_fenced_from_applied() {
        let fenced = r#"{"header":{"revision":"20"},"succeeded":true,"responses":[{"response_put":{}},{"response_range":{"kvs":[{"value":"Nw==","mod_revision":"4"}]}}]}"#;
        assert_eq!(
            read_fence(200, fenced.as_bytes()),
            Ok(FenceAnswer::Fenced {
                fence: 20,
                current: Revisioned {
                    index: 7,
                    mod_revision: 4
                }
            })
        );
        let moved = ranges(&[
            Some(kv("/fibd/x/index", "9", 2, 15, 0)),
            Some(kv("/fibd/x/writers/n1", "ab-3 7", 3, 15, 0)),
        ]);
        assert_eq!(
            read_fence(200, moved.as_bytes()),
            Ok(FenceAnswer::Moved {
                current: Revisioned {
                    index: 9,
                    mod_revision: 15
                },
                writer: Writer {
                    applied: Some(("ab-3".into(), 7)),
                    mod_revision: 15
                },
            })
        );
    }

    #[test]
    fn a_campaign_is_won_or_names_the_holder() {
        let won = r#"{"header":{"revision":"31"},"succeeded":true}"#;
        assert_eq!(
            read_campaign(200, won.as_bytes()),
            Ok(CampaignAnswer::Won {
                create_revision: 31
            })
        );
        let held = ranges(&[Some(kv(
            "/fibd/x/leader",
            "n3 http://10.0.0.3:8080",
            5,
            5,
            42,
        ))]);
        assert!(matches!(
            read_campaign(200, held.as_bytes()),
            Ok(CampaignAnswer::Held(LeaderKey { node, lease: 42, .. })) if node == "n3"
        ));
        assert!(matches!(
            read_campaign(200, ranges(&[None]).as_bytes()),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn leases_are_granted_kept_and_lost() {
        assert_eq!(
            read_grant(200, br#"{"header":{},"ID":"7587","TTL":"3"}"#),
            Ok((7587, 3))
        );
        assert_eq!(
            read_keepalive(200, b"{\"result\":{\"ID\":\"7587\",\"TTL\":\"3\"}}\n"),
            Ok(3)
        );
        assert_eq!(
            read_keepalive(200, br#"{"result":{"ID":"7587"}}"#),
            Ok(0),
            "an expired lease answers without a TTL"
        );
    }

    #[test]
    fn an_absent_key_is_index_zero_at_revision_zero() {
        let absent = br#"{"header":{"revision":"2"}}"#;
        assert_eq!(
            read_range(200, absent),
            Ok(Revisioned {
                index: 0,
                mod_revision: 0
            })
        );
        let first = ranges(&[None, None]);
        assert_eq!(
            read_first(200, first.as_bytes()).map(|(_, w)| w),
            Ok(Writer {
                applied: None,
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
            read_first(200, br#"{"succeeded":true}"#),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn a_leaders_txn_is_fenced_by_its_term_and_every_writer() {
        let keys = Keys::new("prod", "n1");
        let term = Term {
            create_revision: 11,
            lease: 77,
        };
        let writers = [
            WriterPut {
                node: "n1".into(),
                fence: 4,
                tag: "a-1".into(),
                base: 40,
            },
            WriterPut {
                node: "n2".into(),
                fence: 0,
                tag: "b-9".into(),
                base: 41,
            },
        ];
        let txn: Value =
            serde_json::from_slice(&keys.step_txn_body(term, 7, 42, &writers)).unwrap();
        assert_eq!(txn["compare"][0]["target"], "CREATE");
        assert_eq!(txn["compare"][0]["create_revision"], "11");
        assert_eq!(txn["compare"][1]["lease"], "77");
        assert_eq!(txn["compare"][2]["mod_revision"], "7");
        assert_eq!(txn["compare"][2]["key"], B64.encode("/fibd/prod/index"));
        assert_eq!(
            txn["compare"][4]["key"],
            B64.encode("/fibd/prod/writers/n2")
        );
        assert_eq!(txn["success"][0]["request_put"]["value"], B64.encode("42"));
        assert_eq!(
            txn["success"][2]["request_put"]["value"],
            B64.encode("b-9 41")
        );
        assert_eq!(txn["failure"].as_array().map(Vec::len), Some(4));
        let range: Value = serde_json::from_slice(&keys.range_body(true)).unwrap();
        assert_eq!(range["serializable"], true);
    }
}
