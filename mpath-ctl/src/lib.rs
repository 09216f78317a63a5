//! mpathd and mpathctl: the userspace half of mpath.
//!
//! The folders follow the split between deciding and doing:
//! - [`core`]: the decisions, pure and kernel-free with time passed in: failure and repair
//!   state machines, address placement, bucket tables, probe timing, targets, evidence.
//! - [`config`]: the configuration file, the Solaris defaults file, validation and diffs.
//! - [`net`]: kernel IO over netlink, sysctls, raw sockets and announcements.
//! - [`datapath`]: the eBPF programs, their pins and maps.
//! - [`daemon`]: mpathd's event loop, which feeds `core` and carries out its decisions, and
//!   its life as a system service: journald logging, systemd readiness and watchdog.
//! - [`api`]: what operators and tools see: views, the control socket, metrics, manual pages.

/// Gives a field-less enum one name per value, used everywhere it is shown: `as_str()`
/// (views, logs, metric labels), `ALL` (every value, for metric series), `Display`, and
/// `Serialize`/`Deserialize` with the same name (the control socket's wire format).
macro_rules! named {
    ($vis:vis $ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            $vis const ALL: &[$ty] = &[$($ty::$variant),+];

            $vis fn as_str(self) -> &'static str {
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

pub mod api;
pub mod config;
pub mod core;
pub mod daemon;
pub mod datapath;
pub mod net;
