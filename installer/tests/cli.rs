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

/// Runs `installer fetch` of `image` with `https_proxy` (and `no_proxy`,
/// when given) as its only proxy settings: how machined passes
/// `machine.env` on.
fn fetch_with_proxy(image: &str, proxy: &str, no_proxy: Option<&str>, cwd: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_installer"));
    for name in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        cmd.env_remove(name);
    }
    cmd.env("https_proxy", proxy);
    if let Some(no_proxy) = no_proxy {
        cmd.env("no_proxy", no_proxy);
    }
    cmd.args([
        "fetch",
        "--image",
        image,
        "--to",
        "out",
        "--trusted-key",
        "k.pub",
    ])
    .current_dir(cwd)
    .output()
    .expect("running the installer binary")
}

#[test]
fn fetch_asks_the_proxy_in_its_environment_unless_no_proxy_says_otherwise() {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    let tmp = tempfile::tempdir().unwrap();
    let out = installer(
        &["keygen", "--private", "k.pem", "--public", "k.pub"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A registry address nothing listens on, and a proxy that answers
    // every CONNECT with 502 and remembers what it was asked.
    let registry = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let image = format!("{registry}/siderolabs/installer:v1.0.0");
    proxy.set_nonblocking(true).unwrap();
    let asked = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut conn = loop {
            match proxy.accept() {
                Ok((conn, _)) => break conn,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("the installer never came to the proxy: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let _ = conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        // The listener goes with the thread: a second try is refused.
        String::from_utf8_lossy(&head).into_owned()
    });
    let out = fetch_with_proxy(&image, &proxy_url, None, tmp.path());
    assert_ne!(out.status.code(), Some(0));
    let head = asked.join().unwrap();
    assert!(
        head.starts_with(&format!("CONNECT {registry} HTTP/1.1\r\n")),
        "{head:?}"
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&image), "{stderr}");

    // With the registry in no_proxy the installer goes to it directly,
    // finds nothing there, and the proxy hears nothing.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let out = fetch_with_proxy(&image, &proxy_url, Some("127.0.0.1"), tmp.path());
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(200) {
        assert!(
            proxy.accept().is_err(),
            "the proxy was asked despite no_proxy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
