//! A cap on the connections open at once to a server any local user can reach (the control
//! socket, the metrics port): past it, new connections are closed at once, so idle clients
//! cannot take the descriptors failover needs nor starve the event loop.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct Admission {
    slots: Arc<Semaphore>,
    /// Logged once each time the cap is reached.
    full: String,
    refusing: bool,
}

impl Admission {
    pub(super) fn new(limit: usize, full: String) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(limit)),
            full,
            refusing: false,
        }
    }

    /// A new connection's permit, to hold for its life; `None` while the cap is reached: the
    /// connection is to be closed.
    pub(super) fn admit(&mut self) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.refusing = false;
                Some(permit)
            }
            Err(_) => {
                if !self.refusing {
                    tracing::warn!("{}", self.full);
                    self.refusing = true;
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_past_the_cap_are_refused_until_one_ends() {
        let mut admission = Admission::new(2, "full".into());
        let first = admission.admit().expect("first");
        let _second = admission.admit().expect("second");
        assert!(admission.admit().is_none());
        assert!(admission.refusing);
        drop(first);
        assert!(admission.admit().is_some(), "a slot came free");
        assert!(!admission.refusing, "the next refusal is logged again");
    }
}
