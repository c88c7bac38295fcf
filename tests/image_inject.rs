//! image/inject-provisioning.sh: writing a provisioning file into an SD-card image's FAT boot
//! partition without root or loop devices. Each test builds its own small partitioned image
//! (image/make-test-disk.sh: sfdisk + mkfs.fat --offset) and reads back with mtools.
//! Needs sfdisk, mtools, dosfstools (scripts/setup.sh installs them).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("image")
        .join(name)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run scripts/setup.sh)"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const BOOT_OFFSET: u64 = 8192 * 512;
const ROOT_OFFSET: u64 = (8192 + 131072) * 512;

fn make_disk(dir: &Path) -> PathBuf {
    let img = dir.join("sd.img");
    ok(Command::new(script("make-test-disk.sh")).arg(&img));
    img
}

/// Reads a file from the image's FAT partition with mtools.
fn read_back(img: &Path, name: &str) -> Vec<u8> {
    let out = run(Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{BOOT_OFFSET}", img.display()))
        .arg(format!("::{name}")));
    assert!(
        out.status.success(),
        "mtype: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn injected_file_is_in_the_boot_partition_and_the_root_partition_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let root_before = fs::read(&img).unwrap()[ROOT_OFFSET as usize..].to_vec();
    let file = dir.path().join("door.toml");
    let text = "[matrix]\nhomeserver = \"https://matrix.example.org\"\npassword = \"p\"\n";
    fs::write(&file, text).unwrap();

    let said = ok(Command::new(script("inject-provisioning.sh"))
        .arg(&img)
        .arg(&file));
    assert!(
        said.contains(&format!("byte offset {BOOT_OFFSET}")),
        "{said}"
    );
    assert_eq!(read_back(&img, "matrix-intercom.toml"), text.as_bytes());
    assert_eq!(
        &fs::read(&img).unwrap()[ROOT_OFFSET as usize..],
        &root_before[..],
        "the Linux partition changed"
    );

    // a second injection replaces the file (no prompt, no duplicate)
    let text2 = "[matrix]\nhomeserver = \"https://other.example.org\"\n";
    fs::write(&file, text2).unwrap();
    ok(Command::new(script("inject-provisioning.sh"))
        .arg(&img)
        .arg(&file));
    assert_eq!(read_back(&img, "matrix-intercom.toml"), text2.as_bytes());
    let listing = ok(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-b")
        .arg("-i")
        .arg(format!("{}@@{BOOT_OFFSET}", img.display()))
        .arg("::"));
    assert_eq!(
        listing.matches("matrix-intercom.toml").count(),
        1,
        "{listing}"
    );
}

#[test]
fn images_without_a_fat_partition_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    fs::write(&file, "x = 1\n").unwrap();

    // no partition table at all
    let blank = dir.path().join("blank.img");
    fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    let out = run(Command::new(script("inject-provisioning.sh"))
        .arg(&blank)
        .arg(&file));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no readable partition table"), "{err}");

    // a partition table whose only partition is Linux
    let linux = dir.path().join("linux.img");
    fs::write(&linux, vec![0u8; 4 << 20]).unwrap();
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("-q")
        .arg(&linux)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().expect("sfdisk (run scripts/setup.sh)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=83\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out = run(Command::new(script("inject-provisioning.sh"))
        .arg(&linux)
        .arg(&file));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no FAT partition"), "{err}");

    // a FAT-typed partition that holds no FAT file system
    let fake = dir.path().join("fake.img");
    fs::write(&fake, vec![0u8; 4 << 20]).unwrap();
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&fake)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=c\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out = run(Command::new(script("inject-provisioning.sh"))
        .arg(&fake)
        .arg(&file));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a FAT file system"), "{err}");

    // compressed images are named as such
    let xz = dir.path().join("os.img.xz");
    fs::write(&xz, b"\xfd7zXZ\0").unwrap();
    let out = run(Command::new(script("inject-provisioning.sh"))
        .arg(&xz)
        .arg(&file));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("decompress it first"),
        "{err}"
    );
}
