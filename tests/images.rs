//! `keelson images` against a real registry (Debian's docker-registry on loopback): pulls
//! through a `registries.yaml` mirror, TLS with basic auth, bearer tokens, platform choice,
//! every kind of bad input, air-gapped import, list and remove. The real binary runs each
//! command with its own `--data-dir`; see `common/registry.rs` for the registry and images.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::{self, Entry, Proxy, ProxyMode, Registry};
use common::{COMMAND_TIMEOUT, run};
use tempfile::TempDir;

/// A node's data dir and registries.yaml, and a way to run `keelson images` with them.
struct Node {
    dir: TempDir,
}

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Node {
    fn new(registries_yaml: &str) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("keelson-images-")
            .tempdir()
            .expect("temp dir");
        fs::write(dir.path().join("registries.yaml"), registries_yaml).expect("registries.yaml");
        fs::create_dir(dir.path().join("data")).expect("data dir");
        Node { dir }
    }

    /// registries.yaml making `url` the only endpoint for docker.io.
    fn mirroring(url: &str) -> Node {
        Node::new(&format!(
            "mirrors:\n  docker.io:\n    endpoint: [\"{url}\"]\n"
        ))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn store(&self) -> PathBuf {
        self.data().join("agent/images")
    }

    fn images(&self, args: &[&str]) -> Ran {
        let out: Output = run(
            Command::new(env!("CARGO_BIN_EXE_keelson"))
                .arg("images")
                .arg("--data-dir")
                .arg(self.data())
                .arg("--private-registry")
                .arg(self.dir.path().join("registries.yaml"))
                // Tests talk to loopback only: never fall back to the real Docker Hub.
                .arg("--disable-default-registry-endpoint")
                .args(args)
                .env_remove("KEELSON_DATA_DIR"),
            COMMAND_TIMEOUT,
        );
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn pull_ok(&self, image: &str, extra: &[&str]) -> Ran {
        let mut args = vec!["pull", image];
        args.extend_from_slice(extra);
        let r = self.images(&args);
        assert!(r.ok, "pull {image} failed:\n{}{}", r.stdout, r.stderr);
        r
    }

    fn pull_err(&self, image: &str, extra: &[&str]) -> String {
        let mut args = vec!["pull", image];
        args.extend_from_slice(extra);
        let r = self.images(&args);
        assert!(
            !r.ok,
            "pull {image} succeeded but should not:\n{}{}",
            r.stdout, r.stderr
        );
        // What an operator sees, in the test log.
        eprintln!(
            "pull {image} {extra:?}: {}",
            r.stderr.lines().last().unwrap_or_default()
        );
        r.stderr
    }

    /// The unpacked layer directories in the store.
    fn layers(&self) -> Vec<PathBuf> {
        match fs::read_dir(self.store().join("layers")) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Asserts a failed pull left nothing behind: no layer, no record, no debris.
    fn assert_nothing_kept(&self) {
        assert!(self.layers().is_empty(), "layers kept: {:?}", self.layers());
        let tmp: Vec<_> = fs::read_dir(self.store().join("tmp"))
            .map(|r| r.flatten().collect())
            .unwrap_or_default();
        assert!(tmp.is_empty(), "debris in tmp/: {tmp:?}");
        let list = self.images(&["list", "-q"]);
        assert_eq!(list.stdout.trim(), "", "images listed after a failed pull");
        // Nothing outside the store in the data dir either.
        let top: Vec<_> = fs::read_dir(self.data())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(top, ["agent"], "data dir holds {top:?}");
    }
}

fn platform_marker(layer: &Path) -> String {
    fs::read_to_string(layer.join("etc/platform"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn pulls_by_short_name_through_a_docker_io_mirror_and_a_second_pull_downloads_nothing() {
    if !Registry::available("pull through mirror") {
        return;
    }
    let reg = Registry::start_plain();
    let pushed = reg.push_busybox("library/busybox:1.36");
    let node = Node::mirroring(&reg.url());

    let first = node.pull_ok("busybox:1.36", &[]);
    assert!(
        first.stderr.contains(&format!("registry={}", reg.url())),
        "{}",
        first.stderr
    );
    let layers = node.layers();
    assert_eq!(layers.len(), 1);
    // The host's entry, with the real busybox, unpacked in overlay format.
    assert_eq!(platform_marker(&layers[0]), registry::host_platform());
    assert_eq!(
        fs::read(layers[0].join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        fs::read_link(layers[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );

    let list = node.images(&["list"]);
    assert!(list.ok);
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with("docker.io/library/busybox"))
        .unwrap_or_else(|| panic!("{}", list.stdout));
    assert!(row.contains("1.36"), "{row}");

    let blob_gets = reg.blob_gets();
    let second = node.pull_ok("docker.io/library/busybox:1.36", &[]);
    assert!(
        second.stderr.contains("already present"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("done, 0B downloaded"),
        "{}",
        second.stderr
    );
    assert_eq!(reg.blob_gets(), blob_gets, "the second pull fetched blobs");

    // By digest, a complete local copy answers without the registry.
    let by_digest = format!("busybox@{}", pushed.digest);
    node.pull_ok(&by_digest, &[]);
    drop(reg);
    let offline = node.pull_ok(&by_digest, &[]);
    assert!(
        offline.stderr.contains("done, 0B downloaded"),
        "{}",
        offline.stderr
    );
}

#[test]
fn chooses_the_index_entry_for_the_platform_including_the_variant() {
    if !Registry::available("platform choice") {
        return;
    }
    let reg = Registry::start_plain();
    reg.push_busybox("library/busybox:multi");
    for (flag, want) in [
        ("linux/arm/v7", "linux/arm/v7"),
        ("linux/arm64", "linux/arm64/v8"),
        ("linux/arm64/v8", "linux/arm64/v8"),
        ("linux/amd64", "linux/amd64"),
    ] {
        let node = Node::mirroring(&reg.url());
        node.pull_ok("busybox:multi", &["--platform", flag]);
        let layers = node.layers();
        assert_eq!(layers.len(), 1, "{flag}");
        assert_eq!(platform_marker(&layers[0]), want, "--platform {flag}");
    }
    let node = Node::mirroring(&reg.url());
    let err = node.pull_err("busybox:multi", &["--platform", "linux/arm/v6"]);
    assert!(
        err.contains(
            "no linux/arm/v6 entry in index (has: linux/amd64, linux/arm64, linux/arm/v7)"
        ),
        "{err}"
    );
    node.assert_nothing_kept();
}

#[test]
fn tls_registry_with_basic_auth_needs_its_ca_and_the_password() {
    if !Registry::available("TLS + basic auth") {
        return;
    }
    let reg = Registry::start_tls_auth();
    reg.push_busybox("app/busybox:v1");
    let image = format!("{}/app/busybox:v1", reg.addr);
    let ca = reg.ca().unwrap();

    // Without the CA: the certificate is not trusted.
    let node = Node::new(&format!(
        "configs:\n  \"{}\":\n    auth: {{username: {}, password: {}}}\n",
        reg.addr,
        registry::USER,
        registry::PASSWORD
    ));
    let err = pull_default(&node, &image).stderr;
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    // Pulled from its own (https) endpoint, so the default endpoint must be allowed here.
    // With the CA but no password: unauthorized.
    let node = Node::new(&format!(
        "configs:\n  \"{}\":\n    tls: {{ca_file: {}}}\n",
        reg.addr,
        ca.display()
    ));
    let r = pull_default(&node, &image);
    assert!(!r.ok && r.stderr.contains("unauthorized"), "{}", r.stderr);
    // Wrong password.
    let node = Node::new(&format!(
        "configs:\n  \"{}\":\n    auth: {{username: {}, password: wrong}}\n    tls: {{ca_file: {}}}\n",
        reg.addr,
        registry::USER,
        ca.display()
    ));
    let r = pull_default(&node, &image);
    assert!(!r.ok && r.stderr.contains("unauthorized"), "{}", r.stderr);
    node.assert_nothing_kept();
    // Both: pulled.
    let node = Node::new(&format!(
        "configs:\n  \"{}\":\n    auth: {{username: {}, password: {}}}\n    tls: {{ca_file: {}}}\n",
        reg.addr,
        registry::USER,
        registry::PASSWORD,
        ca.display()
    ));
    let r = pull_default(&node, &image);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        platform_marker(&node.layers()[0]),
        registry::host_platform()
    );
    // insecure_skip_verify: no CA needed (the password still is).
    let node = Node::new(&format!(
        "configs:\n  \"{}\":\n    auth: {{username: {}, password: {}}}\n    tls: {{insecure_skip_verify: true}}\n",
        reg.addr,
        registry::USER,
        registry::PASSWORD
    ));
    let r = pull_default(&node, &image);
    assert!(r.ok, "{}", r.stderr);
    // The password may also come as an imagePullSecret-like --creds.
    let node = Node::new(&format!(
        "configs:\n  \"{}\":\n    tls: {{ca_file: {}}}\n",
        reg.addr,
        ca.display()
    ));
    let creds = format!("{}:{}", registry::USER, registry::PASSWORD);
    let r = run_images(&node, &["pull", &image, "--creds", &creds]);
    assert!(r.ok, "{}", r.stderr);
}

/// `keelson images pull` with the registry's own endpoint allowed (the image names a
/// loopback registry, so this is still loopback traffic).
fn pull_default(node: &Node, image: &str) -> Ran {
    run_images(node, &["pull", image])
}

fn run_images(node: &Node, args: &[&str]) -> Ran {
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_keelson"))
            .arg("images")
            .arg("--data-dir")
            .arg(node.data())
            .arg("--private-registry")
            .arg(node.dir.path().join("registries.yaml"))
            .args(args),
        COMMAND_TIMEOUT,
    );
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn bearer_tokens_come_from_the_challenge_realm() {
    if !Registry::available("bearer auth") {
        return;
    }
    let reg = Registry::start_plain();
    reg.push_busybox("library/busybox:1.36");
    let token = "t0ken-for-keelson";
    // Anonymous tokens (as Docker Hub hands out for public images).
    let open = Proxy::start(
        &reg.addr,
        ProxyMode::Bearer {
            token: token.into(),
            credentials: None,
        },
    );
    let node = Node::mirroring(&open.url());
    node.pull_ok("busybox:1.36", &[]);
    assert_eq!(node.layers().len(), 1);

    // Tokens only for a user: refused without credentials, given with them.
    let closed = Proxy::start(
        &reg.addr,
        ProxyMode::Bearer {
            token: token.into(),
            credentials: Some(("alice".into(), "s3cret".into())),
        },
    );
    let node = Node::mirroring(&closed.url());
    let err = node.pull_err("busybox:1.36", &[]);
    assert!(
        err.contains("unauthorized") && err.contains("token server"),
        "{err}"
    );
    node.assert_nothing_kept();
    let node = Node::new(&format!(
        "mirrors:\n  docker.io:\n    endpoint: [\"{}\"]\nconfigs:\n  \"{}\":\n    auth: {{username: alice, password: s3cret}}\n",
        closed.url(),
        closed.addr
    ));
    node.pull_ok("busybox:1.36", &[]);
}

#[test]
fn missing_images_and_garbage_answers_are_clear_errors_and_the_next_pull_works() {
    if !Registry::available("bad registries") {
        return;
    }
    let reg = Registry::start_plain();
    reg.push_busybox("library/busybox:1.36");
    let node = Node::mirroring(&reg.url());

    let err = node.pull_err("busybox:does-not-exist", &[]);
    assert!(
        err.contains("not found") && err.contains(&reg.url()),
        "{err}"
    );
    let err = node.pull_err("no/such-image", &[]);
    assert!(err.contains("not found"), "{err}");
    let err = node.pull_err("Bad_Name", &[]);
    assert!(err.contains("invalid image reference"), "{err}");
    node.assert_nothing_kept();

    let html = Proxy::start(&reg.addr, ProxyMode::Html);
    let node_html = Node::mirroring(&html.url());
    let err = node_html.pull_err("busybox:1.36", &[]);
    assert!(err.contains("answered \"text/html\""), "{err}");
    node_html.assert_nothing_kept();

    let junk = Proxy::start(&reg.addr, ProxyMode::NotHttp);
    let node_junk = Node::mirroring(&junk.url());
    let err = node_junk.pull_err("busybox:1.36", &[]);
    assert!(
        err.contains(&junk.url()) && err.contains("does not speak HTTP"),
        "{err}"
    );
    node_junk.assert_nothing_kept();

    // Mirrors are tried in order: a garbage one first, then the good one.
    let both = Node::new(&format!(
        "mirrors:\n  docker.io:\n    endpoint: [\"{}\", \"{}\"]\n",
        junk.url(),
        reg.url()
    ));
    both.pull_ok("busybox:1.36", &[]);
    node.pull_ok("busybox:1.36", &[]);
}

#[test]
fn a_blob_whose_digest_does_not_match_is_refused_and_nothing_is_kept() {
    if !Registry::available("digest mismatch") {
        return;
    }
    let reg = Registry::start_plain();
    let broken = reg.push_broken("library/broken:1");
    reg.push_busybox("library/busybox:1.36");
    let node = Node::mirroring(&reg.url());
    let err = node.pull_err("broken:1", &[]);
    assert!(
        err.contains(&format!("digest mismatch for blob {}", broken.layers[0])),
        "{err}"
    );
    node.assert_nothing_kept();
    node.pull_ok("busybox:1.36", &[]);
    assert_eq!(node.layers().len(), 1);
}

#[test]
fn layers_with_escaping_paths_are_refused_and_nothing_is_written_outside() {
    if !Registry::available("path escapes") {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"untouched").unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    let reg = Registry::start_plain();
    let cases = [
        (
            "dotdot",
            registry::raw_tar(&[Entry::File("../../../escaped", b"x")]),
        ),
        (
            "absolute",
            registry::raw_tar(&[Entry::File("/escaped-abs", b"x")]),
        ),
        (
            "through-symlink",
            registry::raw_tar(&[
                Entry::Symlink("evil", &target),
                Entry::File("evil/victim", b"overwritten"),
            ]),
        ),
        (
            "hardlink",
            registry::raw_tar(&[
                Entry::Dir("etc/"),
                Entry::Hardlink("etc/shadow", "../../../etc/shadow"),
            ]),
        ),
    ];
    for (name, tar) in &cases {
        reg.push_layers(&format!("library/{name}:1"), std::slice::from_ref(tar));
    }
    reg.push_busybox("library/busybox:1.36");
    let node = Node::mirroring(&reg.url());
    for (name, _) in &cases {
        let err = node.pull_err(&format!("{name}:1"), &[]);
        assert!(
            err.contains("would escape the layer directory"),
            "{name}: {err}"
        );
        node.assert_nothing_kept();
    }
    assert_eq!(fs::read(&victim).unwrap(), b"untouched");
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
    assert!(!node.dir.path().join("escaped").exists());
    assert!(!Path::new("/escaped-abs").exists());
    // An absolute symlink on its own is fine (resolved inside the container's root).
    reg.push_layers(
        "library/abslink:1",
        &[registry::raw_tar(&[Entry::Symlink("sh", "/bin/busybox")])],
    );
    node.pull_ok("abslink:1", &[]);
    node.pull_ok("busybox:1.36", &[]);
}

#[test]
fn a_pull_cut_off_midway_leaves_no_half_image_and_the_next_pull_works() {
    if !Registry::available("cut-off pull") {
        return;
    }
    let reg = Registry::start_plain();
    reg.push_busybox("library/busybox:1.36");
    // Manifests and configs are a few hundred bytes; the layer ~1 MiB.
    let cut = Proxy::start(&reg.addr, ProxyMode::CutAfter(64 * 1024));
    let node = Node::mirroring(&cut.url());
    let err = node.pull_err("busybox:1.36", &[]);
    assert!(
        err.contains(&cut.url()) && (err.contains("cut off") || err.contains("bytes")),
        "{err}"
    );
    node.assert_nothing_kept();
    fs::write(
        node.dir.path().join("registries.yaml"),
        format!(
            "mirrors:\n  docker.io:\n    endpoint: [\"{}\"]\n",
            reg.url()
        ),
    )
    .unwrap();
    node.pull_ok("busybox:1.36", &[]);
    assert_eq!(
        fs::read(node.layers()[0].join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
}

#[test]
fn imports_docker_archives_and_oci_layouts_and_skips_unchanged_files() {
    if !Registry::available("import") {
        return;
    }
    if Command::new("skopeo").arg("--version").output().is_err()
        || Command::new("zstd").arg("--version").output().is_err()
    {
        let msg = "the import test needs skopeo and zstd";
        common::skip::missing("import", msg);
        return;
    }
    let reg = Registry::start_plain();
    reg.push_busybox("library/busybox:1.36");
    let node = Node::mirroring(&reg.url());
    let incoming = node.store();
    fs::create_dir_all(&incoming).unwrap();
    let src = format!("docker://{}/library/busybox:1.36", reg.addr);
    let skopeo = |dest: &str| {
        let out = run(
            Command::new("skopeo").args(["copy", "--src-tls-verify=false", "--quiet", &src, dest]),
            COMMAND_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "skopeo copy to {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let docker_tar = incoming.join("busybox-docker.tar");
    skopeo(&format!(
        "docker-archive:{}:example.com/saved/busybox:docker",
        docker_tar.display()
    ));
    let oci_tar = node.dir.path().join("busybox-oci.tar");
    skopeo(&format!(
        "oci-archive:{}:example.com/saved/busybox:oci",
        oci_tar.display()
    ));
    // The OCI one compressed with zstd, a copy of the docker one with gzip.
    let out = run(
        Command::new("zstd")
            .args(["-q", "-f", "-o"])
            .arg(incoming.join("busybox-oci.tar.zst"))
            .arg(&oci_tar),
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success());
    let gz = registry::gzip(&fs::read(&docker_tar).unwrap());
    let gz_tar = node.dir.path().join("busybox-docker.tar.gz");
    fs::write(&gz_tar, gz).unwrap();

    let first = node.images(&["import"]);
    assert!(first.ok, "{}{}", first.stdout, first.stderr);
    assert!(
        first
            .stdout
            .contains("imported example.com/saved/busybox:docker"),
        "{}",
        first.stdout
    );
    assert!(
        first
            .stdout
            .contains("imported example.com/saved/busybox:oci"),
        "{}",
        first.stdout
    );
    let list = node.images(&["list"]).stdout;
    assert!(
        list.contains("example.com/saved/busybox")
            && list.contains("docker")
            && list.contains("oci"),
        "{list}"
    );
    // Both name the same layer, unpacked once.
    assert_eq!(node.layers().len(), 1);
    assert_eq!(
        fs::read(node.layers()[0].join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );

    let second = node.images(&["import"]);
    assert!(second.ok);
    assert_eq!(
        second.stdout.matches("unchanged, skipped").count(),
        2,
        "{}",
        second.stdout
    );
    assert!(!second.stdout.contains("imported"), "{}", second.stdout);

    // A .tar.gz given by name; and an archive that is neither layout is an error.
    node.images(&["remove", "example.com/saved/busybox:docker"]);
    let r = node.images(&["import", gz_tar.to_str().unwrap()]);
    assert!(
        r.ok && r
            .stdout
            .contains("imported example.com/saved/busybox:docker"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let junk = node.dir.path().join("junk.tar");
    fs::write(&junk, registry::raw_tar(&[Entry::File("hello", b"x")])).unwrap();
    let r = node.images(&["import", junk.to_str().unwrap()]);
    assert!(
        !r.ok && r.stderr.contains("neither a docker-archive"),
        "{}",
        r.stderr
    );
}

#[test]
fn list_and_remove() {
    if !Registry::available("list and remove") {
        return;
    }
    let reg = Registry::start_plain();
    reg.push_busybox("library/busybox:1.36");
    reg.push_busybox("library/busybox:latest");
    let node = Node::mirroring(&reg.url());
    node.pull_ok("busybox:1.36", &[]);
    node.pull_ok("busybox", &[]);
    let list = node.images(&["list"]).stdout;
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.starts_with("IMAGE"), "{list}");
    // Two tags, one image: one layer, kept while either tag remains.
    assert_eq!(node.layers().len(), 1);
    let r = node.images(&["remove", "busybox"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(node.layers().len(), 1);
    let ids = node.images(&["list", "-q"]).stdout;
    assert_eq!(ids.lines().count(), 1);
    let r = node.images(&["remove", ids.trim()]);
    assert!(r.ok, "{}", r.stderr);
    assert!(node.layers().is_empty());
    assert_eq!(node.images(&["list", "-q"]).stdout.trim(), "");
    let r = node.images(&["remove", "busybox:1.36"]);
    assert!(
        !r.ok && r.stderr.contains("no image docker.io/library/busybox:1.36"),
        "{}",
        r.stderr
    );
}

#[test]
fn two_pulls_of_one_image_at_once_both_succeed_with_one_copy() {
    if !Registry::available("concurrent pulls") {
        return;
    }
    let reg = Registry::start_plain();
    reg.push_busybox("library/busybox:1.36");
    let node = Node::mirroring(&reg.url());
    let pulls: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_keelson"))
                .arg("images")
                .arg("--data-dir")
                .arg(node.data())
                .arg("--private-registry")
                .arg(node.dir.path().join("registries.yaml"))
                .args([
                    "--disable-default-registry-endpoint",
                    "pull",
                    "busybox:1.36",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start keelson images pull")
        })
        .collect();
    for p in pulls {
        let out = p.wait_with_output().expect("wait for the pull");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(node.layers().len(), 1);
    let tmp = fs::read_dir(node.store().join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "debris left in tmp/");
    assert_eq!(node.images(&["list", "-q"]).stdout.lines().count(), 1);
}

/// Benchmark, not a timed test: prints pull throughput of `keelson images pull` beside
/// `skopeo copy` of the same 50 MiB image from the same local registry (median of 3 each).
/// keelson also unpacks the layer; skopeo only writes the blobs to a directory.
/// `cargo test --release --test images -- --ignored bench_pull --nocapture`
#[test]
#[ignore]
fn bench_pull_beside_skopeo() {
    if !Registry::available("bench") {
        return;
    }
    let reg = Registry::start_plain();
    // 50 MiB that gzip cannot shrink (xorshift), so the blob is as big as the content.
    let mut data = vec![0u8; 50 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "data.bin", &data[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let pushed = reg.push_layers("library/bench:50m", &[tar]);
    let size = 50.0 * 1024.0 * 1024.0;
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let mut keelson = Vec::new();
    let mut skopeo = Vec::new();
    for _ in 0..3 {
        let node = Node::mirroring(&reg.url());
        let t = std::time::Instant::now();
        node.pull_ok("bench:50m", &[]);
        keelson.push(t.elapsed().as_secs_f64());
        let dest = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        let out = run(
            Command::new("skopeo").args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{}/library/bench:50m", reg.addr),
                &format!("dir:{}", dest.path().join("x").display()),
            ]),
            COMMAND_TIMEOUT,
        );
        skopeo.push(t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (k, s) = (median(keelson), median(skopeo));
    println!(
        "pull of a 50 MiB image ({}) from docker-registry on loopback, median of 3:\n  keelson images pull: {:.2} s, {:.0} MiB/s (download + verify + unpack)\n  skopeo copy to dir:  {:.2} s, {:.0} MiB/s (download + verify)\n  ratio keelson/skopeo throughput: {:.2}x",
        pushed.digest,
        k,
        size / k / 1048576.0,
        s,
        size / s / 1048576.0,
        s / k
    );
}

#[test]
fn rewrite_rules_map_the_repository_on_the_mirror() {
    if !Registry::available("rewrite") {
        return;
    }
    let reg = Registry::start_plain();
    reg.push_busybox("mirrored/library/busybox:1.36");
    let node = Node::new(&format!(
        "mirrors:\n  docker.io:\n    endpoint: [\"{}\"]\n    rewrite:\n      \"^library/(.*)\": \"mirrored/library/$1\"\n",
        reg.url()
    ));
    node.pull_ok("busybox:1.36", &[]);
    let list = node.images(&["list"]).stdout;
    // Recorded under the name the user gave, not the mirror's path.
    assert!(list.contains("docker.io/library/busybox"), "{list}");
    let plain = Node::mirroring(&reg.url());
    let err = plain.pull_err("busybox:1.36", &[]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn a_pull_killed_midway_leaves_no_image_and_the_next_start_clears_its_debris() {
    if !Registry::available("killed pull") {
        return;
    }
    let reg = Registry::start_plain();
    reg.push_busybox("library/busybox:1.36");
    let stall = Proxy::start(&reg.addr, ProxyMode::StallAfter(256 * 1024));
    let node = Node::mirroring(&stall.url());
    let mut pull = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .arg("images")
        .arg("--data-dir")
        .arg(node.data())
        .arg("--private-registry")
        .arg(node.dir.path().join("registries.yaml"))
        .args([
            "--disable-default-registry-endpoint",
            "pull",
            "busybox:1.36",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start keelson images pull");
    // Wait until the layer is being unpacked (a file appears under tmp/), then kill -9.
    let tmp = node.store().join("tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !registry::dir_has_file(&tmp) {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull never started unpacking"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    pull.kill().expect("kill the pull");
    pull.wait().expect("reap the pull");
    assert!(node.layers().is_empty(), "a half layer is in the store");
    assert!(
        fs::read_dir(&tmp).unwrap().count() > 0,
        "expected debris from the kill"
    );
    // The next run (any `keelson images` command) clears the debris; the image is absent.
    assert_eq!(node.images(&["list", "-q"]).stdout.trim(), "");
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "debris survived the next start"
    );
    fs::write(
        node.dir.path().join("registries.yaml"),
        format!(
            "mirrors:\n  docker.io:\n    endpoint: [\"{}\"]\n",
            reg.url()
        ),
    )
    .unwrap();
    node.pull_ok("busybox:1.36", &[]);
    assert_eq!(
        fs::read(node.layers()[0].join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
}

#[test]
fn blobs_redirected_elsewhere_are_followed() {
    if !Registry::available("redirects") {
        return;
    }
    let reg = Registry::start_plain();
    reg.push_busybox("library/busybox:1.36");
    let cdn = Proxy::start(&reg.addr, ProxyMode::RedirectBlobs);
    let node = Node::mirroring(&cdn.url());
    node.pull_ok("busybox:1.36", &[]);
    assert_eq!(node.layers().len(), 1);
    // The proxy answers every blob request with a 307 only, so the layer came from the
    // redirect's target.
    assert!(reg.blob_gets() >= 2, "{}", reg.log());
}
