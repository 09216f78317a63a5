//! The manual pages of mpathd and mpathctl, made from their clap definitions so that they
//! never disagree with `--help`. `cargo xtask package` has the binaries write them (a hidden
//! option of each) into the package.

use std::{fs, io, path::Path};

/// Which part of the manual a program's pages belong to: its place in the file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Section 1, programs for every user (/usr/bin): mpathctl.
    UserCommands,
    /// Section 8, daemons and administration (/usr/sbin): mpathd.
    SystemAdministration,
}

impl Section {
    fn number(self) -> &'static str {
        match self {
            Section::UserCommands => "1",
            Section::SystemAdministration => "8",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Section::UserCommands => "User Commands",
            Section::SystemAdministration => "System Manager's Manual",
        }
    }
}

/// Writes the page of `cmd` in `section` into `dir`, with `extra` (roff: SIGNALS, FILES,
/// ...) after the generated sections, and one page per visible subcommand
/// (`mpathctl-groups.1`), since the main page refers to them.
pub fn write(cmd: clap::Command, section: Section, extra: &str, dir: &Path) -> io::Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        write_page(sub, section, "", dir)?;
    }
    write_page(cmd, section, extra, dir)
}

fn write_page(cmd: clap::Command, section: Section, extra: &str, dir: &Path) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd)
        .section(section.number())
        .manual(section.title());
    let mut page = Vec::new();
    man.render(&mut page)?;
    page.extend_from_slice(extra.as_bytes());
    fs::write(dir.join(man.get_filename()), page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_for_the_command_and_its_visible_subcommands() {
        let cmd = clap::Command::new("tool")
            .about("A tool")
            .subcommand(clap::Command::new("show").about("Shows"))
            .subcommand(clap::Command::new("secret").hide(true));
        let dir = std::env::temp_dir().join(format!("mpath-manpages-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        write(cmd, Section::UserCommands, ".SH FILES\n/etc/tool\n", &dir).unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let main = fs::read_to_string(dir.join("tool.1")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["tool-show.1", "tool.1"]);
        assert!(main.starts_with(".ie \\n(.g .ds Aq"), "{main}");
        assert!(main.contains(".TH tool 1"), "{main}");
        assert!(main.contains("tool\\-show(1)"), "{main}");
        assert!(main.ends_with(".SH FILES\n/etc/tool\n"), "{main}");
    }
}
