//! `check-config` and `print-default-config` as an installer sees them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_matrix-intercom"))
}

const VALID: &str = r##"
[matrix]
homeserver = "https://matrix.example.org"
user_id = "@door:example.org"
room = "#door:example.org"

[button]
chip = "gpiochip0"
line = 3
"##;

/// Runs check-config on `text` written with `mode`; returns (exit code, stdout, stderr).
fn check(text: &str, mode: u32) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    check_path(&path)
}

fn check_path(path: &Path) -> (i32, String, String) {
    let out = bin()
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn valid_file_exits_0_with_one_line_summary() {
    let (code, out, err) = check(VALID, 0o600);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("@door:example.org") && out.contains("#door:example.org"));
}

#[test]
fn default_config_is_the_commented_example_and_is_valid() {
    let out = bin().arg("print-default-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for section in [
        "[matrix]",
        "[button]",
        "[led]",
        "[relay]",
        "[audio]",
        "[call]",
        "[livekit]",
        "[tls]",
        "[control]",
        "[log]",
    ] {
        assert!(text.contains(section), "example lacks {section}");
    }
    let (code, _, err) = check(&text, 0o644);
    assert_eq!(code, 0, "the printed default must pass check-config: {err}");
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = VALID.replace("room = ", "rooom = \"x\"\nroom = ");
    let (code, _, err) = check(&text, 0o600);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("config.toml:5:"), "line number missing: {err}");
    assert!(err.contains("rooom"), "{err}");
    assert!(err.contains("remove it or fix its spelling"), "{err}");
}

#[test]
fn wrong_type_names_key() {
    let text = format!("{VALID}\n[call]\nring_timeout_s = \"soon\"\n");
    let (code, _, err) = check(&text, 0o600);
    assert_eq!(code, 2);
    assert!(err.contains("call.ring_timeout_s"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn out_of_range_value_names_key_line_and_range() {
    let text = format!("{VALID}\n[audio]\nvolume = 150\n");
    let (code, _, err) = check(&text, 0o600);
    assert_eq!(code, 2);
    assert!(err.contains("key `audio.volume`"), "{err}");
    assert!(err.contains("from 0 to 100"), "{err}");
    assert!(err.contains(":12:"), "line of the key expected: {err}");
}

#[test]
fn several_problems_are_all_reported() {
    let text = VALID
        .replace("https://matrix.example.org", "matrix.example.org")
        .replace("@door:example.org", "door");
    let (code, _, err) = check(&text, 0o600);
    assert_eq!(code, 2);
    assert!(
        err.contains("matrix.homeserver") && err.contains("https://"),
        "{err}"
    );
    assert!(err.contains("matrix.user_id"), "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
}

#[test]
fn card_number_device_is_refused() {
    let text = format!("{VALID}\n[audio]\ncapture = \"hw:1,0\"\n");
    let (code, _, err) = check(&text, 0o600);
    assert_eq!(code, 2);
    assert!(
        err.contains("audio.capture") && err.contains("CARD="),
        "{err}"
    );
}

#[test]
fn missing_file_says_how_to_create_one() {
    let (code, _, err) = check_path(Path::new("/nonexistent/matrix-intercom.toml"));
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/matrix-intercom.toml"), "{err}");
    assert!(err.contains("print-default-config"), "{err}");
}

#[test]
fn unreadable_file_is_reported() {
    // A directory in place of the file cannot be read even by root.
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = check_path(dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn password_in_world_readable_file_is_refused() {
    let text = VALID.replace("room = ", "password = \"hunter2\"\nroom = ");
    let (code, _, err) = check(&text, 0o644);
    assert_eq!(code, 2);
    assert!(err.contains("matrix.password"), "{err}");
    assert!(err.contains("chmod 0600"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password must not be echoed: {err}"
    );
    let (code, _, err) = check(&text, 0o600);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn password_left_after_a_session_exists_warns() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("session.json"), "{}").unwrap();
    let text = VALID.replace(
        "room = ",
        &format!(
            "password = \"hunter2\"\nstate_dir = \"{}\"\nroom = ",
            dir.path().display()
        ),
    );
    let (code, _, err) = check(&text, 0o600);
    assert_eq!(code, 0, "a warning, not an error: {err}");
    assert!(
        err.contains("warning") && err.contains("remove the password"),
        "{err}"
    );
}

#[test]
fn board_files_are_valid_configs() {
    let boards = Path::new(env!("CARGO_MANIFEST_DIR")).join("board");
    let mut seen = 0;
    for entry in std::fs::read_dir(boards).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, _, err) = check_path(&path);
            assert_eq!(code, 0, "{}: {err}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 5,
        "expected board files for Pi 3/4/5, Zero 2 W and QEMU virt"
    );
}

#[test]
fn provision_imports_the_boot_file_and_keeps_the_last_good_config_when_broken() {
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("matrix-intercom.toml");
    let config = dir.path().join("config.toml");
    let provision = |boot: &Path| {
        bin()
            .args(["provision", "--config"])
            .arg(&config)
            .arg("--boot-file")
            .arg(boot)
            .output()
            .unwrap()
    };
    std::fs::write(&boot, VALID).unwrap();
    let out = provision(&boot);
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&config).unwrap(), VALID);
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the imported config is private");

    std::fs::write(&boot, VALID.replace("line = 3", "line = \"\"\nbogus = 1")).unwrap();
    let out = provision(&boot);
    assert!(
        out.status.success(),
        "a broken boot file never stops the service"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bogus"),
        "the journal says what is wrong: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        VALID,
        "the last good config stays in use"
    );
    let (code, _, _) = check_path(&config);
    assert_eq!(code, 0);
}
