//! The manual pages of mpathd and mpathctl, made from their clap definitions so that they
//! never disagree with `--help`. `cargo xtask package` has the binaries write them (a hidden
//! option of each) into the package.

use std::{fs, io, path::Path};

/// Writes the section 8 page of `cmd` into `dir`, with `extra` (roff: SIGNALS, FILES, ...)
/// after the generated sections, and one page per visible subcommand (`mpathctl-groups.8`),
/// since the main page refers to them.
pub fn write(cmd: clap::Command, extra: &str, dir: &Path) -> io::Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        write_page(sub, "", dir)?;
    }
    write_page(cmd, extra, dir)
}

fn write_page(cmd: clap::Command, extra: &str, dir: &Path) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Manager's Manual");
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
        write(cmd, ".SH FILES\n/etc/tool\n", &dir).unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let main = fs::read_to_string(dir.join("tool.8")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["tool-show.8", "tool.8"]);
        assert!(main.starts_with(".ie \\n(.g .ds Aq"), "{main}");
        assert!(main.contains(".TH tool 8"), "{main}");
        assert!(main.contains("tool\\-show(8)"), "{main}");
        assert!(main.ends_with(".SH FILES\n/etc/tool\n"), "{main}");
    }
}
