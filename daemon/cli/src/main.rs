//! `locus`: the node daemon and its client subcommands. The README gives the interface
//! (commands, flags, exit statuses); this file only parses and dispatches.

mod client;
mod config;
mod csi;
mod daemon;
mod demo;
mod mount;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "locus",
    version = VERSION,
    about = "A masterless cache of model artifacts for ML clusters"
)]
pub struct Cli {
    /// A TOML file with defaults for any flag (keys as the flags, e.g. cache-dir = "/var/cache/locus").
    #[arg(long, global = true, env = "LOCUS_CONFIG")]
    config: Option<PathBuf>,
    /// The daemon's local API socket [default: /run/locus/locus.sock].
    #[arg(long, global = true, env = "LOCUS_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The build: the crate's version and the commit (`build.rs`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LOCUS_COMMIT"), ")");

/// What `locus daemon --help` adds: the credentials and endpoints are the daemon's, read from
/// its own environment; the client commands send none.
const DAEMON_ENVIRONMENT: &str = "\
Credentials and endpoints are read by the daemon, from its own environment (the client
commands, the mount and the loader send none):
  HF_TOKEN, else the file HF_TOKEN_PATH or $HF_HOME/token   the Hugging Face token
  HF_ENDPOINT                                              the Hub (default https://huggingface.co)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_REGION,
  AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ENDPOINT_URL             S3 (then the instance metadata service)";

#[derive(Subcommand)]
enum Cmd {
    /// Run a node.
    #[command(after_help = DAEMON_ENVIRONMENT)]
    Daemon(Box<config::DaemonArgs>),
    /// Make every selected file fully cached and verified.
    Warm(client::WarmArgs),
    /// Let the selected files be evicted again (clears `warm --pin` on this node).
    Unpin(client::SelectArgs),
    /// Remove the selected files from this node's cache now, pinned or not (files being read
    /// are left).
    Evict(client::SelectArgs),
    /// Write a file's bytes to stdout.
    Cat {
        /// The file, e.g. hf://ORG/NAME/config.json.
        uri: String,
    },
    /// List files under a URI with their sizes and the fraction cached here.
    Ls {
        /// A repo, folder or file.
        uri: String,
        /// Also the fraction of each file some member of the cluster holds (asks every member).
        #[arg(long)]
        cluster: bool,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// This node's cache and counters.
    Status {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// A read-only FUSE view of a repo, folder or file.
    Mount(mount::MountArgs),
    /// Remove a mount (also one whose process died).
    Unmount {
        /// Where it is mounted.
        mountpoint: PathBuf,
    },
    /// Serve CSI volumes' mounts for a daemon (`locus daemon --csi-mounter`), from a process
    /// that outlives the daemon's (in Kubernetes, a DaemonSet of its own).
    Mounter {
        /// The socket the daemon asks on (only root may use it).
        #[arg(long)]
        listen: PathBuf,
        /// Mount only at targets under this folder (kubelet's pods folder).
        #[arg(long)]
        targets_under: PathBuf,
        /// Where the mounts log.
        #[arg(long, default_value = "/var/log/locus")]
        log_dir: PathBuf,
    },
    /// The offline quickstart: a local Hub with a generated model, a node, warm, read back, report.
    Demo(demo::DemoArgs),
}

/// A failure with the exit status it maps to: 1 for failures the message explains, 2 for bad usage.
#[derive(Debug)]
pub struct Failure {
    pub(crate) code: u8,
    pub(crate) msg: String,
}

impl Failure {
    pub fn new(code: u8, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }
    /// Stops the command quietly, successfully: whoever read its output has gone (a closed
    /// pipe, as `locus ls | head` closes it).
    pub fn reader_gone() -> Self {
        Self::new(0, "")
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::new(2, msg)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::new(1, format!("{e:#}"))
    }
}

fn main() -> ExitCode {
    // The matches as well as the parsed values: the daemon's settings ask them whether a
    // value came from a flag or a variable (beats the --config file) or is a default.
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (c, m)));
    let (cli, matches) = match parsed {
        Ok(p) => p,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli, matches));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) if f.code == 0 => ExitCode::SUCCESS,
        Err(f) => {
            // One line a person can act on.
            let line = f.msg.replace('\n', " ");
            eprintln!("error: {}", locus_core::redact::redact_urls(&line));
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli, matches: clap::ArgMatches) -> Result<(), Failure> {
    let file = config::ConfigFile::load(cli.config.as_deref())?;
    let socket = match cli.socket.clone() {
        Some(s) => s,
        None => file
            .socket()?
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_SOCKET)),
    };
    match cli.cmd {
        Cmd::Daemon(args) => {
            let empty = clap::ArgMatches::default();
            let m = matches.subcommand_matches("daemon").unwrap_or(&empty);
            let args = args.with_file(m, &file)?;
            let check = args.check_config;
            let cfg = config::DaemonConfig::check(args, socket)?;
            if check {
                println!("{}", locus_core::redact::redact_urls(&cfg.summary()));
                return Ok(());
            }
            daemon::run(cfg).await.map_err(Failure::from)
        }
        Cmd::Warm(args) => client::warm(&socket, args).await,
        Cmd::Unpin(args) => client::unpin_or_evict(&socket, args, false).await,
        Cmd::Evict(args) => client::unpin_or_evict(&socket, args, true).await,
        Cmd::Cat { uri } => client::cat(&socket, &uri).await,
        Cmd::Ls { uri, cluster, json } => client::ls(&socket, &uri, cluster, json).await,
        Cmd::Status { json } => client::status(&socket, json).await,
        Cmd::Demo(args) => demo::run(args).await,
        Cmd::Mounter {
            listen,
            targets_under,
            log_dir,
        } => daemon::run_mounter(&listen, &socket, targets_under, log_dir)
            .await
            .map_err(Failure::from),
        Cmd::Mount(args) => mount::mount(&socket, args).await,
        Cmd::Unmount { mountpoint } => {
            mount::unmount(&mountpoint).map(|()| println!("unmounted {}", mountpoint.display()))
        }
    }
}
