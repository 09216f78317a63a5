//! mpathd's configuration: the TOML file, the Solaris-style `/etc/default/mpathd`, validation
//! whose errors name file, line and column, and the difference a SIGHUP reload applies.
//!
//! Parsing is pure (`Config::parse`); only `Config::load` touches the filesystem, so a bad file
//! is refused before anything on the host is changed.
//!
//! The TOML file has an optional `[daemon]` table (`failure_detection_time_ms`, `failback`,
//! `track_interfaces_only_with_groups`, `metrics_listen`, `socket`, `bpf_pin_dir`) and any
//! number of `[[group]]` tables (`name`, optional `targets`), each with `[[group.interface]]`
//! tables (`name`, optional `test_address`, `data_addresses`, `standby`). Keys set in
//! `[daemon]` win over `/etc/default/mpathd`, which wins over the built-in defaults.
//!
//! Modules: `error` (refusals with their place), `raw` (the file as serde reads it),
//! `validate` (raw file to [`Config`]), `solaris` (`/etc/default/mpathd`) and `diff` (reload).

pub mod diff;
pub mod error;
#[cfg(test)]
mod fuzz;
mod raw;
mod solaris;
#[cfg(test)]
mod testing;
mod validate;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::net::address::{IpCidr, Ipv4Cidr};
use error::{ConfigError, Source};
use raw::RawConfig;
use solaris::{SolarisDefaults, parse_defaults_file};
use validate::Validator;

/// Where `mpathd --config` looks when no file is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mpath/mpathd.toml";
/// The Solaris tunables file, read when present so existing IPMP hosts keep their settings.
pub const DEFAULT_DEFAULTS_PATH: &str = "/etc/default/mpathd";

/// in.mpathd's MIN_FAILURE_DETECTION_TIME: probes cannot be sent faster than this allows.
pub const MIN_FAILURE_DETECTION_TIME_MS: i64 = 100;
/// in.mpathd keeps the FDT in an `int`; the bound also keeps `Instant + fdt` from overflowing.
pub const MAX_FAILURE_DETECTION_TIME_MS: i64 = i32::MAX as i64;
/// Solaris LIFGRNAMSIZ (32) less the terminating NUL.
pub const MAX_GROUP_NAME_LEN: usize = 31;
/// Linux IFNAMSIZ (16) less the terminating NUL.
pub const MAX_INTERFACE_NAME_LEN: usize = 15;

const DEFAULT_FAILURE_DETECTION_TIME_MS: u64 = 10_000;
const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9798);
const DEFAULT_SOCKET: &str = "/run/mpath/mpathd.sock";
const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/mpath";

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub groups: Vec<GroupConfig>,
}

/// Daemon-wide tunables, after merging `/etc/default/mpathd` under the TOML `[daemon]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    pub failure_detection_time: Duration,
    pub failback: bool,
    pub track_interfaces_only_with_groups: bool,
    pub metrics_listen: SocketAddr,
    pub socket: PathBuf,
    /// Where the datapath pins its maps, programs and links.
    pub bpf_pin_dir: PathBuf,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            failure_detection_time: Duration::from_millis(DEFAULT_FAILURE_DETECTION_TIME_MS),
            failback: true,
            track_interfaces_only_with_groups: true,
            metrics_listen: DEFAULT_METRICS_LISTEN,
            socket: PathBuf::from(DEFAULT_SOCKET),
            bpf_pin_dir: PathBuf::from(DEFAULT_BPF_PIN_DIR),
        }
    }
}

/// An IPMP group: interfaces that back each other up, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    /// Explicit probe targets; empty means routers, then multicast discovery.
    pub targets: Vec<IpAddr>,
    pub interfaces: Vec<InterfaceConfig>,
}

/// One underlying interface of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    /// Source of IPv4 probes; IPv6 probes use the link-local address. `None`: link-based only.
    pub test_address: Option<Ipv4Cidr>,
    /// Addresses applications use; they fail over to other interfaces of the group.
    pub data_addresses: Vec<IpCidr>,
    /// A standby carries no data address until an active interface fails.
    pub standby: bool,
}

impl Config {
    /// Reads and validates the TOML file and, when it exists, the Solaris defaults file.
    pub fn load(toml_path: &Path, defaults_path: Option<&Path>) -> Result<Config, ConfigError> {
        let read_error = |path: &Path, source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let toml_text = std::fs::read_to_string(toml_path).map_err(|e| read_error(toml_path, e))?;
        let defaults = match defaults_path {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Some((text, path.display().to_string())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(read_error(path, e)),
            },
            None => None,
        };
        Config::parse(
            &toml_text,
            &toml_path.display().to_string(),
            defaults
                .as_ref()
                .map(|(text, name)| (text.as_str(), name.as_str())),
        )
    }

    /// Parses and validates configuration text; `defaults` is `(text, name)` of the Solaris
    /// defaults file. Names only label error messages.
    pub fn parse(
        toml_text: &str,
        toml_name: &str,
        defaults: Option<(&str, &str)>,
    ) -> Result<Config, ConfigError> {
        let defaults = match defaults {
            Some((text, name)) => parse_defaults_file(&Source { name, text })?,
            None => SolarisDefaults::default(),
        };
        let source = Source {
            name: toml_name,
            text: toml_text,
        };
        let raw: RawConfig = toml::from_str(toml_text).map_err(|e| source.toml_error(&e))?;
        Validator::new(source).config(raw, defaults)
    }

    /// The group called `name`, if configured.
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|group| group.name == name)
    }
}

impl GroupConfig {
    /// The member interface called `name`, if configured in this group.
    pub fn interface(&self, name: &str) -> Option<&InterfaceConfig> {
        self.interfaces
            .iter()
            .find(|interface| interface.name == name)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use testing::*;

    #[test]
    fn issue_example_parses_to_expected_values() {
        let config = parse(ISSUE_EXAMPLE).unwrap();
        assert_eq!(config.daemon, DaemonConfig::default());
        assert_eq!(
            config.daemon.failure_detection_time,
            Duration::from_millis(10_000)
        );
        assert_eq!(
            config.groups,
            vec![GroupConfig {
                name: "g0".into(),
                targets: vec![ip("192.0.2.1")],
                interfaces: vec![
                    InterfaceConfig {
                        name: "h0".into(),
                        test_address: Some(v4cidr("192.0.2.21/24")),
                        data_addresses: vec![cidr("192.0.2.19/24"), cidr("2001:db8::19/64")],
                        standby: false,
                    },
                    InterfaceConfig {
                        name: "h2".into(),
                        test_address: Some(v4cidr("192.0.2.23/24")),
                        data_addresses: vec![],
                        standby: true,
                    },
                ],
            }]
        );
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let config = parse("").unwrap();
        assert!(config.groups.is_empty());
        let daemon = config.daemon;
        assert_eq!(daemon.failure_detection_time, Duration::from_secs(10));
        assert!(daemon.failback);
        assert!(daemon.track_interfaces_only_with_groups);
        assert_eq!(daemon.metrics_listen, "127.0.0.1:9798".parse().unwrap());
        assert_eq!(daemon.socket, Path::new("/run/mpath/mpathd.sock"));
        assert_eq!(daemon.bpf_pin_dir, Path::new("/sys/fs/bpf/mpath"));
    }

    #[test]
    fn every_daemon_key_is_read() {
        let config = parse(
            "[daemon]\nfailure_detection_time_ms = 100\nfailback = false\n\
             track_interfaces_only_with_groups = false\nmetrics_listen = \"[::]:9100\"\n\
             socket = \"/tmp/t/mpathd.sock\"\nbpf_pin_dir = \"/sys/fs/bpf/test-1\"\n",
        )
        .unwrap();
        assert_eq!(
            config.daemon,
            DaemonConfig {
                failure_detection_time: Duration::from_millis(100),
                failback: false,
                track_interfaces_only_with_groups: false,
                metrics_listen: "[::]:9100".parse().unwrap(),
                socket: "/tmp/t/mpathd.sock".into(),
                bpf_pin_dir: "/sys/fs/bpf/test-1".into(),
            }
        );
    }

    #[test]
    fn load_reads_both_files_and_tolerates_a_missing_defaults_file() {
        let dir = std::env::temp_dir().join(format!("mpath-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_path = dir.join("mpathd.toml");
        let defaults_path = dir.join("mpathd");
        std::fs::write(&toml_path, ISSUE_EXAMPLE.replace("failback = true", "")).unwrap();
        std::fs::write(&defaults_path, "FAILBACK=no\n").unwrap();

        let config = Config::load(&toml_path, Some(&defaults_path)).unwrap();
        assert!(!config.daemon.failback);
        let config = Config::load(&toml_path, Some(&dir.join("absent"))).unwrap();
        assert!(config.daemon.failback);

        std::fs::write(&defaults_path, "FAILBACK=perhaps\n").unwrap();
        let error = Config::load(&toml_path, Some(&defaults_path)).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}:1:10: ", defaults_path.display())),
            "{error}"
        );

        let missing = dir.join("missing.toml");
        let error = Config::load(&missing, None).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}: ", missing.display())),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
