//! The vocabulary of the index interface ([`super::IndexStore`]): the steps,
//! the batch a store takes, what became of it, and the calls a store makes.
//! A leaf, so both stores and the stepper name it without importing one
//! another.

use std::time::Instant;

use crate::net::upstream::Outbound;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Next,
    Previous,
}

impl Step {
    /// One letter per step, as a relay carries them (`n` or `p`).
    pub fn letter(self) -> char {
        match self {
            Step::Next => 'n',
            Step::Previous => 'p',
        }
    }

    pub fn from_letter(letter: u8) -> Option<Step> {
        match letter {
            b'n' => Some(Step::Next),
            b'p' => Some(Step::Previous),
            _ => None,
        }
    }
}

/// One node's steps in a leader's batch: its writer key (its fence) must
/// still be at `fence`, and then records that the batch `tag` was applied
/// on `base`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterPut {
    pub node: String,
    pub fence: u64,
    pub tag: String,
    pub base: u64,
}

/// A batch of the stepper's, as a store takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexBatch {
    /// A new batch, not a batch sent again after [`IndexOutcome::Moved`] or
    /// [`IndexOutcome::Retry`].
    pub fresh: bool,
    /// The index the steps are applied on: the last one the store reported.
    pub base: u64,
    /// The index after every step, applied on `base`.
    pub target: u64,
    /// Steps in the batch, relayed ones included; 0 for reads only.
    pub steps: u64,
    /// This node's own steps, in order: a follower relays them.
    pub sequence: Vec<Step>,
    /// Other nodes' steps relayed to this leader, in the batch's order.
    pub relays: Vec<WriterPut>,
}

/// What became of the batch in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexOutcome {
    /// Applied on `base`; the store holds `then` now (another node may have
    /// stepped after it), at `revision` (etcd's; 0 for LMDB). A batch of
    /// reads only is "applied" at the index it read.
    Applied { base: u64, then: u64, revision: u64 },
    /// Not applied: the index is `current` now; the batch goes again on it,
    /// without the relays of the nodes in `fenced` (they gave up on them).
    Moved { current: u64, fenced: Vec<String> },
    /// Not applied: this node does not lead (any more). The relays in the
    /// batch are answered so; the rest goes again, relayed to the leader.
    /// The index is `current` now, as far as the store knows.
    Deposed { current: u64 },
    /// The call failed, or its outcome was settled as not applied; the
    /// batch goes again once the store takes one. The index is `current`
    /// now, as far as the store knows: the batch's base must follow it,
    /// since the store compares its latest revision.
    Retry { current: Option<u64> },
    /// The first read: the index is `current`. No batch was in flight.
    Learned { current: u64 },
    /// The commit failed: nothing was applied.
    Failed,
}

/// Which part of a store a call belongs to, so its answer gets back there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// The index: reads, transactions, relays, fences.
    Index,
    /// The leader election (etcd): leases and campaigns.
    Election,
}

/// An outbound call a store makes, for the loop to send.
#[derive(Clone, Debug)]
pub struct StoreCall {
    pub channel: Channel,
    pub request: Outbound,
    pub deadline: Instant,
}
