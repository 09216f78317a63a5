//! The Solaris tunables file `/etc/default/mpathd`, read so that hosts moving from IPMP keep
//! their settings.

use std::collections::HashMap;
use std::time::Duration;

use super::MIN_FAILURE_DETECTION_TIME_MS;
use super::error::{ConfigError, Problem, Source};
use super::validate::failure_detection_time;

/// The tunables `/etc/default/mpathd` set; unset ones fall back to the built-in defaults.
#[derive(Default)]
pub(super) struct SolarisDefaults {
    pub(super) failure_detection_time: Option<Duration>,
    pub(super) failback: Option<bool>,
    pub(super) track_interfaces_only_with_groups: Option<bool>,
    /// What in.mpathd would accept with a message (see [`super::Config::warnings`]).
    pub(super) warnings: Vec<String>,
}

const FAILURE_DETECTION_TIME_KEY: &str = "FAILURE_DETECTION_TIME";
const FAILBACK_KEY: &str = "FAILBACK";
const TRACK_KEY: &str = "TRACK_INTERFACES_ONLY_WITH_GROUPS";

/// Parses KEY=VALUE lines as in.mpathd reads them: `#` comments, yes/no in any case, and
/// optional quotes around a value. Other keys (Debian hosts keep e.g. `MPATHD_OPTS=` here)
/// are ignored with a warning, and a FAILURE_DETECTION_TIME from 1 to 99 ms is raised to the
/// minimum with in.mpathd's message. Unlike in.mpathd, a value it cannot use at all is
/// refused, not logged.
pub(super) fn parse_defaults_file(source: &Source) -> Result<SolarisDefaults, ConfigError> {
    let mut defaults = SolarisDefaults::default();
    let mut first_lines: HashMap<&'static str, usize> = HashMap::new();
    let mut line_start = 0;
    for line in source.text.split_inclusive('\n') {
        let start = line_start;
        line_start += line.len();
        let content = line.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let content_start = start + (line.len() - line.trim_start().len());
        let content_span = content_start..content_start + content.len();
        let Some((key_text, value_text)) = content.split_once('=') else {
            return Err(source.error(&content_span, Problem::NotKeyValue));
        };
        let key = match key_text.trim() {
            FAILURE_DETECTION_TIME_KEY => FAILURE_DETECTION_TIME_KEY,
            FAILBACK_KEY => FAILBACK_KEY,
            TRACK_KEY => TRACK_KEY,
            other => {
                let line = source.line(&content_span);
                defaults.warnings.push(format!(
                    "{}:{line}: {other} is no in.mpathd tunable; ignored",
                    source.name
                ));
                continue;
            }
        };
        let line_number = source.line(&content_span);
        if let Some(&first_line) = first_lines.get(key) {
            return Err(source.error(
                &content_span,
                Problem::DuplicateDefaultsKey { key, first_line },
            ));
        }
        first_lines.insert(key, line_number);

        let value_offset = content_start + key_text.len() + 1;
        let value_span =
            value_offset + (value_text.len() - value_text.trim_start().len())..content_span.end;
        let value = unquote(value_text.trim());
        match key {
            FAILURE_DETECTION_TIME_KEY => {
                let millis = value.parse::<i64>().map_err(|_not_a_number| {
                    source.error(&value_span, Problem::NotMilliseconds(value.into()))
                })?;
                let clamped = if (1..MIN_FAILURE_DETECTION_TIME_MS).contains(&millis) {
                    defaults.warnings.push(format!(
                        "{}:{line_number}: Too small failure detection time of {millis}, assuming minimum {MIN_FAILURE_DETECTION_TIME_MS}",
                        source.name
                    ));
                    MIN_FAILURE_DETECTION_TIME_MS
                } else {
                    millis
                };
                let fdt = failure_detection_time(clamped)
                    .map_err(|problem| source.error(&value_span, problem))?;
                defaults.failure_detection_time = Some(fdt);
            }
            FAILBACK_KEY => {
                defaults.failback =
                    Some(yes_no(key, value).map_err(|p| source.error(&value_span, p))?);
            }
            _ => {
                defaults.track_interfaces_only_with_groups =
                    Some(yes_no(key, value).map_err(|p| source.error(&value_span, p))?);
            }
        }
    }
    Ok(defaults)
}

fn unquote(value: &str) -> &str {
    ['"', '\'']
        .iter()
        .find_map(|&quote| value.strip_prefix(quote)?.strip_suffix(quote))
        .unwrap_or(value)
}

fn yes_no(key: &'static str, value: &str) -> Result<bool, Problem> {
    if value.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(Problem::NotYesNo {
            key,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::error::Position;
    use crate::config::testing::*;
    use crate::config::{Config, DaemonConfig};

    #[test]
    fn solaris_defaults_file_as_shipped_is_read() {
        let config = Config::parse("", NAME, Some((SOLARIS_DEFAULTS, DEFAULTS_NAME))).unwrap();
        assert_eq!(config.daemon, DaemonConfig::default());
    }

    #[test]
    fn solaris_defaults_apply_when_toml_is_silent() {
        let defaults = "FAILURE_DETECTION_TIME=2000\nFAILBACK=No\n TRACK_INTERFACES_ONLY_WITH_GROUPS = \"no\"\n";
        let config = Config::parse("", NAME, Some((defaults, DEFAULTS_NAME))).unwrap();
        assert_eq!(config.daemon.failure_detection_time, Duration::from_secs(2));
        assert!(!config.daemon.failback);
        assert!(!config.daemon.track_interfaces_only_with_groups);
        // A [daemon] table that sets other keys still lets the defaults file through.
        let config = Config::parse(
            "[daemon]\nsocket = \"/tmp/s\"\n",
            NAME,
            Some((defaults, DEFAULTS_NAME)),
        )
        .unwrap();
        assert_eq!(config.daemon.failure_detection_time, Duration::from_secs(2));
        assert!(!config.daemon.failback);
        assert!(!config.daemon.track_interfaces_only_with_groups);
    }

    #[test]
    fn toml_wins_over_solaris_defaults_key_by_key() {
        let defaults =
            "FAILURE_DETECTION_TIME=2000\nFAILBACK=no\nTRACK_INTERFACES_ONLY_WITH_GROUPS=no\n";
        let toml = "[daemon]\nfailure_detection_time_ms = 500\nfailback = true\n";
        let config = Config::parse(toml, NAME, Some((defaults, DEFAULTS_NAME))).unwrap();
        assert_eq!(
            config.daemon.failure_detection_time,
            Duration::from_millis(500)
        );
        assert!(config.daemon.failback);
        assert!(!config.daemon.track_interfaces_only_with_groups);
    }

    #[test]
    fn solaris_defaults_errors_name_the_defaults_file() {
        for (defaults, line, column, expected) in [
            (
                "# c\nFAILBACK=maybe\n",
                2,
                10,
                Problem::NotYesNo {
                    key: FAILBACK_KEY,
                    value: "maybe".into(),
                },
            ),
            (
                "\n\nFAILURE_DETECTION_TIME=0\n",
                3,
                24,
                Problem::FailureDetectionTimeTooSmall(0),
            ),
            (
                "FAILURE_DETECTION_TIME= 10s\n",
                1,
                25,
                Problem::NotMilliseconds("10s".into()),
            ),
            ("FAILBACK yes\n", 1, 1, Problem::NotKeyValue),
            (
                "FAILBACK=yes\r\nFAILBACK=no\r\n",
                2,
                1,
                Problem::DuplicateDefaultsKey {
                    key: FAILBACK_KEY,
                    first_line: 1,
                },
            ),
        ] {
            let error = Config::parse("", NAME, Some((defaults, DEFAULTS_NAME))).unwrap_err();
            let location = error.location().unwrap();
            assert_eq!(location.file, DEFAULTS_NAME);
            assert_eq!(
                location.position,
                Some(Position { line, column }),
                "{defaults:?}"
            );
            assert_eq!(error.problem(), Some(&expected));
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("{DEFAULTS_NAME}:{line}:{column}: ")),
                "{error}"
            );
        }
    }

    #[test]
    fn what_in_mpathd_accepts_with_a_message_is_a_warning() {
        let defaults = "MPATHD_OPTS=\"-d\"\nFAILURE_DETECTION_TIME=50\n  PROBE_TIME=5\n";
        let config = Config::parse("", NAME, Some((defaults, DEFAULTS_NAME))).unwrap();
        assert_eq!(
            config.daemon.failure_detection_time,
            Duration::from_millis(100)
        );
        assert_eq!(
            config.warnings,
            [
                format!("{DEFAULTS_NAME}:1: MPATHD_OPTS is no in.mpathd tunable; ignored"),
                format!(
                    "{DEFAULTS_NAME}:2: Too small failure detection time of 50, assuming minimum 100"
                ),
                format!("{DEFAULTS_NAME}:3: PROBE_TIME is no in.mpathd tunable; ignored"),
            ]
        );
        // The TOML file stays strict.
        let toml = "[daemon]\nfailure_detection_time_ms = 50\n";
        assert!(Config::parse(toml, NAME, None).is_err());
    }

    #[test]
    fn bad_defaults_file_is_refused_even_when_toml_sets_the_key() {
        let toml = "[daemon]\nfailback = true\n";
        let error =
            Config::parse(toml, NAME, Some(("FAILBACK=sometimes\n", DEFAULTS_NAME))).unwrap_err();
        assert_eq!(error.location().unwrap().file, DEFAULTS_NAME);
    }
}
