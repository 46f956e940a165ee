//! What a run does: the scenarios, their rates and sizes, and the run's timing. A plan is
//! read from a TOML scenario file (`--scenario`), from flags, or both (flags win).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole run. Every section is optional; a run needs at least one scenario.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default)]
    pub run: RunPlan,
    pub publish: Option<PublishPlan>,
    pub fanout: Option<FanoutPlan>,
    pub query: Option<QueryPlan>,
    pub connect: Option<ConnectPlan>,
    /// Hostile clients run beside the measured scenarios (not measured themselves).
    pub abuse: Option<AbusePlan>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunPlan {
    /// The measured phase.
    pub duration: Span,
    /// Load before the measured phase whose samples are not recorded.
    pub warmup: Span,
    /// After the last send: how long to wait for outstanding replies and deliveries.
    pub drain: Span,
    /// Generator threads (one glommio executor each); 0 means one per online core.
    pub threads: usize,
    /// Makes authors, sizes, tags, filters and schedules reproducible.
    pub seed: u64,
    /// Distinct authors of published events.
    pub authors: usize,
    /// Answer the relay's NIP-42 challenge on every connection before using it (for relays
    /// that take events or queries from authenticated clients only). The key is derived from
    /// the seed unless `--auth-secret` gives one.
    pub auth: bool,
}

impl Default for RunPlan {
    fn default() -> Self {
        RunPlan {
            duration: Span(Duration::from_secs(10)),
            warmup: Span(Duration::from_secs(2)),
            drain: Span(Duration::from_secs(5)),
            threads: 0,
            seed: 1,
            authors: 1_000,
            auth: false,
        }
    }
}

/// `publish`: EVENT→OK latency of unique signed events.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishPlan {
    /// Events per second over all connections.
    pub rate: f64,
    pub connections: usize,
}

impl Default for PublishPlan {
    fn default() -> Self {
        PublishPlan { rate: 1_000.0, connections: 8 }
    }
}

/// `fanout`: subscribers with live filters of chosen selectivity; publish→delivery latency.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutPlan {
    /// Subscriber connections, one subscription each.
    pub subscribers: usize,
    /// Events per second published to them.
    pub rate: f64,
    /// Connections that publish those events.
    pub publishers: usize,
    /// Hashtags the events are spread over; a topic subscriber follows one, so each event
    /// reaches about `subscribers / topics` of them.
    pub topics: usize,
    /// Share of subscribers that follow an author instead of a topic.
    pub author_ratio: f64,
    /// Share of subscribers whose filter matches nothing published.
    pub idle_ratio: f64,
}

impl Default for FanoutPlan {
    fn default() -> Self {
        FanoutPlan { subscribers: 1_000, rate: 100.0, publishers: 1, topics: 10, author_ratio: 0.2, idle_ratio: 0.1 }
    }
}

/// `query`: history REQs over a store preloaded before the run; REQ→EOSE latency.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryPlan {
    /// REQs per second over all connections.
    pub rate: f64,
    pub connections: usize,
    /// Events published (and acknowledged) before the run, spread over the last day.
    pub preload: usize,
    /// `limit` of the author, kind and tag queries.
    pub limit: usize,
    /// Relative weights of the query shapes.
    pub ids: u32,
    pub author: u32,
    pub kind: u32,
    pub tag: u32,
}

impl Default for QueryPlan {
    fn default() -> Self {
        QueryPlan { rate: 100.0, connections: 4, preload: 10_000, limit: 50, ids: 1, author: 1, kind: 1, tag: 1 }
    }
}

/// `connect`: a ramp of new WebSocket connections that are then held open.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectPlan {
    pub connections: usize,
    /// New connections per second during the ramp.
    pub rate: f64,
}

impl Default for ConnectPlan {
    fn default() -> Self {
        ConnectPlan { connections: 1_000, rate: 200.0 }
    }
}

/// `abuse`: hostile clients beside the other scenarios, to measure what they cost the
/// well-behaved ones. Each starts at t0 and keeps at it until the run ends.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AbusePlan {
    /// Connections that each send COUNTs needing a full scan (kind 1 since 1) as fast as the
    /// relay takes them, and never read (unless `reading`).
    pub count_flooders: usize,
    /// Connections that each re-send one REQ of `churn_filters` filters (kind 1, limit 500)
    /// under the same subscription id as fast as the relay takes it, and never read (unless
    /// `reading`).
    pub req_churners: usize,
    pub churn_filters: usize,
    /// Connections subscribed to every event that never read, on a small receive buffer.
    pub stalled_readers: usize,
    /// The local address the abusers connect from (e.g. `127.0.0.2`), so that a relay's
    /// per-address limits can tell them from the other clients; unset: the default route's.
    pub source: Option<std::net::IpAddr>,
    /// Spread the abusers over this many addresses, `source` and the ones after it (abuser
    /// i uses the i-th modulo this), so that per-address limits do not bind: a flood from
    /// many hosts. 1: all from `source`.
    pub source_count: u32,
    /// Flooders and churners read (and drop) what comes back, as a hostile client that
    /// means to keep flooding would: one that never reads is held back by the relay's
    /// outbound budget and closed once its socket buffers fill.
    pub reading: bool,
}

impl Default for AbusePlan {
    fn default() -> Self {
        AbusePlan {
            count_flooders: 0,
            req_churners: 0,
            churn_filters: 10,
            stalled_readers: 0,
            source: None,
            source_count: 1,
            reading: false,
        }
    }
}

impl AbusePlan {
    /// The address abuser `index` connects from.
    pub fn source_of(&self, index: usize) -> Option<std::net::IpAddr> {
        let step = (index as u32) % self.source_count.max(1);
        self.source.map(|source| match source {
            std::net::IpAddr::V4(v4) => std::net::IpAddr::V4((u32::from(v4).wrapping_add(step)).into()),
            std::net::IpAddr::V6(v6) => std::net::IpAddr::V6((u128::from(v6).wrapping_add(u128::from(step))).into()),
        })
    }
}

impl Plan {
    pub fn from_toml(text: &str) -> anyhow::Result<Plan> {
        Ok(toml::from_str(text)?)
    }

    pub fn is_empty(&self) -> bool {
        self.publish.is_none() && self.fanout.is_none() && self.query.is_none() && self.connect.is_none()
    }

    /// Refuse what cannot run, before anything connects.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.is_empty(),
            "nothing to run: give a --scenario file or at least one of --publish, --fanout, --query, --connect"
        );
        anyhow::ensure!(self.run.duration.0 > Duration::ZERO, "the duration must be positive");
        anyhow::ensure!(self.run.authors > 0, "authors must be at least 1");
        if let Some(p) = &self.publish {
            anyhow::ensure!(p.rate > 0.0 && p.connections > 0, "publish needs a positive rate and connections");
        }
        if let Some(f) = &self.fanout {
            anyhow::ensure!(f.rate > 0.0 && f.publishers > 0, "fanout needs a positive rate and publishers");
            anyhow::ensure!(f.subscribers > 0 && f.topics > 0, "fanout needs subscribers and topics");
            anyhow::ensure!(
                (0.0..=1.0).contains(&f.author_ratio)
                    && (0.0..=1.0).contains(&f.idle_ratio)
                    && f.author_ratio + f.idle_ratio <= 1.0,
                "fanout author_ratio and idle_ratio are shares that add up to at most 1"
            );
        }
        if let Some(q) = &self.query {
            anyhow::ensure!(q.rate > 0.0 && q.connections > 0, "query needs a positive rate and connections");
            anyhow::ensure!(q.preload > 0 && q.limit > 0, "query needs a preload and a limit");
            anyhow::ensure!(q.ids + q.author + q.kind + q.tag > 0, "query needs at least one shape with weight");
        }
        if let Some(c) = &self.connect {
            anyhow::ensure!(c.rate > 0.0 && c.connections > 0, "connect needs a positive rate and connections");
        }
        if let Some(a) = &self.abuse {
            anyhow::ensure!(a.churn_filters >= 1, "abuse churn_filters must be at least 1");
        }
        Ok(())
    }

    /// The same plan with every offered rate multiplied by `factor` (one `--sweep` step).
    pub fn scaled(&self, factor: f64) -> Plan {
        let mut plan = self.clone();
        if let Some(p) = &mut plan.publish {
            p.rate *= factor;
        }
        if let Some(f) = &mut plan.fanout {
            f.rate *= factor;
        }
        if let Some(q) = &mut plan.query {
            q.rate *= factor;
        }
        if let Some(c) = &mut plan.connect {
            c.rate *= factor;
        }
        plan
    }

    /// The rate a sweep's plot is drawn against: the first scenario present.
    pub fn primary_rate(&self) -> (&'static str, f64) {
        if let Some(p) = &self.publish {
            ("publish rate (events/s)", p.rate)
        } else if let Some(f) = &self.fanout {
            ("fanout publish rate (events/s)", f.rate)
        } else if let Some(q) = &self.query {
            ("query rate (REQs/s)", q.rate)
        } else if let Some(c) = &self.connect {
            ("connect rate (connections/s)", c.rate)
        } else {
            ("rate", 0.0)
        }
    }
}

/// A duration written as `"10s"`, `"500ms"`, `"2m"` or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span(pub Duration);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("not a duration: {text:?} (try 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown duration unit in {text:?} (use ns, us, ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("not a duration: {text:?}"))
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Seconds(seconds) => {
                Duration::try_from_secs_f64(seconds).map(Span).map_err(|_| serde::de::Error::custom("bad duration"))
            }
            Raw::Text(text) => parse_duration(&text).map(Span).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abusers_spread_over_consecutive_addresses() {
        let spread = |source: &str, count: u32| {
            let plan = AbusePlan { source: Some(source.parse().unwrap()), source_count: count, ..AbusePlan::default() };
            (0..4).map(|i| plan.source_of(i).unwrap().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(spread("127.0.0.2", 3), ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"]);
        assert_eq!(spread("127.0.0.254", 3), ["127.0.0.254", "127.0.0.255", "127.0.1.0", "127.0.0.254"]);
        assert_eq!(spread("::1", 2), ["::1", "::2", "::1", "::2"]);
        assert_eq!(spread("127.0.0.2", 1), ["127.0.0.2"; 4]);
        assert_eq!(AbusePlan::default().source_of(3), None);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn a_mixed_scenario_file_reads_with_defaults() {
        let plan = Plan::from_toml(
            "[run]\nduration = \"30s\"\nseed = 7\n[publish]\nrate = 500\n[fanout]\nsubscribers = 20\n[query]\npreload = 100\n",
        )
        .unwrap();
        assert_eq!(plan.run.duration.0, Duration::from_secs(30));
        assert_eq!(plan.publish.as_ref().unwrap().connections, 8);
        assert_eq!(plan.fanout.as_ref().unwrap().subscribers, 20);
        assert!(plan.connect.is_none());
        plan.validate().unwrap();
        assert!(Plan::from_toml("[publish]\nrat = 5\n").is_err(), "unknown keys are refused");
        assert!(Plan::default().validate().is_err(), "an empty plan is refused");
    }

    #[test]
    fn the_standard_scenarios_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let plan = Plan::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
            plan.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
        names.sort();
        assert_eq!(names, ["abuse", "broadcast", "connect", "fanout", "mixed", "publish", "query"]);
    }
}
