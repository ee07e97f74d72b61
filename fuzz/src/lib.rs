//! The harness the fuzz targets share: one `check_*` function per target, each feeding the
//! fuzzer's bytes to one of keelson's decoders of outside input and checking what must hold
//! of what it accepts. The patch targets split the bytes into a target object and a patch,
//! apply the patch, and check what every stored object must satisfy; the protobuf target
//! feeds the protobuf body reader; the image targets feed registry answers to the manifest
//! decoder and layer tarballs to the unpacker; spdy and attach feed their frame decoders;
//! selector feeds label and field selectors (and label and taint flags), endpoint
//! `--datastore-endpoint`, token join tokens, config the config file's grammar, dns the cluster
//! DNS's request handling, cni a CNI plugin's output, tunnel the agent ⇄ server frames. The
//! code under test is built here from source, by `#[path]`, because keelson is a binary
//! without a library; files that name each other by their place in keelson sit at the same
//! paths here (`api::`, `node::`, `agent::`, `tunnel::`).

use serde_json::{Value, json};

#[path = "../../src/apiserver/patch.rs"]
pub mod patch;

#[allow(dead_code)] // The server uses parts of the module this harness does not.
#[path = "../../src/apiserver/protobuf/mod.rs"]
pub mod protobuf;

// The IO-free and file-system-only parts of the image store, at the crate root because they
// name each other as `super::digest`.
#[allow(dead_code)] // The node uses parts these harnesses do not.
#[path = "../../src/node/images/digest.rs"]
pub mod digest;
#[allow(dead_code)]
#[path = "../../src/node/images/manifest.rs"]
pub mod manifest;
#[allow(dead_code)]
#[path = "../../src/node/images/reference.rs"]
pub mod reference;
#[allow(dead_code)]
#[path = "../../src/node/images/unpack.rs"]
pub mod unpack;

#[path = "../../src/node/attach.rs"]
pub mod attach;
#[path = "../../src/apiserver/spdy.rs"]
pub mod spdy;

// Parsers of flags, query parameters and files, whole.
#[path = "../../src/config/file.rs"]
pub mod config_file;
#[allow(dead_code)] // Only the parser is fuzzed; the server uses the rest.
#[path = "../../src/datastore/endpoint.rs"]
pub mod endpoint;
#[path = "../../src/apiserver/selector.rs"]
pub mod selector;
#[allow(dead_code)]
#[path = "../../src/bootstrap/token.rs"]
pub mod token;

// Files that name each other by their place in keelson (`crate::api::cidr`,
// `crate::node::network`) sit at the same paths here.
#[allow(dead_code)]
#[path = "../../src/agent"]
pub mod agent {
    pub mod sysinfo;
}
#[allow(dead_code)]
#[path = "../../src/api"]
pub mod api {
    pub mod cidr;
    pub mod labels;
    pub mod network;
    pub mod quantity;
}
#[allow(dead_code)]
#[path = "../../src/node"]
pub mod node {
    pub mod network;
    pub mod objects;
    // The frames' pod types alone, without the pod worker.
    #[path = "pods/wire.rs"]
    pub mod pods;
    pub mod resources;
    pub mod streams;
    pub mod loadbalancer {
        pub mod claims;
    }
    pub mod dns {
        pub mod message;
        pub mod zone;
    }
    pub mod cni {
        pub mod result;
    }
}

#[path = "../../src/tunnel"]
pub mod tunnel {
    pub mod frame;
}
/// What `agent::sysinfo` names as the kubelet's version; only its Node JSON reads it.
pub const KUBE_VERSION: &str = "v0.0.0+fuzz";

pub use patch::Kind;

/// Reads two JSON values from `data`, the target and the patch, and applies one to the other.
///
/// Panics (a finding) if the patch engine panics, or if it returns an object that fails
/// `check_limits`, does not encode and decode back to itself, or would not decode inside the
/// deepest envelope the server sends (a Table row in a watch event).
pub fn check(kind: Kind, data: &[u8]) {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    let (Some(Ok(target)), Some(Ok(patch))) = (values.next(), values.next()) else {
        return;
    };
    let Ok(out) = patch::apply(kind, &target, &patch) else {
        return;
    };
    assert_eq!(patch::check_limits(&out), Ok(()));
    let bytes = serde_json::to_vec(&out).expect("a Value always encodes");
    assert!(
        bytes.len() <= patch::MAX_OBJECT_BYTES,
        "{} bytes",
        bytes.len()
    );
    let back: Value = serde_json::from_slice(&bytes).expect("the result decodes");
    assert_eq!(back, out);
    let event = json!({"type": "ADDED", "object": {"rows": [{"object": out}]}});
    let wrapped = serde_json::to_vec(&event).expect("a Value always encodes");
    serde_json::from_slice::<Value>(&wrapped).expect("the result decodes inside envelopes");
    if kind == Kind::Merge {
        // RFC 7386 patches are idempotent.
        assert_eq!(patch::apply(kind, &out, &patch).as_ref(), Ok(&out));
    }
}

/// Reads `data` as a protobuf request body. Panics (a finding) if the reader panics, or if it
/// accepts a body and returns something the server could not store: not an object, or one
/// without its apiVersion and kind.
pub fn check_protobuf(data: &[u8]) {
    let Ok(obj) = protobuf::decode(data) else {
        return;
    };
    assert!(
        obj["apiVersion"].is_string() && obj["kind"].is_string(),
        "{obj}"
    );
    let bytes = serde_json::to_vec(&obj).expect("a Value always encodes");
    let back: Value = serde_json::from_slice(&bytes).expect("the result decodes");
    assert_eq!(back, obj);
}

/// Bytes as a registry's manifest answer: the first byte picks a Content-Type, the rest is the
/// body. Decoding must never panic; an index must choose only entries that run on the wanted
/// platform; a config must match the layer count it is checked against.
pub fn check_manifest(data: &[u8]) {
    use manifest::{Manifest, Platform};
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = match selector % 5 {
        0 => None,
        1 => Some(manifest::OCI_INDEX),
        2 => Some(manifest::DOCKER_MANIFEST),
        3 => Some("text/html"),
        _ => Some("application/json"),
    };
    match manifest::decode(content_type, body) {
        Ok(Manifest::Index(entries)) => {
            assert!(entries.len() <= manifest::MAX_ENTRIES);
            for wanted in ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6"] {
                let wanted: Platform = wanted.parse().expect("a valid platform");
                if let Ok(chosen) = manifest::select(&entries, &wanted) {
                    let p = chosen
                        .platform
                        .as_ref()
                        .expect("chosen entries have a platform");
                    let p = Platform::new(&p.os, &p.architecture, p.variant.as_deref());
                    assert_eq!((&p.os, &p.architecture), (&wanted.os, &wanted.architecture));
                }
            }
        }
        Ok(Manifest::Image(m)) => {
            assert!(!m.layers.is_empty() && m.layers.len() <= manifest::MAX_ENTRIES);
        }
        Err(_) => {}
    }
    // The same bytes as an image reference: parsing never panics, and the normalised form
    // parses back to the same reference.
    if let Ok(text) = std::str::from_utf8(body)
        && let Ok(r) = reference::Reference::parse(text)
    {
        let again = reference::Reference::parse(&r.to_string());
        assert_eq!(again.as_ref().ok(), Some(&r), "{text:?} → {r}");
    }
    for layers in [0, 1, 3] {
        if let Ok(c) = manifest::decode_config(body, layers) {
            assert_eq!(c.diff_ids.len(), layers);
        }
    }
}

/// Bytes as a layer blob, unpacked into a fresh directory beside a sentinel file. Whatever the
/// bytes, the unpacker must not panic and must not touch anything outside its directory.
pub fn check_unpack(data: &[u8]) {
    use std::fs;
    // /dev/shm keeps the file system work in memory where there is one.
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("a scratch directory");
    let layer = base.path().join("layer");
    fs::create_dir(&layer).expect("the layer directory");
    let sentinel = base.path().join("sentinel");
    fs::write(&sentinel, b"untouched").expect("the sentinel");
    let result = unpack::unpack(data, &layer);
    let names: Vec<_> = fs::read_dir(base.path())
        .expect("list the scratch directory")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "something was created beside the layer: {names:?}"
    );
    assert_eq!(
        fs::read(&sentinel).expect("read the sentinel"),
        b"untouched"
    );
    if let Ok(u) = result {
        // The diff ID is the digest of the tar stream, which for an uncompressed layer is
        // the input itself.
        if unpack::detect(data) == unpack::Compression::None {
            assert_eq!(u.diff_id, digest::Digest::of(data));
        }
    }
}

/// Feeds `data` to a SPDY decoder in pieces (the first byte sets their size, as websocket
/// messages and socket reads cut a stream anywhere). Panics (a finding) if the decoder panics,
/// or if a frame it accepted does not encode and decode back to itself.
pub fn check_spdy(data: &[u8]) {
    let Some((&size, bytes)) = data.split_first() else {
        return;
    };
    let mut decoder = spdy::Decoder::new();
    let mut frames = Vec::new();
    'feed: for piece in bytes.chunks(usize::from(size).max(1)) {
        decoder.push(piece);
        loop {
            match decoder.next() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    let mut encoder = spdy::Encoder::new();
    let mut wire = Vec::new();
    for frame in &frames {
        encoder
            .encode(frame, &mut wire)
            .expect("a decoded frame encodes");
    }
    let mut again = spdy::Decoder::new();
    again.push(&wire);
    for frame in &frames {
        assert_eq!(
            again.next().expect("it decodes again").as_ref(),
            Some(frame)
        );
    }
}

/// Decodes `data` as a stream of attach-socket frames (what a monitor reads from a node's
/// connection) until the first error. Panics (a finding) if the decoder panics, takes more
/// than it was given or more than one frame's worth, or if a frame does not encode and
/// decode back to itself.
pub fn check_attach(data: &[u8]) {
    let mut rest = data;
    while !rest.is_empty() {
        let Ok((frame, used)) = attach::decode(rest) else {
            return;
        };
        assert!(used <= rest.len() && used <= attach::MAX_FRAME && used >= attach::HEADER);
        let mut wire = Vec::new();
        attach::encode(&frame, &mut wire);
        let (again, again_used) = attach::decode(&wire).expect("an encoded frame decodes");
        assert_eq!(again, frame);
        assert_eq!(again_used, wire.len());
        rest = &rest[used..];
    }
}

/// The first line as a label selector and the rest as a field selector. Panics (a finding) if
/// parsing panics, if the pair is accepted but either half alone is not (or the other way
/// round), or if an accepted selector does not match as its two halves do together. The
/// same text as `--node-label` and `--node-taint` values: an accepted label must be selectable
/// by every operator, and an accepted taint must print and parse back to itself.
pub fn check_selector(data: &[u8]) {
    use selector::Selector;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (label, field) = text.split_once('\n').unwrap_or((text, ""));
    let both = Selector::parse(Some(label), Some(field));
    let labels = Selector::parse(Some(label), None);
    let fields = Selector::parse(None, Some(field));
    assert_eq!(both.is_ok(), labels.is_ok() && fields.is_ok());
    if let (Ok(both), Ok(labels), Ok(fields)) = (both, labels, fields) {
        let pods = [
            json!({}),
            json!({"metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web", "tier": ""}},
                   "spec": {"nodeName": "pi-1", "replicas": 3, "paused": false},
                   "status": {"phase": "Running"}}),
            json!({"metadata": {"name": "x", "labels": {label: field}}, "spec": {label: field}}),
        ];
        for pod in &pods {
            assert_eq!(
                both.matches(pod),
                labels.matches(pod) && fields.matches(pod),
                "{pod}"
            );
        }
    }

    if let Ok((key, value)) = api::labels::parse_label(label) {
        let pod = json!({"metadata": {"labels": {&key: &value}}});
        let matches = |selector: String| {
            Selector::parse(Some(&selector), None)
                .unwrap_or_else(|e| panic!("label {label:?}: {e}"))
                .matches(&pod)
        };
        assert!(matches(format!("{key}={value}")));
        assert!(matches(format!("{key}=={value}")));
        assert!(!matches(format!("{key}!={value}")));
        assert!(matches(key.clone()));
        assert!(!matches(format!("!{key}")));
        if !value.is_empty() {
            assert!(matches(format!("{key} in ({value}, other)")));
            assert!(!matches(format!("{key} notin ({value})")));
        }
    }
    if let Ok(taint) = api::labels::parse_taint(label) {
        let printed = if taint.value.is_empty() {
            format!("{}:{}", taint.key, taint.effect)
        } else {
            format!("{}={}:{}", taint.key, taint.value, taint.effect)
        };
        assert_eq!(api::labels::parse_taint(&printed), Ok(taint));
    }
}

/// Bytes as a `--datastore-endpoint`. Panics (a finding) if parsing, choosing TLS or deriving
/// the admin URL panics, or if a password written in the endpoint shows in what logs and
/// errors print.
pub fn check_endpoint(data: &[u8]) {
    use endpoint::{Endpoint, TlsFiles, TlsMode};
    use std::path::Path;
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    // The password: after the user's first ':', before the last '@' (the credentials start
    // after the first `://` before that '@', else at the start: a mistyped scheme). Text
    // before a `://` holding an '@' is nobody's credentials, and could hold the same string.
    let secret = raw.rfind('@').and_then(|at| {
        let start = raw[..at].find("://").map_or(0, |s| s + 3);
        let (user, pass) = raw[start..at].split_once(':')?;
        (!pass.is_empty() && pass != "REDACTED" && !raw[..start].contains('@'))
            .then(|| format!("{user}:{pass}@"))
    });
    let leaks = |shown: &str| secret.as_ref().is_some_and(|s| shown.contains(s.as_str()));
    let endpoint = match Endpoint::parse(raw) {
        Ok(e) => e,
        Err(e) => {
            assert!(!leaks(&e.to_string()), "{e}");
            return;
        }
    };
    if endpoint.dialect == endpoint::Dialect::Sqlite {
        // A path, whatever it holds: no credentials to hide.
        return;
    }
    assert!(!leaks(endpoint.redacted()), "{}", endpoint.redacted());
    let _ = endpoint.admin_url();
    let files = [
        TlsFiles::default(),
        TlsFiles {
            ca: Some(Path::new("/etc/keelson/db-ca.pem")),
            ..TlsFiles::default()
        },
        TlsFiles {
            ca: Some(Path::new("/etc/ssl/a b+c&d#e%f.pem")),
            cert: Some(Path::new("/etc/ssl/client.pem")),
            key: Some(Path::new("/etc/ssl/client-key.pem")),
        },
    ];
    let modes = [
        None,
        Some(TlsMode::Disable),
        Some(TlsMode::Prefer),
        Some(TlsMode::Require),
        Some(TlsMode::VerifyFull),
    ];
    for files in files {
        for mode in modes {
            let Ok(secured) = endpoint.clone().with_tls(mode, files) else {
                continue;
            };
            assert!(!leaks(secured.redacted()), "{}", secured.redacted());
            assert!(!leaks(&format!("{secured:?}")));
            let _ = (secured.admin_url(), secured.downgradable());
        }
    }
}

/// Bytes as a join token. Panics (a finding) if parsing panics, or if an accepted token does
/// not print and parse back to itself.
pub fn check_token(data: &[u8]) {
    use token::Token;
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(token) = Token::parse(raw, "--token") else {
        return;
    };
    assert!(!token.secret.is_empty());
    assert_eq!(token.ca_hash.is_some(), token.user.is_some());
    let printed = token.to_string();
    assert!(
        Token::parse(&printed, "--token") == Ok(token),
        "{raw:?} → {printed:?}"
    );
}

/// Bytes as the server's config file, against a command with flags of each kind. Panics (a
/// finding) if reading it panics, if it is refused without a reason, or if the arguments it
/// gives name a flag that is unknown, set elsewhere or `config`, or do not parse as clap
/// parses the command line.
pub fn check_config(data: &[u8]) {
    use clap::{Arg, ArgAction, Command};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cmd = Command::new("server")
        .arg(Arg::new("config").long("config").short('c'))
        .arg(Arg::new("token").long("token"))
        .arg(
            Arg::new("data-dir")
                .long("data-dir")
                .action(ArgAction::Append),
        )
        .arg(
            Arg::new("node-label")
                .long("node-label")
                .action(ArgAction::Append),
        )
        .arg(
            Arg::new("disable")
                .long("disable")
                .action(ArgAction::Append)
                .value_delimiter(','),
        )
        .arg(
            Arg::new("cluster-init")
                .long("cluster-init")
                .action(ArgAction::Count),
        )
        .arg(Arg::new("debug").long("debug").action(ArgAction::Count));
    // `--token` came from the command line; the rest were not given.
    let args = match config_file::args(
        text,
        std::path::Path::new("/etc/keelson/config.yaml"),
        &cmd,
        |id| id != "token",
    ) {
        Ok(args) => args,
        Err(problems) => {
            assert!(!problems.is_empty());
            return;
        }
    };
    for a in &args {
        let name = a
            .strip_prefix("--")
            .and_then(|a| a.split('=').next())
            .unwrap_or_else(|| panic!("{a:?} is not a long flag"));
        assert!(!matches!(name, "config" | "token"), "{a:?}");
        let arg = cmd
            .get_arguments()
            .find(|x| x.get_long() == Some(name))
            .unwrap_or_else(|| panic!("{a:?} names no flag"));
        assert_eq!(arg.get_action().takes_values(), a.contains('='), "{a:?}");
    }
    let argv = std::iter::once("server".to_owned()).chain(args.iter().cloned());
    if let Err(e) = cmd.try_get_matches_from(argv) {
        panic!("{args:?}: {e}");
    }
}

/// The zone `check_dns` answers from: a dual-stack ClusterIP Service with named ports, a
/// headless one with endpoints (one with a hostname, one not ready), and an ExternalName.
fn dns_zone() -> &'static node::dns::zone::Zone {
    use api::network::{Backend, ClusterNetwork, LbTiming, ServiceInfo, SliceInfo};
    use node::network::View;
    use std::sync::{Arc, OnceLock};
    static ZONE: OnceLock<node::dns::zone::Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let services = [
            json!({"metadata": {"namespace": "default", "name": "web"},
                   "spec": {"clusterIPs": ["10.43.0.10", "fd00:43::10"],
                            "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                                      {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            json!({"metadata": {"namespace": "db", "name": "pg"},
                   "spec": {"clusterIPs": [], "ports": [{"name": "pg", "port": 5432}]}}),
            json!({"metadata": {"namespace": "default", "name": "out"},
                   "spec": {"type": "ExternalName", "externalName": "example.com."}}),
        ];
        let slices = [json!({
        "metadata": {"namespace": "db", "name": "pg-abc",
                     "labels": {"kubernetes.io/service-name": "pg"}},
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.42.1.5"], "hostname": "pg-0", "conditions": {"ready": true}},
            {"addresses": ["fd00:42::6"], "conditions": {"ready": true}},
            {"addresses": ["10.42.1.7"], "conditions": {"ready": false}},
        ]})];
        let mut view = View {
            cluster: Some(ClusterNetwork {
                cluster_cidrs: vec![],
                service_cidrs: vec![],
                cluster_dns: Some("10.43.0.10".parse().expect("an address")),
                cluster_domain: "cluster.local".into(),
                backend: Backend::Vxlan,
                lb_timing: LbTiming::default(),
            }),
            ..View::default()
        };
        for s in &services {
            let s = ServiceInfo::from_object(s).expect("a Service");
            view.services.insert(s.key.clone(), Arc::new(s));
        }
        for s in &slices {
            let s = SliceInfo::from_object(s).expect("an EndpointSlice");
            view.slices.insert(s.key.clone(), Arc::new(s));
        }
        node::dns::zone::Zone::build(&view)
    })
}

/// Bytes as a request to the cluster DNS, answered from a fixed zone as the server answers
/// without forwarding. Panics (a finding) if parsing, looking up or encoding panics; if a
/// response, or a datagram shorter than a header, is answered; if a reply loses the request's
/// id, opcode, RD bit or question; or if the reply bytes exceed the client's limit or do not
/// parse back.
pub fn check_dns(data: &[u8]) {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use node::dns::message::{self, Incoming};
    use node::dns::zone::Lookup;
    let zone = dns_zone();
    let (reply, limit) = match message::parse(data) {
        Incoming::Drop => return,
        Incoming::Refuse(reply) => {
            assert!(
                data.len() >= 12 && data[2] & 0x80 == 0,
                "refused a response"
            );
            assert_eq!(reply.metadata.id, u16::from_be_bytes([data[0], data[1]]));
            (reply, message::PLAIN_UDP)
        }
        Incoming::Question(req) => {
            let query = req.query().clone();
            let reply = if !message::is_internet(&query) {
                req.reply(ResponseCode::Refused)
            } else {
                match zone.lookup(query.name(), query.query_type()) {
                    Lookup::Outside => req.reply(ResponseCode::ServFail),
                    // The target as upstream would answer it: not at all.
                    Lookup::Alias { cname, .. } => req.alias_reply(cname, None),
                    found => req.answer(found, zone),
                }
            };
            let m = &req.message;
            assert_eq!(reply.metadata.id, m.metadata.id);
            assert_eq!(reply.metadata.op_code, m.metadata.op_code);
            assert_eq!(
                reply.metadata.recursion_desired,
                m.metadata.recursion_desired
            );
            assert_eq!(reply.queries, m.queries);
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            let limit = req.udp_limit();
            assert!((message::PLAIN_UDP..=usize::from(message::MAX_UDP)).contains(&limit));
            (reply, limit)
        }
    };
    for limit in [limit, usize::from(u16::MAX)] {
        if let Some(bytes) = message::encode(&reply, limit) {
            assert!(bytes.len() <= limit);
            let back = Message::from_vec(&bytes).expect("a reply parses back");
            assert_eq!(back.metadata.id, reply.metadata.id);
            assert_eq!(back.metadata.message_type, MessageType::Response);
        }
    }
}

/// Bytes as a CNI plugin's stdout, read as an ADD result and as an error object. Panics (a
/// finding) if reading panics; if an accepted result is not an object of a known version; if
/// the pod's addresses taken from it are not among its `ips`, repeat, or include loopback; or if
/// an error's message quotes more than its bound.
pub fn check_cni(data: &[u8]) {
    use node::cni::result::{self, Command};
    match result::parse_result("bridge", Command::Add, data) {
        Ok(v) => {
            assert!(v.is_object());
            let listed: Vec<&str> = v["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["address"].as_str())
                .collect();
            let ips = result::result_ips(&v);
            for (n, ip) in ips.iter().enumerate() {
                assert!(!ip.is_loopback());
                assert!(!ips[..n].contains(ip), "{ip} twice");
                assert!(
                    listed
                        .iter()
                        .any(|a| a.split('/').next() == Some(&ip.to_string()[..])
                            || a.split('/').next().and_then(|h| h.parse().ok()) == Some(*ip)),
                    "{ip} not in {listed:?}"
                );
            }
        }
        Err(e) => {
            let shown = e.to_string();
            // The quote is at most 200 characters and an ellipsis, escaped by `{:?}`; the
            // rest of the message is short.
            assert!(shown.chars().count() <= 200 * 10 + 300, "{shown}");
        }
    }
    if let Some(e) = result::parse_error("bridge", Command::Add, data) {
        let _ = e.to_string();
    }
    let quoted = result::quote(data);
    assert!(quoted.chars().count() <= 201, "{quoted:?}");
}

/// Bytes as one tunnel frame: the first byte picks the direction (a server reading an agent's
/// frame, or an agent reading its server's), the rest is the websocket message. Panics (a
/// finding) if decoding panics, or if an accepted frame does not encode and decode back to
/// itself within the direction's size limit.
pub fn check_tunnel(data: &[u8]) {
    use tunnel::frame::{self, Up};
    let Some((&direction, bytes)) = data.split_first() else {
        return;
    };
    if direction % 2 == 0 {
        if let Ok(up) = frame::decode::<Up>(bytes) {
            let wire = frame::encode(&up).expect("an accepted frame encodes within the limit");
            assert_eq!(frame::decode::<Up>(&wire).expect("it decodes again"), up);
        }
    } else if let Ok(down) = frame::decode_down(bytes) {
        let wire = frame::encode_down(&down).expect("an accepted frame encodes within the limit");
        assert_eq!(frame::decode_down(&wire).expect("it decodes again"), down);
    }
}
