//! The `ringrelay` command line.

use std::io::{self, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use ringrelay::config::{LogConfig, LogFormat};
use ringrelay::filter::Filter;
use ringrelay::fleet::client::RelayUrl;
use ringrelay::fleet::sync::{Direction, Plan};
use ringrelay::limits::SEGMENT_SIZE_DEFAULT;
use ringrelay::tools::{self, StoreOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ringrelay", version, about = "A thread-per-core Nostr relay on io_uring")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (defaults: 0.0.0.0:7777, data in ./ringrelay-data, every core).
    Serve {
        /// A TOML config file; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:7777.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Executors, one pinned per core (default: every CPU this process may run on).
        #[arg(long)]
        cores: Option<usize>,
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Take over from a relay already serving this address and data directory, without
        /// refusing connections: bind beside it, send it SIGUSR1, and serve once it has
        /// finished its writes, closed its clients (1012) and let go of the data directory.
        #[arg(long)]
        takeover: bool,
    },
    /// Check a config file (every key known, every value valid) and print the effective
    /// config: the file over the embedded defaults. Without a file, the defaults.
    CheckConfig { file: Option<PathBuf> },
    /// Import events from JSON lines (a file, or stdin with `-`), verifying every signature.
    Import {
        #[command(flatten)]
        store: StoreArgs,
        /// Shards of a new data directory (one per core); an existing one keeps its own.
        #[arg(long)]
        shards: Option<u16>,
        /// JSON lines to read; `-` for stdin.
        #[arg(default_value = "-")]
        input: String,
    },
    /// Write every live event as JSON lines to stdout, oldest first.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// Only events matching this NIP-01 filter (repeat for OR), e.g. '{"kinds":[1]}'.
        #[arg(long = "filter")]
        filters: Vec<String>,
    },
    /// Check every segment and record of a data directory; changes nothing.
    Verify {
        /// The data directory (default ./ringrelay-data).
        data_dir: Option<PathBuf>,
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Also re-verify every stored event's id and signature.
        #[arg(long)]
        signatures: bool,
    },
    /// Move damaged bytes aside into each shard's quarantine/ directory, keeping every valid
    /// record before and after them in a new segment (offline); reports what it moved.
    Repair {
        /// The data directory (default ./ringrelay-data).
        data_dir: Option<PathBuf>,
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Rewrite segments without replaced, deleted and expired events (offline).
    Compact {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Reconcile a stopped data directory with a running relay (NIP-77 negentropy: ringrelay,
    /// strfry, chorus), then fetch what it has and we lack (down), publish what we have and
    /// it lacks (up), or both; with a progress line on stderr and a summary at the end.
    Sync {
        /// The relay, ws://host:port/path.
        url: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Shards of a new data directory (one per core); an existing one keeps its own.
        #[arg(long)]
        shards: Option<u16>,
        /// The NIP-01 filter both sides' sets are drawn with (default: every event).
        #[arg(long, default_value = "{}")]
        filter: String,
        #[arg(long, value_enum, default_value = "down")]
        dir: Direction,
        /// A secret key (64 hex characters) to answer the relay's NIP-42 challenge with; with
        /// `--relay`, an admin key of that relay (NIP-98).
        #[arg(long)]
        auth_key: Option<PathBuf>,
        /// CA certificates (PEM) trusted for a wss:// URL besides the Mozilla roots.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// Instead of a stopped data directory: a running relay's management address
        /// (http://host:port, its `listen` or `metrics_listen`), asked to sync with URL now.
        #[arg(long)]
        relay: Option<String>,
    },
}

#[derive(Args)]
struct StoreArgs {
    /// The data directory.
    #[arg(long, default_value = "ringrelay-data")]
    data_dir: PathBuf,
    /// A file holding the AES-256 at-rest key: 32 raw bytes or 64 hex characters.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Size at which a segment is sealed, in bytes.
    #[arg(long, default_value_t = SEGMENT_SIZE_DEFAULT)]
    segment_size: usize,
}

impl StoreArgs {
    fn options(self) -> anyhow::Result<StoreOptions> {
        let size = self.segment_size;
        let valid = (ringrelay::limits::SEGMENT_SIZE_MIN..=ringrelay::limits::SEGMENT_SIZE_MAX).contains(&size)
            && size.is_multiple_of(ringrelay::limits::BLOCK_SIZE);
        anyhow::ensure!(
            valid,
            "--segment-size must be a multiple of {} between {} and {}",
            ringrelay::limits::BLOCK_SIZE,
            ringrelay::limits::SEGMENT_SIZE_MIN,
            ringrelay::limits::SEGMENT_SIZE_MAX
        );
        Ok(StoreOptions { data_dir: self.data_dir, key_file: self.key_file, segment_size: size })
    }
}

/// Log to stderr as `log` says; `RUST_LOG` overrides its level. Colours only on a terminal,
/// so that log files and journald get plain lines.
fn init_logging(log: &LogConfig) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(format!("{},glommio::reactor=off", log.level)))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,glommio::reactor=off"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr);
    match log.format {
        LogFormat::Text => builder.with_ansi(io::stderr().is_terminal()).init(),
        // Each core's thread runs inside a `core` span: JSON lines carry it as `span.core`.
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    // `serve` logs as its config says; the config is read before anything is logged.
    let (command, config) = match command {
        Command::Serve { config, listen, data_dir, cores, key_file, takeover } => {
            let loaded = match config {
                Some(path) => ringrelay::config::Config::from_file(&path),
                None => Ok(ringrelay::config::Config::default()),
            };
            match loaded {
                Ok(mut config) => {
                    config.listen = listen.unwrap_or(config.listen);
                    config.data_dir = data_dir.unwrap_or(config.data_dir);
                    config.cores = cores.unwrap_or(config.cores);
                    config.key_file = key_file.or(config.key_file);
                    init_logging(&config.log);
                    return match ringrelay::server::serve(config, takeover) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(error) => {
                            eprintln!("ringrelay: {error:#}");
                            ExitCode::FAILURE
                        }
                    };
                }
                Err(error) => {
                    eprintln!("ringrelay: {error:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
        other => (other, LogConfig::default()),
    };
    init_logging(&config);
    match run(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ringrelay: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { .. } => unreachable!("serve is run by main"),
        Command::CheckConfig { file } => {
            let config = match file {
                Some(path) => ringrelay::config::Config::from_file(&path)?,
                None => ringrelay::config::Config::default(),
            };
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { store, shards, input } => {
            let shards = shards.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u16));
            let reader: Box<dyn io::BufRead + Send> = match input.as_str() {
                "-" => Box::new(BufReader::new(io::stdin())),
                path => Box::new(BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {path}"))?)),
            };
            let summary = tools::import::run(&store.options()?, shards, reader)?;
            eprint!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { store, filters } => {
            let filters = filters
                .iter()
                .map(|text| Filter::from_text(text).map_err(|e| anyhow::anyhow!("--filter {text}: {}", e.reason())))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let stdout = io::stdout();
            let mut out = io::BufWriter::new(stdout.lock());
            let count = tools::export::run(&store.options()?, &filters, &mut out)?;
            eprintln!("exported {count} events");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { data_dir, key_file, signatures } => {
            let options = StoreOptions {
                data_dir: data_dir.unwrap_or_else(|| PathBuf::from("ringrelay-data")),
                key_file,
                segment_size: SEGMENT_SIZE_DEFAULT,
            };
            let report = tools::verify::run(&options, signatures)?;
            for problem in &report.problems {
                println!("{problem}");
            }
            println!("{} segments, {} records, {} problems", report.segments, report.records, report.problems.len());
            Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Repair { data_dir, key_file } => {
            let options = StoreOptions {
                data_dir: data_dir.unwrap_or_else(|| PathBuf::from("ringrelay-data")),
                key_file,
                segment_size: SEGMENT_SIZE_DEFAULT,
            };
            println!("{}", tools::repair::run(&options)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync { url, store, shards, filter, dir, auth_key, tls_ca, relay } => {
            let job = SyncArgs { shards, filter, dir, auth_key, tls_ca, relay };
            sync(&url, store, job)
        }
        Command::Compact { store } => {
            let summary = tools::compact::run(&store.options()?)?;
            println!(
                "compacted {} segments ({} records) into {} segments ({} records)",
                summary.segments_before, summary.records_before, summary.segments_after, summary.records_after
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ringrelay sync`'s options besides the URL and the store.
struct SyncArgs {
    shards: Option<u16>,
    filter: String,
    dir: Direction,
    auth_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    relay: Option<String>,
}

/// `ringrelay sync`: a stopped data directory, or (`--relay`) a running relay asked to.
fn sync(url: &str, store: StoreArgs, args: SyncArgs) -> anyhow::Result<ExitCode> {
    let SyncArgs { shards, filter, dir, auth_key, tls_ca, relay } = args;
    let url = RelayUrl::parse(url).map_err(|error| anyhow::anyhow!(error))?;
    if let Some(relay) = relay {
        let key = auth_key.context("--relay needs --auth-key, an admin key of that relay (NIP-98)")?;
        let (ok, answer) = tools::sync::ask_running(&relay, &key, &url, dir, &filter)?;
        println!("{answer}");
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let shard_count = shards.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u16));
    let job = tools::sync::SyncJob { url, plan: Plan::new(filter, dir), auth_key, tls_ca, shard_count };
    let summary = tools::sync::run(&store.options()?, job)?;
    eprintln!("{summary}");
    Ok(ExitCode::SUCCESS)
}
