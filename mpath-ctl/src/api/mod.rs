//! What operators and tools see: the views (`mpathctl`'s rows), the control socket that
//! serves them, the Prometheus metrics, and the manual pages.
mod admission;
pub mod control;
pub mod manpages;
pub mod metrics;
pub mod views;
