//! The decisions, apart from kernel IO: each module takes events and time as input and
//! returns what to do, so every rule is tested without a kernel.
pub mod evidence;
pub mod failover;
pub mod probe;
pub mod routes;
pub mod spread;
pub mod state;
pub mod target;
