//! What operators and tools see: the views (`mpathctl`'s rows), the control socket that
//! serves them, and the Prometheus metrics.
pub mod control;
pub mod metrics;
pub mod views;
