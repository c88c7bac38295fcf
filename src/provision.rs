//! First-boot provisioning from the FAT boot partition (`/boot/firmware/matrix-intercom.toml`,
//! editable from any PC) into the daemon's private config (`/etc/matrix-intercom/config.toml`).
//!
//! Owns: reading and validating the provisioning file, importing it atomically (mode 0600), and
//! removing `matrix.password` from a config file once the first login has succeeded, keeping
//! every other line and comment. Must not touch the network, hardware, or the Matrix session.
//!
//! Rules: a provisioning file that does not parse or check is never imported: the last good
//! config stays, and the error names the file, line, key and what to fix. Files are compared
//! with `matrix.password` left out, so a copy that was scrubbed after login does not count as a
//! change and is not imported over a config that still waits for its first login (or the other
//! way round).

use crate::config::{Config, ConfigError, ConfigProblem};
use crate::secret::write_private_atomic;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where Raspberry Pi OS (bookworm and later) mounts the FAT boot partition, plus our file.
pub const DEFAULT_BOOT_FILE: &str = "/boot/firmware/matrix-intercom.toml";

/// The comment left where a password was removed.
pub const SCRUBBED_NOTE: &str =
    "# password removed by matrix-intercom after the first login (the session is in state_dir)";

/// What [`import`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// There is no provisioning file: nothing to do.
    NoFile,
    /// The provisioning file says what the config already says (passwords not compared).
    Unchanged,
    /// The config was replaced by the provisioning file.
    Imported { with_password: bool },
}

/// Why provisioning did not happen. The config file is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{}: cannot read the provisioning file ({err}); check the SD card's boot partition", .file.display())]
    Unreadable { file: PathBuf, err: io::Error },
    /// The provisioning file is not a valid config; each problem has file, line, key and fix.
    #[error("provisioning file not imported, the previous config stays in use:\n{}",
        .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
    #[error("{}: cannot write ({err}); the directory must be writable by the service", .file.display())]
    Write { file: PathBuf, err: io::Error },
    /// `matrix.password` is written in a form the line-based editor does not rewrite.
    #[error("{}:{line}: cannot remove `matrix.password` automatically ({why}); delete that key by hand", .file.display())]
    Unscrubbable {
        file: PathBuf,
        line: usize,
        why: &'static str,
    },
}

impl ProvisionError {
    fn from_config(err: ConfigError) -> Self {
        match err {
            ConfigError::Invalid(problems) => ProvisionError::Invalid(problems),
            ConfigError::Missing(file) => ProvisionError::Unreadable {
                file,
                err: io::ErrorKind::NotFound.into(),
            },
            ConfigError::Unreadable { path, err } => ProvisionError::Unreadable { file: path, err },
        }
    }
}

/// Imports `boot_file` into `config_path` when it exists, is a valid config and differs from
/// the current config (ignoring `matrix.password`). The new config is written atomically with
/// mode 0600; when the config's directory belongs to another user (the service user, while this
/// runs as root before the service starts), the file is given to that user.
pub fn import(boot_file: &Path, config_path: &Path) -> Result<Outcome, ProvisionError> {
    let Some((text, config)) = read_valid(boot_file)? else {
        return Ok(Outcome::NoFile);
    };
    if let Ok(current) = fs::read_to_string(config_path) {
        if without_password(boot_file, &text)? == without_password(config_path, &current)? {
            return Ok(Outcome::Unchanged);
        }
    }
    let write_err = |err| ProvisionError::Write {
        file: config_path.to_path_buf(),
        err,
    };
    write_private_atomic(config_path, text.as_bytes()).map_err(write_err)?;
    give_to_directory_owner(config_path).map_err(write_err)?;
    Ok(Outcome::Imported {
        with_password: config.matrix.password.is_some(),
    })
}

/// Checks `boot_file` as [`import`] would, without importing: `Ok(())` when there is no file or
/// it is a valid config. The daemon uses it to signal a broken file that the provisioning step
/// refused (the device then runs on its previous config).
pub fn check(boot_file: &Path) -> Result<(), ProvisionError> {
    read_valid(boot_file).map(drop)
}

/// The provisioning file's text and config, `None` when there is none.
fn read_valid(boot_file: &Path) -> Result<Option<(String, Config)>, ProvisionError> {
    let text = match fs::read_to_string(boot_file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(ProvisionError::Unreadable {
                file: boot_file.to_path_buf(),
                err,
            })
        }
    };
    // Checked as it will be stored (0600): the FAT copy's own permissions mean nothing.
    let config = Config::parse(boot_file, &text, 0o600).map_err(ProvisionError::from_config)?;
    Ok(Some((text, config)))
}

/// Removes `matrix.password` from the config file at `path` (call it for both copies once the
/// first login succeeded). Every other line, comment and blank line stays as it was; the key's
/// line becomes [`SCRUBBED_NOTE`]. Returns whether a password was removed. The file is rewritten
/// atomically (mode 0600) and only after the result was checked to be the same config minus the
/// password.
pub fn scrub_password(path: &Path) -> Result<bool, ProvisionError> {
    let text = fs::read_to_string(path).map_err(|err| ProvisionError::Unreadable {
        file: path.to_path_buf(),
        err,
    })?;
    let Some(scrubbed) = remove_password(path, &text)? else {
        return Ok(false);
    };
    write_private_atomic(path, scrubbed.as_bytes()).map_err(|err| ProvisionError::Write {
        file: path.to_path_buf(),
        err,
    })?;
    Ok(true)
}

/// The text with the password line replaced, or None when there is no password.
fn remove_password(path: &Path, text: &str) -> Result<Option<String>, ProvisionError> {
    let before = parse_value(path, text)?;
    let has_password = before
        .get("matrix")
        .and_then(|m| m.get("password"))
        .is_some();
    if !has_password {
        return Ok(None);
    }
    let unscrubbable = |line, why| ProvisionError::Unscrubbable {
        file: path.to_path_buf(),
        line,
        why,
    };
    let mut out = String::with_capacity(text.len());
    let mut section = String::new();
    let mut found = None;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            section = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
        }
        let key = line.split_once('=').map(|(k, v)| (k.trim(), v.trim()));
        let is_password = match key {
            Some((k, _)) if !line.starts_with('#') => {
                let k = k.replace(['"', '\'', ' '], "");
                (section == "matrix" && k == "password")
                    || (section.is_empty() && k == "matrix.password")
            }
            _ => false,
        };
        if is_password {
            let value = key.map(|(_, v)| v).unwrap_or("");
            if value.starts_with("\"\"\"") || value.starts_with("'''") {
                return Err(unscrubbable(i + 1, "multi-line string"));
            }
            found = Some(i + 1);
            out.push_str(SCRUBBED_NOTE);
            out.push_str(if raw.ends_with("\r\n") {
                "\r\n"
            } else if raw.ends_with('\n') {
                "\n"
            } else {
                ""
            });
        } else {
            out.push_str(raw);
        }
    }
    let line = found.or_else(|| {
        text.lines()
            .position(|l| l.contains("password"))
            .map(|i| i + 1)
    });
    // The edit must leave exactly the same config minus the password.
    let mut expected = before;
    if let Some(m) = expected.get_mut("matrix").and_then(|m| m.as_table_mut()) {
        m.remove("password");
    }
    match parse_value(path, &out) {
        Ok(after) if found.is_some() && after == expected => Ok(Some(out)),
        _ => Err(unscrubbable(
            line.unwrap_or(1),
            "written as an inline table or in an unusual form",
        )),
    }
}

/// The file's TOML without `matrix.password`, for comparisons.
fn without_password(path: &Path, text: &str) -> Result<toml::Table, ProvisionError> {
    let mut value = parse_value(path, text)?;
    if let Some(m) = value.get_mut("matrix").and_then(|m| m.as_table_mut()) {
        m.remove("password");
    }
    Ok(value)
}

fn parse_value(path: &Path, text: &str) -> Result<toml::Table, ProvisionError> {
    text.parse::<toml::Table>().map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        ProvisionError::Invalid(vec![ConfigProblem {
            file: path.to_path_buf(),
            key: None,
            line,
            message: format!("not valid TOML: {}", e.message()),
        }])
    })
}

/// Gives `file` to the owner of its directory when they differ (root importing for the service).
fn give_to_directory_owner(file: &Path) -> io::Result<()> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let d = fs::metadata(dir)?;
    let f = fs::metadata(file)?;
    if (f.uid(), f.gid()) != (d.uid(), d.gid()) {
        std::os::unix::fs::chown(file, Some(d.uid()), Some(d.gid()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const GOOD: &str = "# front door, provisioned from the SD card\n\
[matrix]\n\
homeserver = \"https://matrix.example.org\"\n\
user_id = \"@frontdoor:example.org\"\n\
# first login only\n\
password = \"hunter2 # not a comment\"   # removed after login\n\
room = \"#door:example.org\"\n\
\n\
[button]\n\
line = 17 # BCM numbering\n";

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn no_provisioning_file_leaves_everything_alone() {
        let d = dir();
        let cfg = d.path().join("config.toml");
        assert_eq!(
            import(&d.path().join("none.toml"), &cfg).unwrap(),
            Outcome::NoFile
        );
        assert!(!cfg.exists());
    }

    #[test]
    fn first_boot_imports_with_mode_0600_and_second_boot_does_nothing() {
        let d = dir();
        let (boot, cfg) = (d.path().join("boot.toml"), d.path().join("config.toml"));
        fs::write(&boot, GOOD).unwrap();
        fs::set_permissions(&boot, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            import(&boot, &cfg).unwrap(),
            Outcome::Imported {
                with_password: true
            }
        );
        assert_eq!(fs::read_to_string(&cfg).unwrap(), GOOD);
        assert_eq!(mode(&cfg), 0o600);
        assert_eq!(import(&boot, &cfg).unwrap(), Outcome::Unchanged);
    }

    #[test]
    fn scrub_removes_only_the_password_and_keeps_comments() {
        let d = dir();
        let cfg = d.path().join("config.toml");
        fs::write(&cfg, GOOD).unwrap();
        assert!(scrub_password(&cfg).unwrap());
        let after = fs::read_to_string(&cfg).unwrap();
        assert!(!after.contains("hunter2"), "{after}");
        assert_eq!(
            after,
            GOOD.replace(
                "password = \"hunter2 # not a comment\"   # removed after login",
                SCRUBBED_NOTE
            )
        );
        assert_eq!(mode(&cfg), 0o600);
        let c = Config::parse(&cfg, &after, 0o600).unwrap();
        assert_eq!(c.matrix.password, None);
        assert_eq!(c.matrix.room, "#door:example.org");
        // nothing left to remove: the file is not rewritten
        assert!(!scrub_password(&cfg).unwrap());
        assert_eq!(fs::read_to_string(&cfg).unwrap(), after);
    }

    #[test]
    fn scrub_handles_dotted_and_quoted_keys_and_crlf() {
        let d = dir();
        let cfg = d.path().join("c.toml");
        let dotted =
            "matrix.homeserver = \"https://m.org\"\r\nmatrix.\"password\" = 'x'\r\n# keep\r\n";
        fs::write(&cfg, dotted).unwrap();
        assert!(scrub_password(&cfg).unwrap());
        let after = fs::read_to_string(&cfg).unwrap();
        assert_eq!(
            after,
            format!("matrix.homeserver = \"https://m.org\"\r\n{SCRUBBED_NOTE}\r\n# keep\r\n")
        );
    }

    #[test]
    fn password_in_another_section_or_comment_is_not_touched() {
        let d = dir();
        let cfg = d.path().join("c.toml");
        let text =
            "[matrix]\nhomeserver = \"h\"\n# password = \"old\"\n[tls]\npassword = \"other\"\n";
        fs::write(&cfg, text).unwrap();
        assert!(!scrub_password(&cfg).unwrap());
        assert_eq!(fs::read_to_string(&cfg).unwrap(), text);
    }

    #[test]
    fn unusual_forms_are_refused_with_the_line_and_the_file_is_kept() {
        let d = dir();
        let cfg = d.path().join("c.toml");
        for (text, line) in [
            ("matrix = { homeserver = \"h\", password = \"p\" }\n", 1),
            (
                "[matrix]\nhomeserver = \"h\"\npassword = \"\"\"\np\n\"\"\"\n",
                3,
            ),
        ] {
            fs::write(&cfg, text).unwrap();
            match scrub_password(&cfg) {
                Err(ProvisionError::Unscrubbable { line: l, file, .. }) => {
                    assert_eq!((l, file), (line, cfg.clone()), "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
            assert_eq!(fs::read_to_string(&cfg).unwrap(), text);
        }
    }

    #[test]
    fn scrubbed_copies_do_not_count_as_a_change() {
        let d = dir();
        let (boot, cfg) = (d.path().join("boot.toml"), d.path().join("config.toml"));
        fs::write(&boot, GOOD).unwrap();
        import(&boot, &cfg).unwrap();
        // login succeeded: the daemon scrubs its copy first, the boot copy later (or reversed)
        scrub_password(&cfg).unwrap();
        assert_eq!(import(&boot, &cfg).unwrap(), Outcome::Unchanged);
        scrub_password(&boot).unwrap();
        assert_eq!(import(&boot, &cfg).unwrap(), Outcome::Unchanged);
        assert!(!fs::read_to_string(&cfg).unwrap().contains("hunter2"));
    }

    #[test]
    fn an_edited_provisioning_file_is_imported_again() {
        let d = dir();
        let (boot, cfg) = (d.path().join("boot.toml"), d.path().join("config.toml"));
        fs::write(&boot, GOOD).unwrap();
        import(&boot, &cfg).unwrap();
        let edited = GOOD.replace("#door:example.org", "#gate:example.org");
        fs::write(&boot, &edited).unwrap();
        assert_eq!(
            import(&boot, &cfg).unwrap(),
            Outcome::Imported {
                with_password: true
            }
        );
        assert_eq!(fs::read_to_string(&cfg).unwrap(), edited);
    }

    #[test]
    fn a_broken_provisioning_file_keeps_the_last_good_config_and_says_where() {
        let d = dir();
        let (boot, cfg) = (d.path().join("boot.toml"), d.path().join("config.toml"));
        fs::write(&boot, GOOD).unwrap();
        import(&boot, &cfg).unwrap();
        // a TOML syntax error on line 4
        fs::write(
            &boot,
            "[matrix]\nhomeserver = \"h\"\nuser_id = \"@a:b\"\nroom = #door\n",
        )
        .unwrap();
        let err = import(&boot, &cfg).unwrap_err();
        let ProvisionError::Invalid(problems) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(problems[0].file, boot);
        assert_eq!(problems[0].line, Some(4), "{err}");
        assert!(
            err.to_string().contains("previous config stays in use"),
            "{err}"
        );
        // a valid TOML file with an unknown key: the config check names the key
        fs::write(&boot, GOOD.replace("room =", "rooom =")).unwrap();
        let err = import(&boot, &cfg).unwrap_err();
        assert!(err.to_string().contains("rooom"), "{err}");
        assert!(
            err.to_string().contains(&boot.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&cfg).unwrap(), GOOD);
    }

    #[test]
    fn unreadable_target_directory_is_a_write_error_naming_the_file() {
        let d = dir();
        let boot = d.path().join("boot.toml");
        fs::write(&boot, GOOD).unwrap();
        let cfg = d.path().join("missing-dir").join("config.toml");
        let err = import(&boot, &cfg).unwrap_err();
        assert!(
            matches!(&err, ProvisionError::Write { file, .. } if file == &cfg),
            "{err:?}"
        );
        assert!(!err.to_string().contains("hunter2"));
    }
}
