//! The decisions, apart from kernel IO: each module takes events and time as input and
//! returns what to do, so every rule is tested without a kernel.

/// Gives a field-less enum one name per value, used everywhere it is shown: `as_str()`
/// (views, logs, metric labels), `ALL` (every value, for metric series), `Display`, and
/// `Serialize`/`Deserialize` with the same name (the control socket's wire format).
macro_rules! named {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &[$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                $ty::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == name)
                    .ok_or_else(|| {
                        let names: Vec<&str> = $ty::ALL.iter().map(|v| v.as_str()).collect();
                        serde::de::Error::custom(format!(
                            "unknown {} {name:?}, expected one of {}",
                            stringify!($ty),
                            names.join(", ")
                        ))
                    })
            }
        }
    };
}
#[cfg(test)]
mod tests {
    use crate::core::state::InterfaceStatus;

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
pub mod probe;
pub mod reconcile;
pub mod routes;
pub mod spread;
pub mod state;
pub mod target;
