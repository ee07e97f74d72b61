//! First boot of a flashed board: turns the one file a person edits on the SD card's FAT
//! partition (`keelson.yaml`) into the board's configuration, run by
//! `keelson-firstboot.service` before the network and keelson start.
//!
//! Invariants:
//! - A file with any problem changes nothing on the board: every problem is reported together
//!   (console, `/etc/issue.d/keelson.issue`, journal) and the board keeps what it had — on a
//!   first boot, no keelson service at all, so it never joins with half a configuration.
//! - Secrets (the token, the Wi-Fi password) do not stay on the boot partition once applied:
//!   the file is rewritten without them, and they live in mode-0600 files on the root.
//! - The same file is applied once: the SHA-256 of the file as last left is recorded, so later
//!   boots cost one read; editing the file (e.g. fixing a typo) applies it again at the next boot.
//!
//! Which keelson service runs is decided by a marker file, `/etc/keelson/enabled/<unit>`, that
//! the image's drop-ins name in `ConditionPathExists=`: enabling units from inside the boot
//! transaction would need a `daemon-reload` in the middle of it.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::api::labels;
use crate::apiserver::tokens::one_or_many;
use crate::config::ServerUrl;

/// The file a person writes on the boot partition.
pub const BOOT_FILE: &str = "keelson.yaml";
/// SHA-256 of the boot file as firstboot last left it.
const APPLIED: &str = "etc/keelson/firstboot.sha256";
/// What a person at the console sees (agetty shows `/etc/issue.d/*.issue`).
const ISSUE: &str = "etc/issue.d/keelson.issue";
const CONFIG: &str = "etc/keelson/config.yaml";
const REGISTRIES: &str = "etc/keelson/registries.yaml";
const ENABLED: &str = "etc/keelson/enabled";
const NETWORK: &str = "etc/systemd/network/10-keelson.network";
const WIFI_NETWORK: &str = "etc/systemd/network/20-keelson-wifi.network";
const WPA: &str = "etc/wpa_supplicant/wpa_supplicant-wlan0.conf";
/// Enabled only on boards whose file asks for Wi-Fi: on others it would wait 90 s for wlan0.
const WPA_UNIT: &str = "wpa_supplicant@wlan0.service";
const WPA_WANTS: &str = "etc/systemd/system/multi-user.target.wants/wpa_supplicant@wlan0.service";
/// Air-gapped images copied from the boot partition's `images/` (K3s's agent images dir).
const IMAGES: &str = "var/lib/keelson/agent/images";
const UNITS: [(Role, &str); 2] = [
    (Role::Server, "keelson.service"),
    (Role::Agent, "keelson-agent.service"),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} on the boot partition:\n{}", BOOT_FILE, .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Agent,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

/// What happened, for the log line and the exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file was applied (this boot's change).
    Applied {
        role: Role,
        hostname: Option<String>,
    },
    /// The file is the one applied before: nothing to do.
    Unchanged,
    /// No file, but a configuration applied before stays.
    NoFileKeptPrevious,
}

/// The file as written, before validation. Keys are kebab-case like config.yaml's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BootFile {
    role: Option<String>,
    token: Option<String>,
    server: Option<String>,
    hostname: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    node_label: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    node_taint: Vec<String>,
    network: Option<NetworkFile>,
    wifi: Option<WifiFile>,
    #[serde(default, deserialize_with = "one_or_many")]
    ssh_authorized_keys: Vec<String>,
    /// Further keys of `/etc/keelson/config.yaml` (flag names), passed through.
    #[serde(default)]
    config: BTreeMap<String, serde_yaml::Value>,
    /// K3s's registries.yaml, written to `/etc/keelson/registries.yaml`.
    registries: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NetworkFile {
    interface: Option<String>,
    /// `dhcp` (the default) or `ADDRESS/PREFIX`.
    address: Option<String>,
    gateway: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    dns: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct WifiFile {
    ssid: Option<String>,
    password: Option<String>,
    country: Option<String>,
}

/// The board's configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Board {
    pub role: Role,
    token: Option<String>,
    server: Option<String>,
    pub hostname: Option<String>,
    labels: Vec<String>,
    taints: Vec<String>,
    network: Network,
    wifi: Option<Wifi>,
    ssh_keys: Vec<String>,
    extra: BTreeMap<String, serde_yaml::Value>,
    registries: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Network {
    Dhcp {
        interface: Option<String>,
    },
    Static {
        interface: Option<String>,
        address: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        dns: Vec<IpAddr>,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Wifi {
    ssid: String,
    password: Option<String>,
    country: Option<String>,
}

/// Parses and checks the boot file. `kept_token` is the token applied before (the rewritten
/// file no longer holds it). Every problem is listed, each naming its key.
pub fn parse(text: &str, kept_token: Option<&str>) -> Result<Board, Vec<String>> {
    let file: BootFile = if text.trim().is_empty() {
        return Err(vec![
            "the file is empty (it needs at least `role: server` or `role: agent`)".into(),
        ]);
    } else {
        serde_yaml::from_str(text).map_err(|e| vec![format!("not valid: {e}")])?
    };
    let mut problems = Vec::new();
    let role = match file.role.as_deref() {
        Some("server") => Some(Role::Server),
        Some("agent") => Some(Role::Agent),
        Some(other) => {
            problems.push(format!(
                "role: {other:?} is not a role (expected server or agent)"
            ));
            None
        }
        None => {
            problems.push("role: missing (expected server or agent)".into());
            None
        }
    };
    let token = file
        .token
        .filter(|t| !t.trim().is_empty())
        .or_else(|| kept_token.map(str::to_owned));
    if role == Some(Role::Agent) && token.is_none() {
        problems.push(
            "token: missing (an agent joins with the cluster's token, from /var/lib/keelson/server/token on a server)"
                .into(),
        );
    }
    match (&file.server, role) {
        (Some(s), _) => {
            if let Err(e) = ServerUrl::parse(s) {
                problems.push(e.replacen("--server", "server:", 1));
            }
        }
        (None, Some(Role::Agent)) => problems.push(
            "server: missing (an agent needs the server or fixed address to join, e.g. https://192.168.1.10:6443)"
                .into(),
        ),
        (None, _) => {}
    }
    if let Some(h) = &file.hostname
        && !labels::is_dns_label(h)
    {
        problems.push(format!(
            "hostname: {h:?} is not a valid host name (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit)"
        ));
    }
    for l in &file.node_label {
        if let Err(e) = labels::parse_label(l) {
            problems.push(e.replacen("--node-label", "node-label:", 1));
        }
    }
    for t in &file.node_taint {
        if let Err(e) = labels::parse_taint(t) {
            problems.push(e.replacen("--node-taint", "node-taint:", 1));
        }
    }
    let network = parse_network(file.network.unwrap_or_default(), &mut problems);
    let wifi = file.wifi.and_then(|w| parse_wifi(w, &mut problems));
    for (i, key) in file.ssh_authorized_keys.iter().enumerate() {
        let kind = key.split_whitespace().next().unwrap_or("");
        let known = kind.starts_with("ssh-")
            || kind.starts_with("ecdsa-")
            || kind.starts_with("sk-ssh-")
            || kind.starts_with("sk-ecdsa-");
        if !known || key.split_whitespace().count() < 2 || key.contains('\n') {
            problems.push(format!(
                "ssh-authorized-keys[{i}]: not a public key line (expected e.g. \"ssh-ed25519 AAAA... me@laptop\")"
            ));
        }
    }
    const OWN: [&str; 7] = [
        "token",
        "server",
        "node-name",
        "node-label",
        "node-taint",
        "node-ip",
        "config",
    ];
    for key in file.config.keys() {
        if OWN.contains(&key.as_str()) {
            let top = if key == "node-name" {
                "hostname"
            } else {
                key.as_str()
            };
            problems.push(format!(
                "config.{key}: set it as `{top}:` at the top level of {BOOT_FILE}"
            ));
        }
    }
    if file.registries.as_ref().is_some_and(|r| !r.is_mapping()) {
        problems
            .push("registries: expected a map (K3s's registries.yaml: mirrors, configs)".into());
    }
    let Some(role) = role else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let board = Board {
        role,
        token,
        server: file.server,
        hostname: file.hostname,
        labels: file.node_label,
        taints: file.node_taint,
        network,
        wifi,
        ssh_keys: file.ssh_authorized_keys,
        extra: file.config,
        registries: file.registries,
    };
    // The flags themselves, as the keelson that will run checks them.
    check_flags(&board)?;
    Ok(board)
}

fn parse_network(n: NetworkFile, problems: &mut Vec<String>) -> Network {
    if let Some(i) = &n.interface
        && (i.is_empty() || i.len() > 15 || i.contains(['/', ' ']))
    {
        problems.push(format!("network.interface: {i:?} is not an interface name"));
    }
    let interface = n.interface;
    let address = match n.address.as_deref().map(str::trim) {
        None | Some("dhcp") => None,
        Some(a) => match parse_cidr(a) {
            Ok(a) => Some(a),
            Err(why) => {
                problems.push(format!(
                    "network.address: {a:?} {why} (expected dhcp or ADDRESS/PREFIX, e.g. 192.168.1.21/24)"
                ));
                return Network::Dhcp { interface };
            }
        },
    };
    let mut ip = |key: &str, raw: &str| match raw.trim().parse::<IpAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!("network.{key}: {raw:?} is not an IP address"));
            None
        }
    };
    let gateway = n.gateway.as_deref().and_then(|g| ip("gateway", g));
    let dns: Vec<IpAddr> = n.dns.iter().filter_map(|d| ip("dns", d)).collect();
    match address {
        None => {
            if n.gateway.is_some() || !n.dns.is_empty() {
                problems.push(
                    "network: gateway and dns are for a static address (set network.address too, or leave them to DHCP)"
                        .into(),
                );
            }
            Network::Dhcp { interface }
        }
        Some((address, prefix)) => Network::Static {
            interface,
            address,
            prefix,
            gateway,
            dns,
        },
    }
}

fn parse_cidr(raw: &str) -> Result<(IpAddr, u8), &'static str> {
    let (a, p) = raw.split_once('/').ok_or("has no /PREFIX")?;
    let a: IpAddr = a.parse().map_err(|_| "is not an IP address")?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    let p: u8 = p
        .parse()
        .ok()
        .filter(|p| *p <= max && *p > 0)
        .ok_or("has a prefix length out of range")?;
    Ok((a, p))
}

fn parse_wifi(w: WifiFile, problems: &mut Vec<String>) -> Option<Wifi> {
    let Some(ssid) = w.ssid.filter(|s| !s.is_empty() && s.len() <= 32) else {
        problems.push("wifi.ssid: missing or longer than 32 bytes".into());
        return None;
    };
    if let Some(p) = &w.password
        && !(8..=63).contains(&p.len())
    {
        problems.push("wifi.password: WPA passphrases are 8 to 63 characters".into());
    }
    if let Some(c) = &w.country
        && !(c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
    {
        problems.push(format!(
            "wifi.country: {c:?} is not a two-letter country code (e.g. DE, GB, US)"
        ));
    }
    let quoted = |s: &str| s.contains(['"', '\n', '\\']);
    if quoted(&ssid) || w.password.as_deref().is_some_and(quoted) {
        problems.push("wifi: the ssid and password must not hold '\"', '\\' or line breaks".into());
    }
    Some(Wifi {
        ssid,
        password: w.password,
        country: w.country,
    })
}

impl Board {
    /// `/etc/keelson/config.yaml`: keys are flag names of `keelson server|agent`.
    fn config_yaml(&self) -> String {
        use serde_yaml::Value;
        let mut map: BTreeMap<String, Value> = self.extra.clone();
        let list = |v: &[String]| Value::Sequence(v.iter().cloned().map(Value::String).collect());
        if let Some(t) = &self.token {
            map.insert("token".into(), Value::String(t.clone()));
        }
        if let Some(s) = &self.server {
            map.insert("server".into(), Value::String(s.clone()));
        }
        if let Some(h) = &self.hostname {
            map.insert("node-name".into(), Value::String(h.clone()));
        }
        if !self.labels.is_empty() {
            map.insert("node-label".into(), list(&self.labels));
        }
        if !self.taints.is_empty() {
            map.insert("node-taint".into(), list(&self.taints));
        }
        if let Network::Static { address, .. } = &self.network {
            map.insert("node-ip".into(), Value::String(address.to_string()));
        }
        let body = if map.is_empty() {
            String::new()
        } else {
            serde_yaml::to_string(&map).unwrap_or_default()
        };
        format!(
            "# Written by keelson-firstboot from {BOOT_FILE} on the boot partition; edit that file and\n# reboot to change it (keys are `keelson {} --help`'s flag names).\n{body}",
            self.role.name()
        )
    }

    fn network_file(&self) -> String {
        let (interface, body) = match &self.network {
            Network::Dhcp { interface } => (interface, "DHCP=yes\n".to_owned()),
            Network::Static {
                interface,
                address,
                prefix,
                gateway,
                dns,
            } => {
                let mut b = format!("Address={address}/{prefix}\n");
                if let Some(g) = gateway {
                    b.push_str(&format!("Gateway={g}\n"));
                }
                for d in dns {
                    b.push_str(&format!("DNS={d}\n"));
                }
                (interface, b)
            }
        };
        let name = interface.as_deref().unwrap_or("en* eth*");
        format!(
            "# Written by keelson-firstboot from {BOOT_FILE} (network:).\n[Match]\nName={name}\n\n[Network]\n{body}"
        )
    }

    fn wpa_conf(wifi: &Wifi) -> String {
        let mut s =
            String::from("ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev\nupdate_config=0\n");
        if let Some(c) = &wifi.country {
            s.push_str(&format!("country={c}\n"));
        }
        s.push_str(&format!("network={{\n\tssid=\"{}\"\n", wifi.ssid));
        match &wifi.password {
            Some(p) => s.push_str(&format!("\tpsk=\"{p}\"\n")),
            None => s.push_str("\tkey_mgmt=NONE\n"),
        }
        s.push_str("}\n");
        s
    }
}

/// Runs the board's config through the same parser `keelson server|agent` will use, so a
/// bad `config:` key or value is found now rather than by a service failing to start.
fn check_flags(board: &Board) -> Result<(), Vec<String>> {
    static CHECKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("keelson-firstboot-{}-{n}", std::process::id()));
    let file = dir.join("config.yaml");
    let written =
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, board.config_yaml()));
    let checked = written.map(|()| {
        let argv = ["keelson", board.role.name(), "--config"]
            .into_iter()
            .map(std::ffi::OsString::from)
            .chain([file.clone().into_os_string()])
            .collect();
        crate::config::parse_command_line(argv)
    });
    let _ = std::fs::remove_dir_all(&dir);
    let shown = file.display().to_string();
    let explain = |e: crate::config::Error| -> Vec<String> {
        match e {
            crate::config::Error::Invalid(p) => p
                .into_iter()
                .map(|p| p.replace(&format!("config file {shown}"), "config"))
                .collect(),
            crate::config::Error::Clap(e) => vec![format!("config: {}", e.to_string().trim())],
        }
    };
    let cli = match checked {
        Err(e) => return Err(vec![format!("cannot check the configuration: {e}")]),
        Ok(Err(e)) => return Err(explain(e)),
        Ok(Ok(cli)) => cli,
    };
    let host = crate::config::Host::current();
    let result = match cli.command {
        crate::cli::Command::Server(args) => {
            crate::config::ServerConfig::from_args(*args, &host).map(drop)
        }
        crate::cli::Command::Agent(args) => {
            crate::config::AgentConfig::from_args(*args, &host).map(drop)
        }
        _ => Ok(()),
    };
    result.map_err(|e| {
        explain(e)
            .into_iter()
            .map(|p| format!("keelson {} would refuse it: {p}", board.role.name()))
            .collect()
    })
}

/// The boot file with its secrets taken out, comments and layout kept: `token:` and the
/// Wi-Fi `password:` lines become comments saying where the value went.
pub fn without_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_wifi = false;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        if indent == 0 && !trimmed.is_empty() && !trimmed.starts_with('#') {
            in_wifi = trimmed.starts_with("wifi:");
        }
        if indent == 0 && trimmed.starts_with("token:") {
            out.push_str(&format!(
                "# token: applied on first boot, kept in /{CONFIG} (mode 0600); set it here again to change it\n"
            ));
        } else if in_wifi && indent > 0 && trimmed.starts_with("password:") {
            out.push_str(&format!(
                "{}# password: applied on first boot, kept in /{WPA} (mode 0600)\n",
                &line[..indent]
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Applies `<boot>/keelson.yaml` to the system under `root`.
pub fn run(boot: &Path, root: &Path) -> Result<Outcome, Error> {
    let boot_file = boot.join(BOOT_FILE);
    let applied_path = root.join(APPLIED);
    let applied = std::fs::read_to_string(&applied_path).ok();
    // A person writes this file; anything larger than this is not a board's configuration
    // (and must not be read whole into memory at boot).
    const MAX_BYTES: u64 = 1 << 20;
    if let Ok(meta) = std::fs::metadata(&boot_file)
        && meta.len() > MAX_BYTES
    {
        return Err(Error::Invalid(vec![format!(
            "{} bytes, more than a configuration file holds (at most {MAX_BYTES})",
            meta.len()
        )]));
    }
    let text = match std::fs::read_to_string(&boot_file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if applied.is_some() {
                return Ok(Outcome::NoFileKeptPrevious);
            }
            return Err(Error::Invalid(vec![format!(
                "missing: put a {BOOT_FILE} on the boot partition (see keelson.yaml.example beside it) and reboot"
            )]));
        }
        Err(e) => return Err(io_err("read", &boot_file)(e)),
    };
    if applied.as_deref().map(str::trim) == Some(sha256_hex(text.as_bytes()).as_str()) {
        return Ok(Outcome::Unchanged);
    }
    let kept_token = kept_token(root);
    let board = parse(&text, kept_token.as_deref()).map_err(Error::Invalid)?;
    apply(&board, boot, root)?;
    // Last: the boot file without its secrets, and the record that it is applied.
    let cleaned = without_secrets(&text);
    let leaves_secret = match serde_yaml::from_str::<BootFile>(&cleaned) {
        Ok(f) => f.token.is_some() || f.wifi.is_some_and(|w| w.password.is_some()),
        Err(_) => true,
    };
    let cleaned = if leaves_secret {
        // Flow style or anchors the line rewrite does not follow: keep no copy at all.
        format!(
            "# {BOOT_FILE} was applied on first boot; its secrets could not be removed line by line,\n# so it was replaced. The configuration is in /{CONFIG} on the board.\nrole: {}\n",
            board.role.name()
        )
    } else {
        cleaned
    };
    if cleaned != text {
        write_file(&boot_file, cleaned.as_bytes(), 0o644)?;
    }
    write_file(
        &applied_path,
        sha256_hex(cleaned.as_bytes()).as_bytes(),
        0o600,
    )?;
    Ok(Outcome::Applied {
        role: board.role,
        hostname: board.hostname,
    })
}

fn kept_token(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join(CONFIG)).ok()?;
    let map: BTreeMap<String, serde_yaml::Value> = serde_yaml::from_str(&text).ok()?;
    map.get("token")?.as_str().map(str::to_owned)
}

fn apply(board: &Board, boot: &Path, root: &Path) -> Result<(), Error> {
    write_file(&root.join(CONFIG), board.config_yaml().as_bytes(), 0o600)?;
    match &board.registries {
        Some(r) => {
            let text = serde_yaml::to_string(r).unwrap_or_default();
            write_file(&root.join(REGISTRIES), text.as_bytes(), 0o600)?;
        }
        None => remove_file(&root.join(REGISTRIES))?,
    }
    if let Some(h) = &board.hostname {
        write_file(
            &root.join("etc/hostname"),
            format!("{h}\n").as_bytes(),
            0o644,
        )?;
        let hosts = root.join("etc/hosts");
        let old = std::fs::read_to_string(&hosts).unwrap_or_default();
        let mut new: String = old
            .lines()
            .filter(|l| !l.starts_with("127.0.1.1"))
            .map(|l| format!("{l}\n"))
            .collect();
        if !new.contains("localhost") {
            new.insert_str(0, "127.0.0.1\tlocalhost\n");
        }
        new.push_str(&format!("127.0.1.1\t{h}\n"));
        write_file(&hosts, new.as_bytes(), 0o644)?;
        if root == Path::new("/") {
            // The running system took its name from the old /etc/hostname.
            let _ = std::fs::write("/proc/sys/kernel/hostname", h);
        }
    }
    write_file(&root.join(NETWORK), board.network_file().as_bytes(), 0o644)?;
    match &board.wifi {
        Some(w) => {
            write_file(&root.join(WPA), Board::wpa_conf(w).as_bytes(), 0o600)?;
            let net = format!(
                "# Written by keelson-firstboot from {BOOT_FILE} (wifi:).\n[Match]\nName=wlan0\n\n[Network]\nDHCP=yes\n"
            );
            write_file(&root.join(WIFI_NETWORK), net.as_bytes(), 0o644)?;
            let wants = root.join(WPA_WANTS);
            remove_file(&wants)?;
            if let Some(parent) = wants.parent() {
                create_dir(parent, 0o755)?;
            }
            std::os::unix::fs::symlink("/lib/systemd/system/wpa_supplicant@.service", &wants)
                .map_err(io_err("enable Wi-Fi with", &wants))?;
            if root == Path::new("/") && Path::new("/run/systemd/system").exists() {
                // This boot's transaction is already made: queue the start, never wait for it.
                let _ = std::process::Command::new("systemctl")
                    .args(["--no-block", "start", WPA_UNIT])
                    .status();
            }
        }
        None => {
            remove_file(&root.join(WPA))?;
            remove_file(&root.join(WIFI_NETWORK))?;
            remove_file(&root.join(WPA_WANTS))?;
        }
    }
    if !board.ssh_keys.is_empty() {
        let dir = root.join("root/.ssh");
        create_dir(&dir, 0o700)?;
        let keys: String = board.ssh_keys.iter().map(|k| format!("{k}\n")).collect();
        write_file(&dir.join("authorized_keys"), keys.as_bytes(), 0o600)?;
    }
    copy_images(&boot.join("images"), &root.join(IMAGES))?;
    // Last, the switch: which keelson service starts.
    let enabled = root.join(ENABLED);
    create_dir(&enabled, 0o755)?;
    for (role, unit) in UNITS {
        if role == board.role {
            write_file(&enabled.join(unit), b"", 0o644)?;
        } else {
            remove_file(&enabled.join(unit))?;
        }
    }
    Ok(())
}

/// Image tarballs on the boot partition, for boards without a registry: copied (when new or
/// changed in size) to where the node imports them at start.
fn copy_images(from: &Path, to: &Path) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let src = entry.path();
        let is_archive = name.to_str().is_some_and(|n| {
            [".tar", ".tar.gz", ".tgz", ".tar.zst"]
                .iter()
                .any(|s| n.ends_with(s))
        });
        if !is_archive || !src.is_file() {
            continue;
        }
        create_dir(to, 0o700)?;
        let dst = to.join(&name);
        let same = match (std::fs::metadata(&src), std::fs::metadata(&dst)) {
            (Ok(a), Ok(b)) => a.len() == b.len(),
            _ => false,
        };
        if !same {
            let tmp = to.join(format!(".{}.part", name.to_string_lossy()));
            std::fs::copy(&src, &tmp).map_err(io_err("copy the image archive to", &tmp))?;
            std::fs::rename(&tmp, &dst).map_err(io_err("rename", &dst))?;
        }
    }
    Ok(())
}

fn create_dir(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io_err("create the directory", path))
}

/// Written whole or not at all (a power cut mid-write leaves the old file).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        create_dir(parent, 0o755)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.firstboot"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("write", &tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("replace", path))
}

fn remove_file(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// `keelson firstboot`: applies the file and tells a person at the console how it went.
pub fn main(boot: &Path, root: &Path) -> std::process::ExitCode {
    let issue = root.join(ISSUE);
    match run(boot, root) {
        Ok(outcome) => {
            let line = match &outcome {
                Outcome::Applied { role, hostname } => format!(
                    "keelson: {} configured from {BOOT_FILE}{}",
                    role.name(),
                    hostname
                        .as_ref()
                        .map(|h| format!(" as {h}"))
                        .unwrap_or_default()
                ),
                Outcome::Unchanged => {
                    format!("keelson: {BOOT_FILE} unchanged since it was applied")
                }
                Outcome::NoFileKeptPrevious => format!(
                    "keelson: no {BOOT_FILE} on the boot partition; keeping the configuration applied before"
                ),
            };
            println!("{line}");
            if matches!(outcome, Outcome::Applied { .. }) {
                let _ = remove_file(&issue);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            let configured = root
                .join(ENABLED)
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some());
            let keeps = if configured {
                "The board keeps the configuration applied before."
            } else {
                "keelson does not start until this is fixed."
            };
            let text = format!(
                "keelson: cannot configure this board from {e}\n{keeps} Fix {BOOT_FILE} on the boot partition and reboot.\n"
            );
            // agetty expands backslash escapes in issue files.
            let _ = write_file(
                &issue,
                format!("{}\n", text.replace('\\', "\\\\")).as_bytes(),
                0o644,
            );
            print!("{text}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "# a board\nrole: agent\ntoken: K10abababababababababababababababababababababababababababababababab::server:secret\nserver: https://198.18.5.1:6443\nhostname: board-1\nnode-label: [zone=shelf-2]\nnetwork:\n  interface: enp0s1\n  address: 198.18.5.2/24\n  gateway: 198.18.5.1\n  dns: [198.18.5.1]\nwifi:\n  ssid: shed\n  password: correct-horse\n  country: DE\nssh-authorized-keys:\n  - ssh-ed25519 AAAAC3Nza me@laptop\n";

    fn problems(text: &str) -> Vec<String> {
        parse(text, None).expect_err("the file should be refused")
    }

    #[test]
    fn a_complete_agent_file_is_accepted() {
        let b = parse(AGENT, None).expect("valid");
        assert_eq!(b.role, Role::Agent);
        assert_eq!(b.hostname.as_deref(), Some("board-1"));
        let cfg = b.config_yaml();
        assert!(cfg.contains("node-ip: 198.18.5.2"), "{cfg}");
        assert!(cfg.contains("server: https://198.18.5.1:6443"), "{cfg}");
        assert!(cfg.contains("node-name: board-1"), "{cfg}");
        let net = b.network_file();
        assert!(
            net.contains("Name=enp0s1") && net.contains("Address=198.18.5.2/24"),
            "{net}"
        );
        assert!(
            net.contains("Gateway=198.18.5.1") && net.contains("DNS=198.18.5.1"),
            "{net}"
        );
    }

    #[test]
    fn every_problem_is_named_by_its_key() {
        let p = problems(
            "role: agnet\nhostname: Board_1\nnode-taint: [x=y:Sometimes]\nnetwork:\n  address: 10.0.0.300/24\n",
        );
        let all = p.join("\n");
        assert!(all.contains("role: \"agnet\" is not a role"), "{all}");
        assert!(all.contains("hostname: \"Board_1\""), "{all}");
        assert!(all.contains("node-taint:"), "{all}");
        assert!(all.contains("network.address: \"10.0.0.300/24\""), "{all}");
    }

    #[test]
    fn an_agent_without_token_or_server_is_refused() {
        let all = problems("role: agent\n").join("\n");
        assert!(all.contains("token: missing"), "{all}");
        assert!(all.contains("server: missing"), "{all}");
        let all = problems("role: agent\ntoken: x\nserver: http://1.2.3.4\n").join("\n");
        assert!(
            all.contains("server: \"http://1.2.3.4\": it must start with https://"),
            "{all}"
        );
    }

    #[test]
    fn unknown_keys_and_malformed_yaml_are_refused() {
        assert!(problems("role: agent\ntokn: x\n")[0].contains("unknown field `tokn`"));
        assert!(problems("role: [agent\n")[0].starts_with("not valid"));
        assert!(problems("   \n")[0].contains("empty"));
        assert!(problems("role: server\nconfig:\n  no-such-flag: 1\n")[0].contains("no-such-flag"));
        assert!(problems("role: server\nconfig:\n  token: x\n")[0].contains("config.token"));
    }

    #[test]
    fn a_server_needs_no_token() {
        let b = parse("role: server\nconfig:\n  disable: [servicelb]\n", None).expect("valid");
        assert_eq!(b.role, Role::Server);
        assert!(b.config_yaml().contains("servicelb"));
        assert!(b.network_file().contains("DHCP=yes"));
    }

    #[test]
    fn secrets_leave_the_boot_file_and_the_rest_stays() {
        let cleaned = without_secrets(AGENT);
        assert!(
            !cleaned.contains("K10abab") && !cleaned.contains("correct-horse"),
            "{cleaned}"
        );
        assert!(
            cleaned.contains("# a board") && cleaned.contains("ssid: shed"),
            "{cleaned}"
        );
        // Applied again later (after an edit), the token comes from the board.
        let b = parse(&cleaned, Some("K10abababababababababababababababababababababababababababababababab::server:secret")).expect("valid with the kept token");
        assert_eq!(
            b.token.as_deref(),
            Some(
                "K10abababababababababababababababababababababababababababababababab::server:secret"
            )
        );
    }

    #[test]
    fn applying_writes_the_board_once_and_hides_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let (boot, root) = (dir.path().join("boot"), dir.path().join("root"));
        std::fs::create_dir_all(boot.join("images")).unwrap();
        std::fs::write(boot.join(BOOT_FILE), AGENT).unwrap();
        std::fs::write(boot.join("images/app.tar"), b"archive").unwrap();
        let out = run(&boot, &root).expect("applied");
        assert!(matches!(
            out,
            Outcome::Applied {
                role: Role::Agent,
                ..
            }
        ));
        let cfg = std::fs::read_to_string(root.join(CONFIG)).unwrap();
        assert!(cfg.contains("token: K10abababababababababababababababababababababababababababababababab::server:secret"), "{cfg}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join(CONFIG))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            root.join("etc/keelson/enabled/keelson-agent.service")
                .exists()
        );
        assert!(!root.join("etc/keelson/enabled/keelson.service").exists());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "board-1\n"
        );
        assert!(
            std::fs::read_to_string(root.join(WPA))
                .unwrap()
                .contains("psk=\"correct-horse\"")
        );
        let wifi_enabled = std::fs::symlink_metadata(root.join(WPA_WANTS));
        assert!(wifi_enabled.is_ok_and(|m| m.is_symlink()));
        assert!(root.join("root/.ssh/authorized_keys").exists());
        assert_eq!(
            std::fs::read(root.join(IMAGES).join("app.tar")).unwrap(),
            b"archive"
        );
        let boot_text = std::fs::read_to_string(boot.join(BOOT_FILE)).unwrap();
        assert!(!boot_text.contains("K10abab"), "{boot_text}");
        assert_eq!(run(&boot, &root).expect("second boot"), Outcome::Unchanged);
        // An edit (a new label) is applied at the next boot, keeping the token.
        std::fs::write(
            boot.join(BOOT_FILE),
            boot_text.replace("shelf-2", "shelf-3"),
        )
        .unwrap();
        assert!(matches!(run(&boot, &root), Ok(Outcome::Applied { .. })));
        let cfg = std::fs::read_to_string(root.join(CONFIG)).unwrap();
        assert!(
            cfg.contains("zone=shelf-3") && cfg.contains("K10abab"),
            "{cfg}"
        );
    }

    #[test]
    fn a_bad_file_changes_nothing_and_a_fixed_one_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (boot, root) = (dir.path().join("boot"), dir.path().join("root"));
        std::fs::create_dir_all(&boot).unwrap();
        assert!(matches!(run(&boot, &root), Err(Error::Invalid(p)) if p[0].contains("missing")));
        std::fs::write(boot.join(BOOT_FILE), vec![b'#'; (1 << 20) + 1]).unwrap();
        assert!(matches!(run(&boot, &root), Err(Error::Invalid(p)) if p[0].contains("at most")));
        std::fs::write(
            boot.join(BOOT_FILE),
            "role: agent\nserver: https://198.18.5.1\n",
        )
        .unwrap();
        let code = main(&boot, &root);
        assert_eq!(code, std::process::ExitCode::FAILURE);
        let issue = std::fs::read_to_string(root.join(ISSUE)).unwrap();
        assert!(
            issue.contains("token: missing") && issue.contains("does not start"),
            "{issue}"
        );
        assert!(!root.join(CONFIG).exists() && !root.join(ENABLED).exists());
        std::fs::write(
            boot.join(BOOT_FILE),
            "role: agent\nserver: https://198.18.5.1\ntoken: abcdef\n",
        )
        .unwrap();
        assert_eq!(main(&boot, &root), std::process::ExitCode::SUCCESS);
        assert!(!root.join(ISSUE).exists());
        assert!(
            root.join("etc/keelson/enabled/keelson-agent.service")
                .exists()
        );
    }
}
