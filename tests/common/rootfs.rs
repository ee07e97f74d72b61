//! A one-file userland for container tests: a root filesystem made from Debian's static
//! busybox (`/bin/busybox`, package `busybox-static`), with every applet linked in `/bin`, a
//! small `/etc/passwd` and `/etc/group`, and the directories runc expects. Tests that run
//! containers use it as an image's unpacked root; nothing is downloaded.
//!
//! [`container_prerequisites`] is the one place that decides whether such a test can run:
//! a missing tool fails the test unless `KEELSON_ALLOW_SKIP=1` (see [`super::skip`]).

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Accounts in every test root: root, an `app` user (1000:1000, also in `video`) and nobody.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
app:x:1000:1000:app:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
pub const GROUP: &str = "root:x:0:\nvideo:x:44:app\napp:x:1000:\nnogroup:x:65534:\n";

/// The tools a container test needs.
#[derive(Debug, Clone)]
pub struct ContainerTools {
    pub runc: PathBuf,
    pub busybox: PathBuf,
}

/// Root, `runc` and busybox: `Some` when all are there; otherwise a failure, or a loud skip
/// (`None`) with `KEELSON_ALLOW_SKIP=1`.
pub fn container_prerequisites(test: &str) -> Option<ContainerTools> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (namespaces, mounts and cgroups need it)".to_string());
    }
    let runc = find_runc();
    if runc.is_none() {
        missing.push("runc (apt-get install -y runc)".to_string());
    }
    if !Path::new(BUSYBOX).is_file() {
        missing.push(format!("{BUSYBOX} (apt-get install -y busybox-static)"));
    }
    if let (true, Some(runc)) = (missing.is_empty(), runc) {
        return Some(ContainerTools {
            runc,
            busybox: PathBuf::from(BUSYBOX),
        });
    }
    let msg = format!("container tests need: {}", missing.join("; "));
    super::skip::missing(test, &msg);
    None
}

/// Builds a busybox root filesystem in `dir` (which may exist; it is filled, not cleared).
pub fn busybox(dir: &Path, tools: &ContainerTools) -> io::Result<()> {
    for d in [
        "bin", "etc", "root", "home/app", "dev", "proc", "sys", "var", "run",
    ] {
        fs::create_dir_all(dir.join(d))?;
    }
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    let home = dir.join("home/app");
    std::os::unix::fs::chown(&home, Some(1000), Some(1000))?;
    let target = dir.join("bin/busybox");
    fs::copy(&tools.busybox, &target)?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
    let list = Command::new(&tools.busybox).arg("--list").output()?;
    if !list.status.success() {
        return Err(io::Error::other("busybox --list failed"));
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = dir.join("bin").join(applet);
        if fs::symlink_metadata(&link).is_err() {
            symlink("busybox", link)?;
        }
    }
    fs::write(dir.join("etc/passwd"), PASSWD)?;
    fs::write(dir.join("etc/group"), GROUP)?;
    Ok(())
}

fn find_runc() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join("runc"))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
