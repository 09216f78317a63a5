//! The decisions, apart from kernel IO: each module takes events and time as input and
//! returns what to do, so every rule is tested without a kernel.

/// Gives a field-less enum one name per value, used everywhere it is shown: `as_str()`
/// (views, logs, metric labels), `ALL` (every value, for metric series), `Display` and a
/// `Serialize` that writes the same name.
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
    };
}
pub mod evidence;
pub mod failover;
pub mod probe;
pub mod reconcile;
pub mod routes;
pub mod spread;
pub mod state;
pub mod target;
