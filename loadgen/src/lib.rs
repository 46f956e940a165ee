//! loadgen: an open-loop SLO load generator for any NIP-01 relay.
//!
//! - `plan`: what a run does (scenario TOML and flags);
//! - `workload`: authors, events (signed before the run), filters, seeded;
//! - `wire`: reading relay replies cheaply;
//! - `run`: generator threads, open-loop schedules, progress, drain, the report;
//! - `stats`: histograms, counts, errors, the report types;
//! - `slo`: objectives and verdicts; `sweep`: rising rates and the latency/rate plot.

pub mod plan;
pub mod run;
pub mod slo;
pub mod stats;
pub mod sweep;
pub mod wire;
pub mod workload;

use std::path::PathBuf;

use clap::Parser;

pub use plan::Plan;
pub use run::{run, Target};
pub use stats::Report;

/// Exit status when every objective held (or none was given).
pub const EXIT_HELD: u8 = 0;
/// Exit status when an objective broke (for a sweep: when not even the first step held).
pub const EXIT_BROKE: u8 = 1;
/// Exit status for bad arguments or a run that could not take place.
pub const EXIT_FAILED: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Open-loop SLO load generator for any NIP-01 Nostr relay",
    after_help = "Examples:\n  \
        loadgen ws://127.0.0.1:7777 --publish 2000 --slo 'publish.p99<5ms'\n  \
        loadgen ws://127.0.0.1:7777 --fanout 1000 --fanout-rate 200 -d 30s --json run.json\n  \
        loadgen ws://127.0.0.1:7777 --scenario loadgen/scenarios/mixed.toml\n  \
        loadgen ws://127.0.0.1:7777 --publish 1000 --sweep --slo 'publish.p99<10ms' --plot sweep.svg\n  \
        loadgen ws://127.0.0.1:7777 --query 200 --count-flooders 2 --req-churners 2 --stalled-readers 500\n\n\
        Exit status: 0 objectives held, 1 an objective broke, 2 the run could not take place."
)]
pub struct Args {
    /// The relay (ws://HOST:PORT[/PATH] or wss://HOST[:PORT][/PATH]); loadgen connects nowhere else.
    pub url: String,
    /// A TOML scenario file (see loadgen/scenarios/); flags below override it.
    #[arg(short, long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// publish: unique signed events per second (EVENT→OK latency).
    #[arg(long, value_name = "RATE")]
    pub publish: Option<f64>,
    #[arg(long, value_name = "N")]
    pub publish_connections: Option<usize>,
    /// fanout: this many subscribers, one connection and subscription each.
    #[arg(long, value_name = "SUBSCRIBERS")]
    pub fanout: Option<usize>,
    /// fanout: events per second published to the subscribers.
    #[arg(long, value_name = "RATE")]
    pub fanout_rate: Option<f64>,
    /// fanout: hashtags events spread over (selectivity: each reaches ~1/TOPICS of topic followers).
    #[arg(long, value_name = "N")]
    pub fanout_topics: Option<usize>,
    /// query: history REQs per second over a preloaded store (REQ→EOSE latency).
    #[arg(long, value_name = "RATE")]
    pub query: Option<f64>,
    #[arg(long, value_name = "EVENTS")]
    pub query_preload: Option<usize>,
    #[arg(long, value_name = "N")]
    pub query_limit: Option<usize>,
    /// connect: ramp to this many connections and hold them (handshake latency).
    #[arg(long, value_name = "CONNECTIONS")]
    pub connect: Option<usize>,
    /// connect: new connections per second during the ramp.
    #[arg(long, value_name = "RATE")]
    pub connect_rate: Option<f64>,
    /// abuse: connections flooding COUNTs that need a scan, never reading.
    #[arg(long, value_name = "N")]
    pub count_flooders: Option<usize>,
    /// abuse: connections re-sending one REQ as fast as the relay takes it, never reading.
    #[arg(long, value_name = "N")]
    pub req_churners: Option<usize>,
    /// abuse: connections subscribed to everything that never read.
    #[arg(long, value_name = "N")]
    pub stalled_readers: Option<usize>,
    /// abuse: the local address the abusers connect from (e.g. 127.0.0.2), so that the
    /// relay's per-address rate limits can tell them from the well-behaved clients.
    #[arg(long, value_name = "IP")]
    pub abuse_source: Option<std::net::IpAddr>,
    /// abuse: spread the abusers over this many addresses from --abuse-source on (127.0.0.2,
    /// 127.0.0.3, ...), a flood from many hosts that per-address limits do not bind.
    #[arg(long, value_name = "N", requires = "abuse_source")]
    pub abuse_sources: Option<u32>,
    /// abuse: flooders and churners read (and drop) their answers, so that the relay's
    /// outbound budget does not hold them back.
    #[arg(long)]
    pub abuse_reading: bool,
    /// The measured phase (e.g. 30s).
    #[arg(short, long, value_parser = plan::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Load before the measured phase, not recorded.
    #[arg(short, long, value_parser = plan::parse_duration)]
    pub warmup: Option<std::time::Duration>,
    /// Longest wait for outstanding replies after the last send.
    #[arg(long, value_parser = plan::parse_duration)]
    pub drain: Option<std::time::Duration>,
    /// Answer the relay's NIP-42 challenge on every connection (a key derived from the seed).
    #[arg(long)]
    pub auth: bool,
    /// With --auth: authenticate as this key (64 hex characters), e.g. one the relay allows.
    #[arg(long, value_name = "HEX")]
    pub auth_secret: Option<String>,
    /// Generator threads (default: one per online core).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Seed of the workload (authors, sizes, tags, filters).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Distinct authors of published events.
    #[arg(long)]
    pub authors: Option<usize>,
    /// Objectives that set the exit status, e.g. 'publish.p99<5ms,fanout.p99<10ms,errors<0.1%'.
    #[arg(long)]
    pub slo: Option<String>,
    /// Write the report (or the sweep) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Raise every rate step by step until an objective breaks.
    #[arg(long)]
    pub sweep: bool,
    /// Rate multiplier between sweep steps.
    #[arg(long, default_value_t = 1.5)]
    pub sweep_factor: f64,
    /// Most sweep steps.
    #[arg(long, default_value_t = 10)]
    pub sweep_steps: usize,
    /// Where the sweep draws latency against rate (SVG).
    #[arg(long, value_name = "FILE.svg", default_value = "loadgen-sweep.svg")]
    pub plot: PathBuf,
    /// The relay's process id, when it runs on this host: its CPU use over the measured
    /// phase is reported, and what it completed per CPU-second.
    #[arg(long, value_name = "PID")]
    pub relay_pid: Option<u32>,
    /// Also trust the certificates in this PEM file for a wss:// relay (a private CA or a
    /// self-signed relay certificate); the web's usual roots are always trusted.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Offer permessage-deflate (RFC 7692) on every connection and read compressed frames;
    /// fanout then reports the bytes on the wire per delivery (fanout.wire_bytes).
    #[arg(long)]
    pub deflate: bool,
    /// No progress lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

impl Args {
    /// The plan: the scenario file if any, then every flag on top.
    pub fn plan(&self) -> anyhow::Result<Plan> {
        let mut plan = match &self.scenario {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read scenario {}: {e}", path.display()))?;
                Plan::from_toml(&text).map_err(|e| anyhow::anyhow!("scenario {}: {e}", path.display()))?
            }
            None => Plan::default(),
        };
        if self.publish.is_some() || self.publish_connections.is_some() {
            let p = plan.publish.get_or_insert_with(Default::default);
            p.rate = self.publish.unwrap_or(p.rate);
            p.connections = self.publish_connections.unwrap_or(p.connections);
        }
        if self.fanout.is_some() || self.fanout_rate.is_some() || self.fanout_topics.is_some() {
            let f = plan.fanout.get_or_insert_with(Default::default);
            f.subscribers = self.fanout.unwrap_or(f.subscribers);
            f.rate = self.fanout_rate.unwrap_or(f.rate);
            f.topics = self.fanout_topics.unwrap_or(f.topics);
        }
        if self.query.is_some() || self.query_preload.is_some() || self.query_limit.is_some() {
            let q = plan.query.get_or_insert_with(Default::default);
            q.rate = self.query.unwrap_or(q.rate);
            q.preload = self.query_preload.unwrap_or(q.preload);
            q.limit = self.query_limit.unwrap_or(q.limit);
        }
        if self.connect.is_some() || self.connect_rate.is_some() {
            let c = plan.connect.get_or_insert_with(Default::default);
            c.connections = self.connect.unwrap_or(c.connections);
            c.rate = self.connect_rate.unwrap_or(c.rate);
        }
        if self.count_flooders.is_some() || self.req_churners.is_some() || self.stalled_readers.is_some() {
            let a = plan.abuse.get_or_insert_with(Default::default);
            a.count_flooders = self.count_flooders.unwrap_or(a.count_flooders);
            a.req_churners = self.req_churners.unwrap_or(a.req_churners);
            a.stalled_readers = self.stalled_readers.unwrap_or(a.stalled_readers);
        }
        if let (true, Some(a)) = (self.abuse_reading, plan.abuse.as_mut()) {
            a.reading = true;
        }
        if let (Some(source), Some(a)) = (self.abuse_source, plan.abuse.as_mut()) {
            a.source = Some(source);
            a.source_count = self.abuse_sources.unwrap_or(a.source_count);
        }
        let run = &mut plan.run;
        run.duration = self.duration.map_or(run.duration, plan::Span);
        run.warmup = self.warmup.map_or(run.warmup, plan::Span);
        run.drain = self.drain.map_or(run.drain, plan::Span);
        run.threads = self.threads.unwrap_or(run.threads);
        run.seed = self.seed.unwrap_or(run.seed);
        run.auth |= self.auth || self.auth_secret.is_some();
        run.authors = self.authors.unwrap_or(run.authors);
        plan.validate()?;
        Ok(plan)
    }
}

/// The whole command line: what `main` runs, and what the tests drive; returns the exit
/// status ([`EXIT_HELD`], [`EXIT_BROKE`] or [`EXIT_FAILED`]).
pub fn main_with_args<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { EXIT_FAILED } else { EXIT_HELD };
        }
    };
    match execute(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            EXIT_FAILED
        }
    }
}

fn execute(args: &Args) -> anyhow::Result<u8> {
    let plan = args.plan()?;
    let objectives = match &args.slo {
        Some(spec) => slo::parse(spec).map_err(|e| anyhow::anyhow!("--slo: {e}"))?,
        None => Vec::new(),
    };
    let mut target = Target::parse_trusting(&args.url, args.tls_ca.as_deref())?;
    target.pid = args.relay_pid;
    target.deflate = args.deflate;
    if let Some(secret) = &args.auth_secret {
        let secret: secp256k1::SecretKey =
            secret.trim().parse().map_err(|_| anyhow::anyhow!("--auth-secret: not a secret key in hex"))?;
        target.auth = Some(secp256k1::Keypair::from_secret_key(secp256k1::SECP256K1, &secret));
    }
    let progress = !args.quiet;
    if args.sweep {
        let result = sweep::sweep(&target, &plan, &objectives, args.sweep_factor, args.sweep_steps, progress)?;
        sweep::plot(&result, &args.plot)?;
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
        }
        match result.highest_held {
            Some(rate) => {
                println!("sweep: highest {} that held: {rate:.0}; plot in {}", result.rate_label, args.plot.display())
            }
            None => println!("sweep: no step held; plot in {}", args.plot.display()),
        }
        return Ok(if result.highest_held.is_some() { EXIT_HELD } else { EXIT_BROKE });
    }
    let report = run(&target, &plan, progress)?;
    let (held, verdicts) = slo::judge_all(&objectives, &report);
    print!("{}", report.render());
    for verdict in &verdicts {
        let measured = verdict.measured.map_or("no such scenario".to_owned(), |m| format!("{m:.4}"));
        println!("slo {}: {} (measured {measured})", verdict.objective, if verdict.held { "held" } else { "BROKE" });
    }
    if let Some(path) = &args.json {
        let document = serde_json::json!({ "report": report, "slo": verdicts, "held": held });
        std::fs::write(path, serde_json::to_string_pretty(&document)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(if held { EXIT_HELD } else { EXIT_BROKE })
}
