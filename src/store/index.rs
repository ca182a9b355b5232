//! The vocabulary of the index interface ([`super::IndexStore`]): the batch
//! a store takes, what became of it, and the calls a store makes. A leaf, so
//! both stores and the stepper name it without importing one another.

use std::time::Instant;

use crate::net::upstream::Outbound;

/// A batch of the stepper's, as a store takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexBatch {
    /// A new batch, not a batch sent again after [`IndexOutcome::Moved`] or
    /// [`IndexOutcome::Retry`] (etcd fences the attempts of one batch).
    pub fresh: bool,
    /// The index the steps are applied on: the last one the store reported.
    pub base: u64,
    /// The index after every step, applied on `base`.
    pub target: u64,
    /// Steps in the batch; 0 for reads only.
    pub steps: u64,
}

/// What became of the batch in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexOutcome {
    /// Applied on `base`; the store holds `then` now (another node may have
    /// stepped after it). A batch of reads only is "applied" at the index
    /// it read.
    Applied { base: u64, then: u64 },
    /// Not applied: the index is `current` now (another node moved it); the
    /// batch goes again on it.
    Moved { current: u64 },
    /// The call failed; the batch goes again once the store takes one
    /// (etcd reads back first if a transaction's answer was lost).
    Retry,
    /// The first read: the index is `current`. No batch was in flight.
    Learned { current: u64 },
    /// The commit failed: nothing was applied.
    Failed,
}

/// An outbound call a store makes, for the loop to send.
#[derive(Clone, Debug)]
pub struct StoreCall {
    pub request: Outbound,
    pub deadline: Instant,
}
