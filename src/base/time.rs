//! Wall-clock time as fibd stores it.

use std::time::SystemTime;

/// Milliseconds since the Unix epoch (0 before it), for what outlives a
/// restart: task creation and retention.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
