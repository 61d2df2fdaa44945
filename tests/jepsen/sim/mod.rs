//! The simulated parts of the world the real node code runs in, one file
//! each (as TigerBeetle's `src/testing/`): the network, the disk, message
//! chaos, and the capture of node panics. Simulated time is turmoil's.

pub mod chaos;
pub mod disk;
pub mod network;
pub mod panics;

use std::time::Duration;

/// The simulated time now (zero outside a simulation).
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}
