//! keelson: one binary, a server or an agent of a small Kubernetes-compatible control plane.
//!
//! The whole process lifecycle: parse the configuration, set up logging, run the chosen role
//! until SIGTERM/SIGINT, and exit with a code that says how it went.

#![deny(unsafe_code)]

mod agent;
mod api;
mod apiserver;
mod bootstrap;
mod cli;
mod config;
mod controllers;
mod datastore;
mod datastore_cli;
mod firstboot;
mod images_cli;
mod loadgen;
#[allow(unsafe_code)]
mod memory;
mod netlink;
mod node;
mod runtime;
mod secrets_cli;
mod server;
mod systemd;
mod tunnel;
mod vip;

use std::process::ExitCode;

use cli::Command;
use config::{AgentConfig, Host, ServerConfig};

/// The Kubernetes API version keelson speaks (kubectl checks the minor for version skew).
pub const KUBE_MINOR: &str = "32";
pub const KUBE_VERSION: &str = concat!("v1.32.0+keelson.", env!("CARGO_PKG_VERSION"));
pub const VERSION_STRING: &str = concat!(env!("CARGO_PKG_VERSION"), " (Kubernetes v1.32.0)");

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The per-container monitor: single-threaded and tiny, so before anything else starts
    // (no runtime, no threads, no allocator tuning, no flag parsing). Not in --help.
    if args.get(1).is_some_and(|a| a == "monitor") {
        return node::monitor::main(&args[2..]);
    }
    // Before the runtime starts any thread.
    memory::configure_malloc();
    let cli = match config::parse_command_line(args) {
        Ok(cli) => cli,
        Err(config::Error::Clap(e)) => e.exit(),
        Err(e) => return usage_error(&e),
    };
    match cli.command {
        Command::Server(args) => {
            let cfg = match ServerConfig::from_args(*args, &Host::current()) {
                Ok(cfg) => cfg,
                Err(e) => return usage_error(&e),
            };
            init_logging(cfg.debug, cfg.log_format);
            for w in &cfg.warnings {
                tracing::warn!("{w}");
            }
            let notify = systemd::Notify::from_env();
            run(Threads::Two, async {
                let _trimmer = memory::spawn_trimmer();
                let _watchdog = notify.spawn_watchdog();
                server::run(cfg, notify.clone(), shutdown_signal(notify)).await
            })
        }
        Command::Agent(args) => {
            let cfg = match AgentConfig::from_args(*args, &Host::current()) {
                Ok(cfg) => cfg,
                Err(e) => return usage_error_for("agent", &e),
            };
            init_logging(cfg.debug, cfg.log_format);
            let notify = systemd::Notify::from_env();
            // While no other thread exists.
            let file_pages = memory::FilePages::mapped_now();
            // One thread: an agent is a handful of sockets and timers on a small board.
            run(Threads::One, async {
                let (connected, tunnel_up) = tokio::sync::watch::channel(false);
                let _ready = notify.spawn_follow_tunnel(connected.subscribe());
                let _watchdog = notify.spawn_watchdog();
                let _release = file_pages.release_once_up(tunnel_up);
                let ips = agent::sysinfo::node_ips(&cfg.node.ips);
                let runtime = cfg.runtime.build(
                    &cfg.data_dir,
                    &cfg.node.name,
                    ips,
                    &cfg.node.local_storage,
                )?;
                Ok(agent::run(cfg, runtime, stop_on_signal(notify), connected).await?)
            })
        }
        Command::Loadgen(args) => {
            init_logging(args.debug, cli::LogFormat::Text);
            run(Threads::Two, async {
                loadgen::run(args, stop_on_signal(systemd::Notify::default())).await
            })
        }
        Command::Lb(args) => {
            init_logging(args.debug, cli::LogFormat::Text);
            run(Threads::Two, async {
                vip::lb::standalone(args, stop_on_signal(systemd::Notify::default())).await
            })
        }
        Command::Images(args) => {
            init_logging(args.debug, cli::LogFormat::Text);
            run(Threads::One, images_cli::run(args))
        }
        Command::SecretsEncrypt(args) => run(Threads::One, secrets_cli::run(args)),
        Command::Datastore(args) => run(Threads::One, datastore_cli::run(args)),
        Command::Unit(args) => {
            print!("{}", systemd::unit(args.role, &args.bin_dir));
            ExitCode::SUCCESS
        }
        Command::Firstboot(args) => firstboot::main(&args.boot, &args.root),
        Command::Kubectl { args } => run_kubectl(args),
        Command::NodeTest(args) => {
            init_logging(false, cli::LogFormat::Text);
            run(Threads::One, node::hook::run(args))
        }
    }
}

enum Threads {
    One,
    Two,
}

/// Runs `work` on a fresh runtime (after lifting the open-files limit) and maps its outcome
/// to the exit code.
fn run(threads: Threads, work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    raise_open_files_limit();
    let built = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Threads::Two => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => return fatal(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(&e),
    }
}

fn usage_error(e: &config::Error) -> ExitCode {
    usage_error_for("server", e)
}

fn usage_error_for(role: &str, e: &config::Error) -> ExitCode {
    eprint!("{e}");
    eprintln!("Run `keelson {role} --help` for the flags and their defaults.");
    ExitCode::from(2)
}

/// Lifts the soft open-files limit to the hard one, as Go programs do at start: a server
/// holds one socket per agent. Our own bounds (connections, tunnels) never follow it.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// A stop flag that flips on the first SIGTERM or SIGINT. Must be called inside the runtime.
fn stop_on_signal(notify: systemd::Notify) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal(notify).await;
        tx.send_replace(true);
    });
    rx
}

fn fatal(e: &anyhow::Error) -> ExitCode {
    // Our error messages already name their cause; print a cause only when it adds something.
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
    }
    eprintln!("error: {text}");
    ExitCode::FAILURE
}

/// Logs to stderr, as text or JSON lines (`--log-format`); under systemd each line starts with
/// the priority journald files it by, and journald's timestamps replace ours.
fn init_logging(debug: bool, log_format: cli::LogFormat) {
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("keelson", level)
        .with_default(tracing::Level::WARN);
    use tracing_subscriber::fmt::{format, layer};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let journal = systemd::journal::stderr_is_journal();
    let json = log_format == cli::LogFormat::Json;
    let plain = (!journal && !json).then(|| layer().with_writer(std::io::stderr).with_ansi(false));
    let prefixed = (journal && !json).then(|| {
        layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(systemd::journal::Prefixed(format().without_time()))
    });
    let json_plain = (!journal && json).then(|| {
        layer()
            .json()
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    // journald strips the priority prefix, so the entry is the JSON object alone.
    let json_prefixed = (journal && json).then(|| {
        layer()
            .json()
            .with_writer(std::io::stderr)
            .event_format(systemd::journal::json())
    });
    tracing_subscriber::registry()
        .with(plain)
        .with(prefixed)
        .with(json_plain)
        .with(json_prefixed)
        .with(filter)
        .init();
}

/// Resolves on the first SIGTERM or SIGINT, having told systemd the service is stopping.
async fn shutdown_signal(notify: systemd::Notify) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can still be killed; run until then.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
    }
    notify.stopping();
}

/// `keelson kubectl ...`: the system kubectl with this node's kubeconfig (unless KUBECONFIG
/// or --kubeconfig says otherwise), like `k3s kubectl`.
fn run_kubectl(args: Vec<String>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let host = Host::current();
    let mut cmd = std::process::Command::new("kubectl");
    let explicit = args.iter().any(|a| a.starts_with("--kubeconfig"))
        || std::env::var_os("KUBECONFIG").is_some();
    if !explicit {
        let data_dir = std::env::var_os("KEELSON_DATA_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| host.default_data_dir());
        let path = std::env::var_os("KEELSON_KUBECONFIG_OUTPUT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| host.default_kubeconfig(&data_dir));
        cmd.arg(format!("--kubeconfig={}", path.display()));
    }
    let err = cmd.args(args).exec();
    eprintln!("error: cannot run kubectl: {err} (is kubectl installed and on PATH?)");
    ExitCode::from(127)
}
