//! The stores.
pub mod committer;
pub mod etcd;
pub mod lmdb;
