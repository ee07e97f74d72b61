//! A private OCI registry for image tests, and images to put in it, made offline.
//!
//! [`Registry::start_plain`] / [`Registry::start_tls_auth`] run Debian's `docker-registry`
//! (Distribution 2.8) on a free port of 127.0.0.1 with its storage in a temporary directory;
//! the TLS one uses a throwaway CA ([`super::tlsdb::Pki`]) and htpasswd basic auth
//! ([`USER`] / [`PASSWORD`]). The process and the directory go when the guard drops; the
//! registry's log is printed when a test fails.
//!
//! Images are built from Debian's `busybox-static` (`/bin/busybox`) and pushed with the
//! registry API (blob upload POST + PUT, manifest PUT) through `curl`:
//!
//! ```ignore
//! let reg = registry::Registry::start_plain();
//! let pushed = reg.push_busybox("library/busybox:1.36");   // OCI index: amd64, arm64/v8, arm/v7
//! // registries.yaml: mirrors: {docker.io: {endpoint: [reg.url()]}} → "busybox:1.36" pulls it.
//! ```
//!
//! Every image's layer holds `/etc/platform` naming the platform it was pushed for; only the
//! entry for this machine's platform carries the real busybox (the others a marker file), so
//! a test can see which entry a pull chose. [`Registry::push_layers`] pushes arbitrary layer
//! tarballs (paths the tar crate would refuse included); [`Registry::corrupt_blob`] changes a
//! stored blob in place so the registry serves bytes that do not match their digest.
//! [`Proxy`] stands in front of a registry to cut answers off, demand bearer tokens (it is
//! its own token server) or answer garbage.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use super::tlsdb::Pki;
use super::{COMMAND_TIMEOUT, run};

pub const USER: &str = "keelson";
pub const PASSWORD: &str = "keelson-test-pass";
/// bcrypt (cost 5) of [`PASSWORD`], as `htpasswd -B` writes it; Distribution accepts only
/// bcrypt, and precomputing it spares CI a package.
const PASSWORD_BCRYPT: &str = "$2b$05$abcdefghijklmnopqrstuuXFxfDq2ZaWs9IozvaO8FzqMwuG06bB6";
const START_TIMEOUT: Duration = Duration::from_secs(30);
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The platforms of [`Registry::push_busybox`]'s index.
pub const PLATFORMS: [&str; 3] = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"];

/// A running `docker-registry`.
pub struct Registry {
    /// config.yml, storage/, registry.log; removed after the process is killed.
    dir: TempDir,
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pki: Option<Pki>,
}

/// What a push put in the registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `repo:tag` as pushed (no registry host).
    pub name: String,
    /// The digest the tag points to (an index for `push_busybox`).
    pub digest: String,
    /// `(platform, manifest digest)` of each manifest.
    pub manifests: Vec<(String, String)>,
    /// Digests of the (gzip) layer blobs, per manifest in order.
    pub layers: Vec<String>,
}

// === impl Registry ===

impl Registry {
    /// Whether the tools are here (`docker-registry`, `curl`, `/bin/busybox`, root for the
    /// unpacker's device nodes and xattrs). Missing ones fail the test unless
    /// `KEELSON_ALLOW_SKIP=1` (see [`super::skip`]).
    pub fn available(test: &str) -> bool {
        let mut missing = Vec::new();
        for tool in ["/usr/bin/docker-registry", "/bin/busybox"] {
            if !Path::new(tool).exists() {
                missing.push(tool.to_owned());
            }
        }
        if Command::new("curl")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            missing.push("curl".into());
        }
        if !nix::unistd::geteuid().is_root() {
            missing.push("root (whiteouts are device nodes)".into());
        }
        if missing.is_empty() {
            return true;
        }
        let msg = format!("the image tests need {}", missing.join(", "));
        super::skip::missing(test, &msg);
        false
    }

    /// Plain HTTP, no authentication.
    pub fn start_plain() -> Registry {
        Registry::start(None)
    }

    /// HTTPS with a throwaway CA ([`Registry::ca`]) and basic auth ([`USER`]/[`PASSWORD`]).
    pub fn start_tls_auth() -> Registry {
        Registry::start(Some(Pki::new()))
    }

    fn start(pki: Option<Pki>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("keelson-registry-")
            .tempdir()
            .expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).expect("storage dir");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: keelson-test-secret\n",
            storage.display()
        );
        if let Some(pki) = &pki {
            let htpasswd = dir.path().join("htpasswd");
            fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n")).expect("htpasswd");
            config += &format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: keelson-test\n    path: {}\n",
                pki.server_cert().display(),
                pki.server_key().display(),
                htpasswd.display()
            );
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).expect("config.yml");
        let log = fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let reg = Registry {
            dir,
            child,
            addr,
            pki,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let (status, _, _) = reg.curl("GET", "/v2/", &[], None);
            // 401 is the TLS registry asking for a password: it is up.
            if status == 200 || status == 401 {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry did not come up on {}:\n{}",
                    reg.addr,
                    reg.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        reg
    }

    /// `http://127.0.0.1:PORT` or `https://…`.
    pub fn url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA that signed the TLS registry's certificate.
    pub fn ca(&self) -> Option<PathBuf> {
        self.pki.as_ref().map(|p| p.ca())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many blob GETs the registry has served (from its access log).
    pub fn blob_gets(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .count()
    }

    /// Pushes a multi-platform busybox as `name` (`repo:tag`): an OCI index of
    /// [`PLATFORMS`], each one layer with `/etc/platform`; this machine's entry has the real
    /// `/bin/busybox`, the others a marker file in its place.
    pub fn push_busybox(&self, name: &str) -> Pushed {
        let host = host_platform();
        let (repo, tag) = split_name(name);
        let mut manifests = Vec::new();
        let mut layers = Vec::new();
        let mut entries = Vec::new();
        for platform in PLATFORMS {
            let tar = busybox_layer(platform, platform == host);
            let (digest, size, layer) = self.push_image_manifest(repo, &[tar], platform);
            layers.extend(layer);
            let mut parts = platform.split('/');
            let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
            let mut p = json!({"os": os, "architecture": arch});
            if let Some(v) = variant {
                p["variant"] = json!(v);
            }
            entries.push(
                json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": size, "platform": p}),
            );
            manifests.push((platform.to_owned(), digest));
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
        }))
        .expect("index JSON");
        let digest = self.put_manifest(repo, tag, OCI_INDEX, &index);
        Pushed {
            name: name.to_owned(),
            digest,
            manifests,
            layers,
        }
    }

    /// Pushes a single-platform image (this machine's) whose layers are the given
    /// uncompressed tarballs, lowest first.
    pub fn push_layers(&self, name: &str, tars: &[Vec<u8>]) -> Pushed {
        let (repo, tag) = split_name(name);
        let host = host_platform();
        let (digest, size, layers) = self.push_image_manifest(repo, tars, &host);
        let _ = size;
        let manifest_bytes = self.blob_or_manifest(repo, &digest);
        let pushed = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest_bytes);
        assert_eq!(pushed, digest);
        Pushed {
            name: name.to_owned(),
            digest: digest.clone(),
            manifests: vec![(host, digest)],
            layers,
        }
    }

    /// Pushes busybox for this machine only, then changes its layer blob in the registry's
    /// storage (same length, other bytes): the registry serves it, its digest is wrong.
    pub fn push_broken(&self, name: &str) -> Pushed {
        // Its own marker, so no other image shares the blob that gets corrupted.
        let marker = format!("{} (broken: {name})", host_platform());
        let pushed = self.push_layers(name, &[busybox_layer(&marker, true)]);
        self.corrupt_blob(&pushed.layers[0]);
        pushed
    }

    /// Flips bytes in the middle of a stored blob.
    pub fn corrupt_blob(&self, digest: &str) {
        let hex = digest.trim_start_matches("sha256:");
        let path = self.dir.path().join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ));
        let mut bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mid = bytes.len() / 2;
        let end = (mid + 16).min(bytes.len());
        for b in &mut bytes[mid..end] {
            *b ^= 0xff;
        }
        fs::write(&path, bytes).expect("write the corrupted blob");
    }

    /// Pushes config and layers and puts the manifest by digest; returns (manifest digest,
    /// size, layer digests).
    fn push_image_manifest(
        &self,
        repo: &str,
        tars: &[Vec<u8>],
        platform: &str,
    ) -> (String, usize, Vec<String>) {
        let mut layer_descs = Vec::new();
        let mut layer_digests = Vec::new();
        let mut diff_ids = Vec::new();
        for tar in tars {
            let gz = gzip(tar);
            diff_ids.push(sha256(tar));
            let d = self.push_blob(repo, &gz);
            layer_descs.push(json!({"mediaType": OCI_LAYER_GZIP, "digest": d, "size": gz.len()}));
            layer_digests.push(d);
        }
        let mut parts = platform.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        let mut config = json!({
            "architecture": arch, "os": os,
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        let config = serde_json::to_vec(&config).expect("config JSON");
        let config_digest = self.push_blob(repo, &config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layer_descs,
        }))
        .expect("manifest JSON");
        let digest = sha256(&manifest);
        let put = self.put_manifest(repo, &digest, OCI_MANIFEST, &manifest);
        assert_eq!(put, digest);
        // Kept so push_layers can tag the same bytes.
        fs::write(self.dir.path().join(digest.replace(':', "-")), &manifest)
            .expect("keep manifest");
        (digest, manifest.len(), layer_digests)
    }

    fn blob_or_manifest(&self, _repo: &str, digest: &str) -> Vec<u8> {
        fs::read(self.dir.path().join(digest.replace(':', "-"))).expect("a pushed manifest")
    }

    /// Monolithic upload: POST for a location, PUT the bytes with their digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let (status, headers, body) =
            self.curl("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], None);
        assert_eq!(status, 202, "blob upload start: {body}");
        let location = header(&headers, "location").expect("upload Location");
        let location = location
            .strip_prefix(&self.url())
            .unwrap_or(&location)
            .to_owned();
        let sep = if location.contains('?') { '&' } else { '?' };
        let (status, _, body) = self.curl(
            "PUT",
            &format!("{location}{sep}digest={digest}"),
            &["Content-Type: application/octet-stream"],
            Some(bytes),
        );
        assert_eq!(status, 201, "blob upload of {digest}: {body}");
        digest
    }

    /// PUTs a manifest or index under `reference` (tag or digest); returns its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let (status, _, body) = self.curl(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[&format!("Content-Type: {media_type}")],
            Some(bytes),
        );
        assert_eq!(
            status,
            201,
            "manifest PUT {repo}:{reference}: {body}\n{}",
            self.log()
        );
        sha256(bytes)
    }

    /// One request through curl: (status, headers, body).
    fn curl(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<&[u8]>,
    ) -> (u16, String, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-i",
            "-X",
            method,
            "-H",
            "Expect:",
            "--max-time",
            "30",
        ]);
        if let Some(pki) = &self.pki {
            cmd.arg("--cacert").arg(pki.ca());
            cmd.args(["-u", &format!("{USER}:{PASSWORD}")]);
        }
        for h in headers {
            cmd.args(["-H", h]);
        }
        let body_file = body.map(|b| {
            let f = self.dir.path().join(format!("body-{}", std::process::id()));
            fs::write(&f, b).expect("write the request body");
            f
        });
        if let Some(f) = &body_file {
            cmd.arg("--data-binary").arg(format!("@{}", f.display()));
        }
        cmd.arg(format!("{}{path}", self.url()));
        let out = run(&mut cmd, COMMAND_TIMEOUT);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head.to_owned(), body.to_owned())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- docker-registry log ({}), last lines ---\n{}",
                self.addr,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// `linux/amd64`, `linux/arm64/v8` or `linux/arm/v7` for this machine.
pub fn host_platform() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64".into(),
        "aarch64" => "linux/arm64/v8".into(),
        "arm" => "linux/arm/v7".into(),
        other => format!("linux/{other}"),
    }
}

/// One busybox layer: `bin/busybox` (the real one, or a marker), `bin/sh` → busybox, and
/// `etc/platform`.
pub fn busybox_layer(platform: &str, real: bool) -> Vec<u8> {
    let busybox = if real {
        fs::read("/bin/busybox").expect("read /bin/busybox (Debian's busybox-static)")
    } else {
        format!("not a binary: the {platform} entry\n").into_bytes()
    };
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["bin/", "etc/", "tmp/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if dir == "tmp/" { 0o1777 } else { 0o755 });
        h.set_size(0);
        b.append_data(&mut h, dir, &[][..]).expect("tar dir");
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..])
        .expect("tar busybox");
    // The applets clients run directly rather than through `sh -c` (`kubectl cp` runs `tar`).
    for applet in ["sh", "tar", "test"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("tar link");
    }
    let marker = format!("{platform}\n");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(marker.len() as u64);
    b.append_data(&mut h, "etc/platform", marker.as_bytes())
        .expect("tar marker");
    b.into_inner().expect("tar")
}

/// A tar entry for hostile layers, written with raw header fields (the tar crate refuses
/// `..` and absolute paths, which is the point here).
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

pub fn raw_tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let (path, kind, link, data): (&str, tar::EntryType, Option<&str>, &[u8]) = match e {
            Entry::File(p, d) => (p, tar::EntryType::Regular, None, d),
            Entry::Dir(p) => (p, tar::EntryType::Directory, None, b""),
            Entry::Symlink(p, t) => (p, tar::EntryType::Symlink, Some(t), b""),
            Entry::Hardlink(p, t) => (p, tar::EntryType::Link, Some(t), b""),
        };
        let raw = h.as_old_mut();
        raw.name = [0; 100];
        raw.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            raw.linkname = [0; 100];
            raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    format!("sha256:{}", hex::encode(d.as_ref()))
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

fn split_name(name: &str) -> (&str, &str) {
    name.rsplit_once(':').unwrap_or((name, "latest"))
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

// === Proxy ===

/// What a [`Proxy`] does to the traffic.
#[derive(Clone)]
pub enum ProxyMode {
    /// Forwards, but closes a connection once `n` bytes of answer went through.
    CutAfter(usize),
    /// Forwards `n` bytes of answer, then sends nothing more for a minute (a pull stuck
    /// midway, to be killed by the test).
    StallAfter(usize),
    /// Requires `Authorization: Bearer <token>`; answers 401 with a Bearer challenge naming
    /// its own `/token` endpoint, which hands out the token to `credentials` (or anyone).
    Bearer {
        token: String,
        credentials: Option<(String, String)>,
    },
    /// Answers blob requests with a 307 to the registry itself (as Docker Hub sends blobs to
    /// a CDN); forwards the rest.
    RedirectBlobs,
    /// Answers every request 200 with an HTML page (a captive portal, a misrouted proxy).
    Html,
    /// Answers every connection with bytes that are not HTTP.
    NotHttp,
}

/// A TCP front for a registry on 127.0.0.1; stops when dropped.
pub struct Proxy {
    pub addr: String,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: &str, mode: ProxyMode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        listener.set_nonblocking(true).expect("nonblocking accept");
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let (stop2, me) = (stop.clone(), addr.clone());
        let accept = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (upstream, mode, me) = (upstream.clone(), mode.clone(), me.clone());
                        let _ = client.set_nonblocking(false);
                        thread::spawn(move || serve(client, &upstream, &mode, &me));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy {
            addr,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut client: TcpStream, upstream: &str, mode: &ProxyMode, me: &str) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(head) = read_head(&mut client) else {
        return;
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    match mode {
        ProxyMode::NotHttp => {
            let _ = client.write_all(b"\x00\x01\x02 this is not HTTP \xff\xfe\r\n\r\n");
        }
        ProxyMode::Html => {
            let body = "<html><body>Please log in to the hotel Wi-Fi</body></html>";
            let _ = write!(
                client,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        ProxyMode::Bearer { token, credentials } => {
            if path.starts_with("/token") {
                let allowed = match credentials {
                    None => true,
                    Some((u, p)) => {
                        use base64::Engine;
                        let want =
                            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                        header(&text, "authorization").is_some_and(|a| a == format!("Basic {want}"))
                    }
                };
                let (status, body) = if allowed {
                    (
                        "200 OK",
                        format!("{{\"token\":\"{token}\",\"expires_in\":300}}"),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        "{\"details\":\"wrong user name or password\"}".to_owned(),
                    )
                };
                let _ = write!(
                    client,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                return;
            }
            if header(&text, "authorization").as_deref() != Some(&format!("Bearer {token}")) {
                let repo = path
                    .strip_prefix("/v2/")
                    .and_then(|p| p.split("/manifests/").next())
                    .and_then(|p| p.split("/blobs/").next())
                    .unwrap_or("");
                let body =
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                let _ = write!(
                    client,
                    "HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Bearer realm=\"http://{me}/token\",service=\"keelson-test\",scope=\"repository:{repo}:pull\"\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                return;
            }
            forward(client, upstream, &head, usize::MAX);
        }
        ProxyMode::CutAfter(n) => forward(client, upstream, &head, *n),
        ProxyMode::RedirectBlobs if path.contains("/blobs/") => {
            let _ = write!(
                client,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{upstream}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        ProxyMode::RedirectBlobs => forward(client, upstream, &head, usize::MAX),
        ProxyMode::StallAfter(n) => forward_then(client, upstream, &head, *n, true),
    }
}

/// Sends the request head upstream and copies the answer back, at most `limit` bytes.
fn forward(client: TcpStream, upstream: &str, head: &[u8], limit: usize) {
    forward_then(client, upstream, head, limit, false)
}

/// [`forward`], then (if `stall`) holding the connection open without a byte more.
fn forward_then(mut client: TcpStream, upstream: &str, head: &[u8], limit: usize, stall: bool) {
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    if up.write_all(head).is_err() {
        return;
    }
    let mut sent = 0;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match up.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = n.min(limit - sent);
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
        if sent >= limit {
            break;
        }
    }
    if stall {
        thread::sleep(Duration::from_secs(60));
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// Reads up to the blank line that ends a request head (GETs carry no body).
fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(head)
}

/// Whether any regular file exists under `dir` (at any depth).
pub fn dir_has_file(dir: &Path) -> bool {
    let Ok(rd) = fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| match e.file_type() {
        Ok(t) if t.is_dir() => dir_has_file(&e.path()),
        Ok(t) => t.is_file(),
        Err(_) => false,
    })
}
