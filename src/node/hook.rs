//! `keelson node-test …` (hidden): a test hook that drives the node's container monitor, runc
//! and log code from whole-binary tests (keelson has no library crate), through the same
//! calls the pod runtime makes. It prints JSON for the test to read and owns nothing: every
//! monitor it spawns outlives it, as in life.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::logs::{self, LogOptions, LogSource, Rotation};
use super::monitor::{self, MonitorSpec};
use super::runc::{ExecProcess, Runc};

#[derive(Debug, Subcommand)]
pub enum NodeTest {
    /// monitor::spawn; prints {"monitorPid":…,"containerPid":…}
    Spawn(SpawnArgs),
    /// monitor::observe; prints the observed state as JSON
    Observe {
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Runc::exec; prints {"exitCode":…,"stdout":…,"stderr":…} (with --tty, "output")
    Exec(ExecArgs),
    /// logs::copy_logs of a container's log files to stdout
    Logs(LogsArgs),
    /// Runc's state, list, kill and delete; prints JSON
    Runc {
        #[command(flatten)]
        runc: RuncArgs,
        #[command(subcommand)]
        op: RuncOp,
    },
}

#[derive(Debug, Subcommand)]
pub enum RuncOp {
    State {
        id: String,
    },
    List,
    Kill {
        id: String,
        /// A signal name such as SIGKILL
        signal: String,
        #[arg(long)]
        all: bool,
    },
    Delete {
        id: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct RuncArgs {
    #[arg(long, default_value = "runc")]
    runtime: PathBuf,
    #[arg(long)]
    runc_root: PathBuf,
}

#[derive(Debug, Args)]
pub struct SpawnArgs {
    #[command(flatten)]
    runc: RuncArgs,
    #[arg(long)]
    id: String,
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long)]
    log: PathBuf,
    #[arg(long, default_value_t = logs::DEFAULT_MAX_SIZE)]
    log_max_size: u64,
    #[arg(long, default_value_t = logs::DEFAULT_MAX_FILES)]
    log_max_files: u32,
    /// After reporting, stay until killed (plays an agent that dies with its monitors running)
    #[arg(long)]
    hold: bool,
    /// The container's `stdin: true`
    #[arg(long)]
    stdin: bool,
    /// The container's `stdinOnce: true`
    #[arg(long)]
    stdin_once: bool,
    /// The container's `tty: true`
    #[arg(long)]
    tty: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    runc: RuncArgs,
    #[arg(long)]
    id: String,
    #[arg(long)]
    tty: bool,
    /// Written to the process's stdin (or terminal), which is then closed (without --tty)
    #[arg(long, default_value = "")]
    input: String,
    /// ROWS,COLS: resize the terminal before writing the input
    #[arg(long)]
    resize: Option<String>,
    /// An OCI process JSON file to run instead of ARGV
    #[arg(long)]
    process: Option<PathBuf>,
    #[arg(last = true)]
    argv: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The current log file; its rotated siblings are read first
    #[arg(long)]
    current: PathBuf,
    #[arg(long)]
    exit_file: Option<PathBuf>,
    #[arg(long)]
    follow: bool,
    #[arg(long)]
    tail: Option<u64>,
    #[arg(long)]
    timestamps: bool,
    #[arg(long)]
    limit_bytes: Option<u64>,
}

pub async fn run(cmd: NodeTest) -> anyhow::Result<()> {
    match cmd {
        NodeTest::Spawn(a) => {
            let spec = MonitorSpec {
                id: a.id,
                bundle: a.bundle,
                state_dir: a.state_dir,
                log_path: a.log,
                rotation: Rotation {
                    max_size: a.log_max_size,
                    max_files: a.log_max_files,
                },
                runc: Runc::new(a.runc.runtime, a.runc.runc_root),
                input: monitor::Input {
                    stdin: a.stdin,
                    stdin_once: a.stdin_once,
                    tty: a.tty,
                },
            };
            spec.runc.check()?;
            let spawned = monitor::spawn(&spec).await?;
            println!("{}", serde_json::to_string(&spawned)?);
            if a.hold {
                std::io::Write::flush(&mut std::io::stdout())?;
                std::future::pending::<()>().await;
            }
        }
        NodeTest::Observe { state_dir } => {
            let observed = monitor::observe(&state_dir)?;
            println!("{}", serde_json::to_string(&observed)?);
        }
        NodeTest::Exec(a) => exec(a).await?,
        NodeTest::Runc { runc, op } => {
            let runc = Runc::new(runc.runtime, runc.runc_root);
            let out = match op {
                RuncOp::State { id } => serde_json::to_value(runc.state(&id).await?)?,
                RuncOp::List => serde_json::to_value(runc.list().await?)?,
                RuncOp::Kill { id, signal, all } => {
                    runc.kill(&id, signal.parse()?, all).await?;
                    serde_json::Value::Null
                }
                RuncOp::Delete { id, force } => {
                    runc.delete(&id, force).await?;
                    serde_json::Value::Null
                }
            };
            println!("{out}");
        }
        NodeTest::Logs(a) => {
            let src = LogSource {
                files: logs::log_files(&a.current)?,
                exit_file: a.exit_file,
            };
            let opts = LogOptions {
                follow: a.follow,
                tail_lines: a.tail,
                since: None,
                timestamps: a.timestamps,
                limit_bytes: a.limit_bytes,
            };
            // Our stdout as an async file (tokio's `io-std` feature is not built in).
            let fd = std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned()?;
            let mut out = tokio::fs::File::from_std(std::fs::File::from(fd));
            logs::copy_logs(&src, &opts, &mut out).await?;
            out.flush().await?;
        }
    }
    Ok(())
}

async fn exec(a: ExecArgs) -> anyhow::Result<()> {
    let runc = Runc::new(a.runc.runtime, a.runc.runc_root);
    let process = match a.process {
        Some(path) => ExecProcess::Spec(path),
        None => ExecProcess::Args {
            argv: a.argv,
            env: vec!["PATH=/bin".to_owned()],
            cwd: None,
            user: None,
        },
    };
    let mut exec = runc.exec(&a.id, &process, a.tty).await?;
    let result = if let Some(mut console) = exec.console.take() {
        if let Some(size) = &a.resize {
            let (rows, cols) = size
                .split_once(',')
                .ok_or_else(|| anyhow::anyhow!("--resize takes ROWS,COLS"))?;
            console.resize(rows.parse()?, cols.parse()?)?;
        }
        console.write_all(a.input.as_bytes()).await?;
        let mut output = Vec::new();
        console.read_to_end(&mut output).await?;
        let status = exec.child.wait().await?;
        serde_json::json!({
            "exitCode": status.code(),
            "output": String::from_utf8_lossy(&output),
        })
    } else {
        let mut stdin = exec.child.stdin.take();
        if let Some(stdin) = stdin.as_mut() {
            stdin.write_all(a.input.as_bytes()).await?;
        }
        drop(stdin);
        let out = exec.child.wait_with_output().await?;
        serde_json::json!({
            "exitCode": out.status.code(),
            "stdout": String::from_utf8_lossy(&out.stdout),
            "stderr": String::from_utf8_lossy(&out.stderr),
        })
    };
    println!("{result}");
    Ok(())
}
