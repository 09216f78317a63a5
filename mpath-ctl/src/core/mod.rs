//! The decisions, apart from kernel IO: each module takes events and time as input and
//! returns what to do, so every rule is tested without a kernel.

#[cfg(test)]
mod tests {
    use crate::core::state::InterfaceStatus;

    /// [`named!`] (defined in lib.rs, for every module) round-trips through serde.
    #[test]
    fn a_named_value_reads_back_from_its_name_and_an_unknown_name_is_refused() {
        for status in InterfaceStatus::ALL {
            let json = serde_json::to_string(status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
            assert_eq!(
                serde_json::from_str::<InterfaceStatus>(&json).unwrap(),
                *status
            );
        }
        let error = serde_json::from_str::<InterfaceStatus>("\"sleepy\"").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("unknown InterfaceStatus \"sleepy\", expected one of ok, failed"),
            "{error}"
        );
    }
}

pub mod evidence;
pub mod failover;
pub mod host;
pub mod identity;
pub mod multicast;
pub mod probe;
pub mod reconcile;
pub mod routes;
pub mod sources;
pub mod spread;
pub mod state;
pub mod target;
