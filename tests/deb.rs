//! The Debian package (`targets/deb`): built from the test's own debug binary
//! (`KEELSON_DEB_BINARY`, so no release build is needed), checked by lintian, then installed,
//! removed and purged on this machine with dpkg.
//!
//! The install cycle changes the machine: it needs root, dpkg, and a machine with no keelson
//! of its own (no package, no `/usr/bin/keelson`, `/etc/keelson` or `/var/lib/keelson`), and it
//! purges the package again even when it fails. Missing tools fail the test unless
//! `KEELSON_ALLOW_SKIP=1` (see `common/skip.rs`).

#[path = "common/skip.rs"]
mod skip;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The files, directories and links the package may touch, each with what it holds.
type Snapshot = BTreeMap<PathBuf, String>;

const UNITS: [&str; 2] = ["keelson.service", "keelson-agent.service"];
/// Places the package, its scripts, keelson itself or `systemctl enable` write to.
const WATCHED: [&str; 7] = [
    "/usr/bin/keelson",
    "/etc/keelson",
    "/lib/systemd/system/keelson.service",
    "/lib/systemd/system/keelson-agent.service",
    "/etc/systemd/system",
    "/var/lib/keelson",
    "/usr/share/doc/keelson",
];

#[test]
fn package_passes_lintian_with_only_documented_overrides() {
    if !available(
        "package_passes_lintian_with_only_documented_overrides",
        &["dpkg-deb", "lintian"],
    ) {
        return;
    }
    let deb = package();
    let out = run(Command::new("lintian")
        .args([
            "--info",
            "--pedantic",
            "--fail-on",
            "error,warning,info,pedantic",
        ])
        .arg(deb));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    eprintln!("lintian:\n{text}");
    assert!(out.status.success(), "lintian found problems:\n{text}");
    // The overrides file gives each override a reason: a comment right above it.
    let overrides = fs::read_to_string("targets/debian/lintian-overrides").unwrap();
    let mut prev = "";
    for line in overrides.lines() {
        if line.starts_with("keelson:") {
            assert!(
                prev.starts_with('#') || prev.starts_with("keelson:"),
                "override without a reason: {line}"
            );
        }
        prev = line;
    }
}

#[test]
fn package_holds_binary_units_and_example_config() {
    if !available(
        "package_holds_binary_units_and_example_config",
        &["dpkg-deb"],
    ) {
        return;
    }
    let deb = package();
    let listing = stdout(&run(Command::new("dpkg-deb").arg("--contents").arg(deb)));
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/keelson"),
        ("-rw-r--r--", "./lib/systemd/system/keelson.service"),
        ("-rw-r--r--", "./lib/systemd/system/keelson-agent.service"),
        ("-rw-------", "./etc/keelson/config.yaml"),
        ("-rw-r--r--", "./usr/share/doc/keelson/copyright"),
        ("-rw-r--r--", "./usr/share/doc/keelson/changelog.Debian.gz"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.contains("root/root") && l.ends_with(path)),
            "{path} ({mode} root/root) is not in the package:\n{listing}"
        );
    }
    let field = |name: &str| {
        let out = run(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name));
        stdout(&out).trim().to_string()
    };
    assert_eq!(field("Package"), "keelson");
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    let depends = field("Depends");
    for dep in [
        "runc",
        "nftables",
        "containernetworking-plugins",
        "iptables",
        "libc6",
    ] {
        assert!(
            depends
                .split(", ")
                .any(|d| d.split(' ').next() == Some(dep)),
            "Depends lacks {dep}: {depends}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let control = tmp.path().join("control");
    run_ok(
        Command::new("dpkg-deb")
            .arg("--control")
            .arg(deb)
            .arg(&control),
    );
    assert_eq!(
        fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/keelson/config.yaml\n"
    );
    let root = tmp.path().join("root");
    run_ok(
        Command::new("dpkg-deb")
            .arg("--extract")
            .arg(deb)
            .arg(&root),
    );
    for unit in UNITS {
        let text = fs::read_to_string(root.join("lib/systemd/system").join(unit)).unwrap();
        assert!(
            text.contains("\nExecStart=/usr/bin/keelson "),
            "{unit} does not start /usr/bin/keelson:\n{text}"
        );
        assert!(
            !text.contains("/usr/local/bin"),
            "{unit} still names /usr/local/bin:\n{text}"
        );
    }
    // The packaged binary is stripped and is the one the test built.
    let sections = stdout(&run(Command::new("readelf")
        .arg("-S")
        .arg(root.join("usr/bin/keelson"))));
    assert!(
        !sections.contains(".symtab"),
        "/usr/bin/keelson is not stripped"
    );
    let version = stdout(&run(
        Command::new(root.join("usr/bin/keelson")).arg("--version")
    ));
    assert!(
        version.starts_with(&format!("keelson {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    config_example_is_read_by_both_roles(&root.join("etc/keelson/config.yaml"));
}

/// dpkg -i, -r and -P on this machine: nothing is enabled or started, remove keeps the
/// configuration and state, purge leaves the machine as it was, except a state directory
/// with something mounted below it.
#[test]
fn install_enables_nothing_remove_keeps_config_purge_restores_the_machine() {
    let test = "install_enables_nothing_remove_keeps_config_purge_restores_the_machine";
    if !available(test, &["dpkg-deb", "dpkg", "dpkg-query"]) {
        return;
    }
    if !is_root() {
        skip_or_fail(test, "installing a package needs root");
        return;
    }
    let installed = dpkg_status();
    let present: Vec<_> = ["/usr/bin/keelson", "/etc/keelson", "/var/lib/keelson"]
        .into_iter()
        .filter(|p| Path::new(p).symlink_metadata().is_ok())
        .collect();
    if installed.is_some() || !present.is_empty() {
        skip_or_fail(
            test,
            &format!(
                "this machine has a keelson of its own (package: {installed:?}, paths: {present:?}); \
                 the test would purge it"
            ),
        );
        return;
    }
    let deb = package();
    let before = snapshot();
    let _purge = PurgeOnDrop;

    // Install: the files are there, nothing is enabled or running.
    dpkg(&["-i"], deb);
    assert_eq!(dpkg_status().as_deref(), Some("ii"));
    let listed = stdout(&run(Command::new("dpkg").args(["-L", "keelson"])));
    for path in [
        "/usr/bin/keelson",
        "/etc/keelson/config.yaml",
        "/lib/systemd/system/keelson.service",
    ] {
        assert!(
            listed.lines().any(|l| l == path),
            "dpkg -L keelson lacks {path}:\n{listed}"
        );
    }
    let version = stdout(&run(Command::new("/usr/bin/keelson").arg("--version")));
    assert!(version.starts_with("keelson "), "{version}");
    let config = fs::metadata("/etc/keelson/config.yaml").unwrap();
    assert_eq!(config.permissions().mode() & 0o7777, 0o600);
    assert_eq!((config.uid(), config.gid()), (0, 0));
    for unit in UNITS {
        assert!(
            Path::new("/lib/systemd/system").join(unit).is_file(),
            "{unit} not installed"
        );
        assert_eq!(
            wants_links(unit),
            Vec::<PathBuf>::new(),
            "{unit} got enabled"
        );
        if let Ok(out) = Command::new("systemctl")
            .args(["is-enabled", unit])
            .output()
        {
            assert_eq!(
                stdout(&out).trim(),
                "disabled",
                "systemctl is-enabled {unit}: {}",
                stderr(&out)
            );
        }
    }
    assert_eq!(
        keelson_processes(),
        Vec::<String>::new(),
        "a keelson process runs after install"
    );
    assert!(
        !Path::new("/var/lib/keelson").exists(),
        "install made /var/lib/keelson"
    );

    // What running and enabling it would leave: state, the server's kubeconfig, an
    // administrator's edit of the conffile, `systemctl enable`'s link.
    fs::create_dir_all("/var/lib/keelson/server/db").unwrap();
    fs::write("/var/lib/keelson/server/db/state.db", "cluster state").unwrap();
    fs::write("/etc/keelson/keelson.yaml", "kubeconfig").unwrap();
    fs::write(
        "/etc/keelson/config.yaml",
        "token-file: /etc/keelson/token\n",
    )
    .unwrap();
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants");
    let made_wants = !wants.exists();
    fs::create_dir_all(wants).unwrap();
    std::os::unix::fs::symlink(
        "/lib/systemd/system/keelson.service",
        wants.join("keelson.service"),
    )
    .unwrap();

    // Remove: the program goes, configuration and state stay.
    dpkg(&["-r"], "keelson");
    assert_eq!(dpkg_status().as_deref(), Some("rc"));
    for gone in [
        "/usr/bin/keelson",
        "/lib/systemd/system/keelson.service",
        "/lib/systemd/system/keelson-agent.service",
    ] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is still there after remove"
        );
    }
    for kept in [
        "/etc/keelson/config.yaml",
        "/etc/keelson/keelson.yaml",
        "/var/lib/keelson/server/db/state.db",
    ] {
        assert!(Path::new(kept).exists(), "remove deleted {kept}");
    }
    assert_eq!(
        fs::read_to_string("/etc/keelson/config.yaml").unwrap(),
        "token-file: /etc/keelson/token\n"
    );

    // Purge: everything the package and keelson made goes.
    dpkg(&["-P"], "keelson");
    assert_eq!(dpkg_status(), None);
    if made_wants {
        let _ = fs::remove_dir(wants);
    }
    let after = snapshot();
    assert_eq!(
        diff(&before, &after),
        Vec::<String>::new(),
        "purge did not restore the machine"
    );

    // Purge while something is mounted below the state directory (a pod's volume): the
    // directory stays, with a warning, and nothing below the mount is touched.
    dpkg(&["-i"], deb);
    let volume = Path::new("/var/lib/keelson/storage/pvc-1");
    fs::create_dir_all(volume).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "keelson-deb-test"])
        .arg(volume)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "\n!!! not checking purge with a mount below /var/lib/keelson: cannot mount tmpfs here\n"
        );
        dpkg(&["-P"], "keelson");
        return;
    }
    fs::write(volume.join("data"), "pod data").unwrap();
    let out = run(Command::new("dpkg").args(["-P", "keelson"]));
    eprintln!("dpkg -P with a mount:\n{}{}", stdout(&out), stderr(&out));
    let umounted = Command::new("umount").arg(volume).status();
    assert!(out.status.success(), "dpkg -P failed:\n{}", stderr(&out));
    assert!(
        stderr(&out).contains("not removing /var/lib/keelson"),
        "no warning:\n{}",
        stderr(&out)
    );
    assert!(
        umounted.is_ok_and(|s| s.success()),
        "the volume was unmounted by purge"
    );
    assert!(
        volume.is_dir(),
        "purge removed the state directory with a mount below it"
    );
    assert_eq!(dpkg_status(), None);
    fs::remove_dir_all("/var/lib/keelson").unwrap();
    assert_eq!(diff(&before, &snapshot()), Vec::<String>::new());
}

/// Each role parses the example with its own section uncommented (a key it does not know would
/// be an error), and the example as shipped, all comments, is an empty configuration.
fn config_example_is_read_by_both_roles(example: &Path) {
    let text = fs::read_to_string(example).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (role, sections) in [
        ("server", ["a server", "servers and agents"]),
        ("agent", ["an agent", "servers and agents"]),
    ] {
        let mut on = false;
        let mut yaml = String::new();
        for line in text.lines() {
            if let Some(title) = line.strip_prefix("# --- ") {
                on = sections.iter().any(|s| title.starts_with(s));
                continue;
            }
            if on && let Some(setting) = line.strip_prefix("# ") {
                // Settings are `key: value`, `key:` or `  - item`; the rest is prose.
                let key = setting.split(':').next().unwrap_or_default();
                let is_key = setting.contains(':')
                    && !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_lowercase() || c == '-');
                if is_key || setting.starts_with("  - ") {
                    yaml.push_str(setting);
                    yaml.push('\n');
                }
            }
        }
        let file = tmp.path().join(format!("{role}.yaml"));
        fs::write(&file, &yaml).unwrap();
        // An unreachable datastore or server: the run fails after the config file is read.
        let out = Command::new(env!("CARGO_BIN_EXE_keelson"))
            .args([role, "--config"])
            .arg(&file)
            .arg("--data-dir")
            .arg(tmp.path().join(role))
            .args(if role == "server" {
                ["--datastore-endpoint", "nosuch://"]
            } else {
                ["--server", "nosuch://"]
            })
            .env_remove("NOTIFY_SOCKET")
            .output()
            .unwrap();
        let err = stderr(&out);
        eprintln!("{role} with the example's settings: {}", err.trim());
        assert!(!out.status.success(), "{role} started with\n{yaml}");
        assert!(
            !err.contains("config file"),
            "{role} rejected the example's keys:\n{yaml}\n{err}"
        );
        assert!(
            err.lines()
                .filter(|l| l.starts_with("error:"))
                .all(|l| l.contains("nosuch://"))
                && err.contains("nosuch://"),
            "{role} failed for another reason:\n{yaml}\n{err}"
        );
    }
}

/// Builds the package once per test run (the tests share it), into the target directory.
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deb");
        let _ = fs::remove_dir_all(&out_dir);
        let out = run(Command::new("targets/deb")
            .arg("x86_64-unknown-linux-gnu")
            .env("KEELSON_DEB_BINARY", env!("CARGO_BIN_EXE_keelson"))
            .env("KEELSON_DEB_OUT", &out_dir)
            .env("KEELSON_DEB_COMPRESSION", "gzip"));
        eprintln!("{}", stderr(&out));
        assert!(
            out.status.success(),
            "targets/deb failed:\n{}",
            stderr(&out)
        );
        let deb = PathBuf::from(stdout(&out).trim());
        assert_eq!(
            deb,
            out_dir.join(format!("keelson_{}-1_amd64.deb", env!("CARGO_PKG_VERSION")))
        );
        eprintln!(
            "package size: {} bytes (debug binary, gzip)",
            fs::metadata(&deb).unwrap().len()
        );
        deb
    })
}

/// Purges the package when the install test ends, passed or failed, and removes what the
/// test made (none of it existed before: the test checked), so a failed run does not leave a
/// machine the next run refuses.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("/var/lib/keelson/storage/pvc-1")
            .output();
        if dpkg_status().is_some() {
            let _ = Command::new("dpkg").args(["-P", "keelson"]).output();
        }
        let _ = fs::remove_file("/etc/systemd/system/multi-user.target.wants/keelson.service");
        let _ = fs::remove_dir_all("/var/lib/keelson");
        let _ = fs::remove_dir_all("/etc/keelson");
    }
}

fn snapshot() -> Snapshot {
    let mut snap = Snapshot::new();
    for p in WATCHED {
        walk(Path::new(p), &mut snap);
    }
    let status = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev}", "keelson"])
        .output()
        .unwrap();
    snap.insert(
        "dpkg-query keelson".into(),
        format!("{:?} {}", status.status.code(), stdout(&status)),
    );
    snap
}

fn walk(path: &Path, snap: &mut Snapshot) {
    let Ok(meta) = path.symlink_metadata() else {
        return;
    };
    let what = if meta.file_type().is_symlink() {
        format!("link -> {}", fs::read_link(path).unwrap().display())
    } else if meta.is_dir() {
        format!("dir {:o}", meta.mode())
    } else {
        let bytes = fs::read(path).unwrap_or_default();
        format!(
            "file {:o} {} bytes, {:x}",
            meta.mode(),
            bytes.len(),
            fnv(&bytes)
        )
    };
    snap.insert(path.to_path_buf(), what);
    if meta.is_dir() {
        for entry in fs::read_dir(path).unwrap().flatten() {
            walk(&entry.path(), snap);
        }
    }
}

fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => out.push(format!("gone: {} ({v})", k.display())),
            Some(w) if w != v => out.push(format!("changed: {} ({v} -> {w})", k.display())),
            _ => {}
        }
    }
    for (k, w) in after {
        if !before.contains_key(k) {
            out.push(format!("new: {} ({w})", k.display()));
        }
    }
    out
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// `systemctl enable` links to the unit under /etc/systemd/system.
fn wants_links(unit: &str) -> Vec<PathBuf> {
    let mut links = Vec::new();
    for dir in fs::read_dir("/etc/systemd/system")
        .into_iter()
        .flatten()
        .flatten()
    {
        let link = dir.path().join(unit);
        if link.symlink_metadata().is_ok() {
            links.push(link);
        }
    }
    links
}

/// Processes running the installed binary.
fn keelson_processes() -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(exe) = fs::read_link(entry.path().join("exe"))
            && exe.to_string_lossy().starts_with("/usr/bin/keelson")
        {
            found.push(format!(
                "{}: {}",
                entry.file_name().to_string_lossy(),
                exe.display()
            ));
        }
    }
    found
}

/// The package's dpkg status (`ii`, `rc`, ...), None when dpkg does not know it.
fn dpkg_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev}", "keelson"])
        .output()
        .ok()?;
    let status = stdout(&out).trim().to_string();
    (out.status.success() && !status.is_empty() && status != "un").then_some(status)
}

/// Runs dpkg, waiting while another package manager holds its lock.
fn dpkg(args: &[&str], target: impl AsRef<std::ffi::OsStr>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = run(Command::new("dpkg")
            .args(args)
            .arg(target.as_ref())
            .env("DEBIAN_FRONTEND", "noninteractive"));
        eprintln!("dpkg {args:?}:\n{}{}", stdout(&out), stderr(&out));
        if out.status.success() {
            return;
        }
        let locked = stderr(&out).contains("lock");
        assert!(
            locked && Instant::now() < deadline,
            "dpkg {args:?} failed:\n{}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn available(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<_> = tools
        .iter()
        .filter(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip_or_fail(
        test,
        &format!("the package tests need {missing:?} (apt-get install dpkg-dev lintian)"),
    );
    false
}

fn skip_or_fail(test: &str, why: &str) {
    skip::missing(test, why);
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| stdout(&o).trim() == "0")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", stderr(&out));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
