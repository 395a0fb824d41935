//! The `installer` binary as scripts and machined run it: exit codes,
//! progress on stdout, errors on stderr.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use installer::files;
use installer::oci;
use installer::sign::SigningKey;

fn installer(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_installer"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running the installer binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn keygen_then_fetch_a_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let out = installer(&["keygen", "--private", "k.pem", "--public", "k.pub"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mode = fs::metadata(dir.join("k.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let key = SigningKey::load(&dir.join("k.pem")).unwrap();
    assert_eq!(
        fs::read_to_string(dir.join("k.pub")).unwrap(),
        key.public_key_pem()
    );
    assert!(text(&out.stdout).contains(&key.fingerprint()));

    // An existing key is never overwritten.
    let out = installer(&["keygen", "--private", "k.pem", "--public", "k2.pub"], dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("k.pem"), "{}", text(&out.stderr));
    assert_eq!(
        SigningKey::load(&dir.join("k.pem")).unwrap().public_key(),
        key.public_key()
    );

    // An image signed with that key.
    let src = dir.join("src");
    fs::create_dir(&src).unwrap();
    let mut sources = Vec::new();
    for name in files::ALL {
        fs::write(src.join(name), format!("{name}\n")).unwrap();
        sources.push((name, src.join(name)));
    }
    let refs: Vec<(&str, &Path)> = sources.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let layout = dir.join("layout");
    let digest = oci::write_layout(&layout, "v3.1.0", &refs, &key).unwrap();

    let to = dir.join("out");
    let image = layout.display().to_string();
    let out = installer(
        &[
            "fetch",
            "--image",
            &image,
            "--to",
            "out",
            "--trusted-key",
            "k.pub",
        ],
        dir,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("verified signature (key {})", key.fingerprint())),
        "{stdout}"
    );
    assert!(
        stdout.ends_with(&format!("extracted v3.1.0 ({digest}) into out\n")),
        "{stdout}"
    );
    for name in files::ALL {
        assert_eq!(
            fs::read_to_string(to.join(name)).unwrap(),
            format!("{name}\n")
        );
    }
    let info = oci::read_image_info(&to).unwrap();
    assert_eq!(info.manifest_digest, digest.to_string());
    assert!(!to.join(".work").exists());

    // The same image, trusted keys given as a directory holding another key.
    let keys = dir.join("keys");
    fs::create_dir(&keys).unwrap();
    let other = SigningKey::from_pem(SigningKey::generate().unwrap().as_bytes(), "o").unwrap();
    fs::write(keys.join("other.pub"), other.public_key_pem()).unwrap();
    let tar = dir.join("image.tar");
    oci::pack_tar(&layout, &tar).unwrap();
    let image = format!("file://{}", tar.display());
    let out = installer(
        &[
            "fetch",
            "--image",
            &image,
            "--to",
            "out2",
            "--trusted-key",
            "keys",
        ],
        dir,
    );
    // 6: the image failed verification.
    assert_eq!(out.status.code(), Some(6));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("signature: the signature matches none of the 1 trusted keys"),
        "{stderr}"
    );
    assert!(!dir.join("out2").join(files::VMLINUZ).exists());
    assert!(!dir.join("out2").join(".work").exists());
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    // No trusted key: fetching could never verify anything.
    let out = installer(&["fetch", "--image", "/x", "--to", "out"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--trusted-key"));

    let out = installer(
        &["upgrade", "--from", "a", "--esp", "b", "--booted", "C"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("expected A or B"),
        "{}",
        text(&out.stderr)
    );

    let out = installer(&["frobnicate"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_reference_is_a_failure_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::from_pem(SigningKey::generate().unwrap().as_bytes(), "k").unwrap();
    fs::write(tmp.path().join("k.pub"), key.public_key_pem()).unwrap();
    let out = installer(
        &[
            "fetch",
            "--image",
            "./relative",
            "--to",
            "out",
            "--trusted-key",
            "k.pub",
        ],
        tmp.path(),
    );
    // 3: the reference cannot be parsed.
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("image reference \"./relative\" is invalid: a local path must be absolute"),
        "{stderr}"
    );
}
