//! keelson: one binary, a server or an agent of a small Kubernetes-compatible control plane.
//!
//! The whole process lifecycle: parse the configuration, set up logging, run the chosen role
//! until SIGTERM/SIGINT, and exit with a code that says how it went.

#![deny(unsafe_code)]

mod agent;
mod apiserver;
mod bootstrap;
mod cli;
mod config;
mod controllers;
mod datastore;
mod loadgen;
mod server;
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
    // Before the runtime starts any thread.
    heap::configure();
    let cli = match config::parse_command_line(std::env::args_os().collect()) {
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
            init_logging(cfg.debug);
            run(Threads::Two, async {
                let _trimmer = heap::Trimmer::spawn();
                server::run(cfg, shutdown_signal()).await
            })
        }
        Command::Agent(args) => {
            let cfg = match AgentConfig::from_args(args, &Host::current()) {
                Ok(cfg) => cfg,
                Err(e) => return usage_error_for("agent", &e),
            };
            init_logging(cfg.debug);
            // One thread: an agent is a handful of sockets and timers on a small board.
            run(Threads::One, async {
                Ok(agent::run(cfg, stop_on_signal()).await?)
            })
        }
        Command::Loadgen(args) => {
            init_logging(args.debug);
            run(Threads::Two, async {
                loadgen::run(args, stop_on_signal()).await
            })
        }
        Command::Lb(args) => {
            init_logging(args.debug);
            run(Threads::Two, async {
                vip::lb::standalone(args, stop_on_signal()).await
            })
        }
        Command::Kubectl { args } => run_kubectl(args),
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
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
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

fn init_logging(debug: bool) {
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("keelson", level)
        .with_default(tracing::Level::WARN);
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(filter)
        .init();
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
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

/// How the process uses glibc's malloc (a no-op for musl builds, whose allocator returns
/// free memory by itself).
///
/// glibc keeps memory a burst freed: one heap per thread that ever contended, and inside a
/// heap only its top is ever given back. After a thousand agents join at once, a server's live
/// heap is about a third of its RSS; the rest is free memory pinned between live allocations
/// and abandoned in the other thread's heap. So: one heap for all threads (tcache keeps small
/// allocations per thread anyway), and free pages inside it go back to the kernel once the
/// resident size has grown past what the last trim left.
#[allow(unsafe_code)]
mod heap {
    use std::time::Duration;

    /// How often the trimmer compares the resident size with what its last trim left.
    const CHECK_EVERY: Duration = Duration::from_secs(5);
    /// Growth of the resident size since the last trim that earns another trim.
    const REGROWTH_BYTES: u64 = 2 << 20;

    /// One malloc arena for every thread. Call before any thread starts: arenas that already
    /// exist stay.
    pub fn configure() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt takes no pointers and only changes malloc's tuning parameters under
        // malloc's own lock; glibc documents it as callable at any time (MT-Safe).
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }

    /// Gives free heap pages back to the kernel after bursts; ends when dropped.
    pub struct Trimmer {
        task: Option<tokio::task::JoinHandle<()>>,
    }

    // === impl Trimmer ===

    impl Trimmer {
        /// Must be called inside the runtime.
        pub fn spawn() -> Trimmer {
            let task =
                cfg!(all(target_os = "linux", target_env = "gnu")).then(|| tokio::spawn(run()));
            Trimmer { task }
        }
    }

    impl Drop for Trimmer {
        fn drop(&mut self) {
            if let Some(task) = &self.task {
                task.abort();
            }
        }
    }

    async fn run() {
        let mut floor = resident_bytes();
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let (Some(now), Some(last)) = (resident_bytes(), floor) else {
                // No /proc: nothing to compare, and nothing to do.
                return;
            };
            if now > last + REGROWTH_BYTES {
                let started = std::time::Instant::now();
                trim();
                floor = resident_bytes();
                tracing::debug!(
                    before = now,
                    after = floor,
                    took = ?started.elapsed(),
                    "gave free heap pages back to the kernel"
                );
            } else if now < last {
                floor = Some(now);
            }
        }
    }

    fn trim() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim takes no pointers; it walks malloc's free lists under each
        // arena's lock and only returns pages no allocation occupies (MT-Safe).
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// The process's resident set size, from `/proc/self/statm` (in pages).
    fn resident_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
        Some(pages * u64::try_from(page).ok()?)
    }
}
