//! The internal endpoint a follower relays its steps through to the
//! leader: `POST /internal/v1/steps`, not part of the public API. Sans-IO:
//! the request body a follower sends and the leader reads, and the answer
//! the leader writes and the follower reads.
//!
//! The request carries the follower's node name, the batch's tag, the
//! follower's fence (its writer key's mod_revision) and its steps in order,
//! one letter each. The leader applies them in one piece, in its own
//! transaction, and answers on which index they were applied, what the
//! index is after its whole batch, and at which revision (the follower's
//! new fence). The request is authenticated with the cluster secret, in
//! the `Fibd-Cluster-Secret` field, compared in constant time
//! (`base::secret`).

use serde_json::{Value, json};

use crate::store::index::Step;

pub const RELAY_PATH: &str = "/internal/v1/steps";
pub const SECRET_FIELD: &str = "Fibd-Cluster-Secret";
/// Steps in one relay at most: a follower's batch is no larger.
pub const RELAY_STEPS_MAX: usize = 8_192;
/// A relay's body at most: the steps and about a hundred bytes more.
pub const RELAY_BODY_BYTES_MAX: usize = RELAY_STEPS_MAX + 512;

/// A follower's steps, as the leader takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    pub node: String,
    pub tag: String,
    pub fence: u64,
    pub steps: Vec<Step>,
}

/// The leader's answer: the relay's steps were applied on `base`; the
/// index is `then` after the leader's batch, at `revision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayAnswer {
    pub base: u64,
    pub then: u64,
    pub revision: u64,
}

pub fn relay_body(node: &str, tag: &str, fence: u64, steps: &[Step]) -> Vec<u8> {
    let letters: String = steps.iter().map(|s| s.letter()).collect();
    json!({ "node": node, "tag": tag, "fence": fence.to_string(), "steps": letters })
        .to_string()
        .into_bytes()
}

/// Reads a relay; the error says what is wrong with it.
pub fn read_relay(body: &[u8]) -> Result<Relay, &'static str> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "a JSON object")?;
    let text = |field: &str| {
        value[field]
            .as_str()
            .filter(|t| (1..=64).contains(&t.len()))
    };
    let node = text("node")
        .filter(|n| {
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
        })
        .ok_or("a node name of 1 to 64 of A-Z a-z 0-9 . _ - :")?;
    let tag = text("tag")
        .filter(|t| t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or("a tag of 1 to 64 printable characters")?;
    let fence = text("fence")
        .and_then(|f| f.parse().ok())
        .ok_or("a fence: a decimal revision in a string")?;
    let letters = value["steps"]
        .as_str()
        .filter(|s| (1..=RELAY_STEPS_MAX).contains(&s.len()))
        .ok_or("steps: 1 to 8192 letters n or p")?;
    let steps = letters
        .bytes()
        .map(Step::from_letter)
        .collect::<Option<Vec<Step>>>()
        .ok_or("steps: 1 to 8192 letters n or p")?;
    Ok(Relay {
        node: node.to_owned(),
        tag: tag.to_owned(),
        fence,
        steps,
    })
}

pub fn answer_body(answer: RelayAnswer) -> String {
    json!({
        "base": answer.base.to_string(),
        "then": answer.then.to_string(),
        "revision": answer.revision.to_string(),
    })
    .to_string()
}

/// Reads the leader's answer; anything but a 200 with the three numbers
/// leaves the relay's outcome unknown.
pub fn read_answer(status: u16, body: &[u8]) -> Result<RelayAnswer, String> {
    if status != 200 {
        let value: Option<Value> = serde_json::from_slice(body).ok();
        let code = value
            .as_ref()
            .and_then(|v| v["error"].as_str())
            .unwrap_or("no error code");
        return Err(format!("the leader answered {status} ({code})"));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|_| "the leader's answer is not JSON".to_owned())?;
    let number = |field: &str| value[field].as_str().and_then(|t| t.parse::<u64>().ok());
    match (number("base"), number("then"), number("revision")) {
        (Some(base), Some(then), Some(revision)) => Ok(RelayAnswer {
            base,
            then,
            revision,
        }),
        _ => Err("the leader's answer lacks base, then or revision".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_round_trips() {
        let steps = [Step::Next, Step::Next, Step::Previous];
        let body = relay_body("n2", "ab-3", 17, &steps);
        assert_eq!(
            read_relay(&body),
            Ok(Relay {
                node: "n2".into(),
                tag: "ab-3".into(),
                fence: 17,
                steps: steps.to_vec()
            })
        );
        let answer = RelayAnswer {
            base: 5,
            then: 9,
            revision: 40,
        };
        assert_eq!(read_answer(200, answer_body(answer).as_bytes()), Ok(answer));
    }

    #[test]
    fn a_bad_relay_says_why() {
        for body in [
            &b"[]"[..],
            br#"{"node":"n 2","tag":"t","fence":"1","steps":"n"}"#,
            br#"{"node":"n2","tag":"t","fence":1,"steps":"n"}"#,
            br#"{"node":"n2","tag":"t","fence":"1","steps":"nx"}"#,
            br#"{"node":"n2","tag":"t","fence":"1","steps":""}"#,
        ] {
            assert!(
                read_relay(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!(
            r#"{{"node":"n2","tag":"t","fence":"1","steps":"{}"}}"#,
            "n".repeat(RELAY_STEPS_MAX + 1)
        );
        assert!(read_relay(long.as_bytes()).is_err());
    }

    #[test]
    fn an_answer_other_than_200_leaves_the_outcome_unknown() {
        let refused = br#"{"error":"not_leader","detail":"..."}"#;
        assert_eq!(
            read_answer(421, refused),
            Err("the leader answered 421 (not_leader)".into())
        );
        assert!(read_answer(200, br#"{"base":"1"}"#).is_err());
    }
}
