//! Service-level objectives: `publish.p99<5ms,fanout.p99<10ms,errors<0.1%`.
//!
//! A term is `METRIC OP VALUE` with OP one of `<`, `<=`, `>`, `>=`. Metrics:
//! - `SCENARIO.STAT` with STAT `p50`, `p90`, `p99`, `p99.9`, `max` or `mean`, and a
//!   duration value (`800us`, `5ms`, `1s`);
//! - `SCENARIO.achieved`: achieved / offered rate, as a share (`>=0.99` or `>=99%`);
//! - `errors` or `SCENARIO.errors`: errors per operation, as a share (`<0.1%`).

use crate::plan::parse_duration;
use crate::stats::Report;

#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    pub text: String,
    scenario: Option<String>,
    stat: String,
    op: Op,
    /// Milliseconds for latencies, a share for rates and errors.
    value: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

/// The outcome of one objective on one report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verdict {
    pub objective: String,
    pub measured: Option<f64>,
    pub held: bool,
}

pub fn parse(spec: &str) -> Result<Vec<Objective>, String> {
    spec.split(',').map(str::trim).filter(|t| !t.is_empty()).map(parse_term).collect()
}

fn parse_term(text: &str) -> Result<Objective, String> {
    let at = text.find(['<', '>']).ok_or_else(|| format!("{text:?}: expected METRIC<VALUE or METRIC>VALUE"))?;
    let (metric, rest) = text.split_at(at);
    let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
        (Op::Le, v)
    } else if let Some(v) = rest.strip_prefix(">=") {
        (Op::Ge, v)
    } else if let Some(v) = rest.strip_prefix('<') {
        (Op::Lt, v)
    } else {
        (Op::Gt, &rest[1..])
    };
    let metric = metric.trim();
    let (scenario, stat) = match metric.split_once('.') {
        Some((scenario, stat)) => (Some(scenario.to_owned()), stat.to_owned()),
        None => (None, metric.to_owned()),
    };
    if let Some(s) = &scenario {
        if !["publish", "fanout", "query", "connect"].contains(&s.as_str()) {
            return Err(format!("{text:?}: unknown scenario {s:?} (publish, fanout, query, connect)"));
        }
    }
    let value = value.trim();
    let value = match stat.as_str() {
        "errors" | "achieved" => {
            parse_share(value).ok_or_else(|| format!("{text:?}: {value:?} is not a share (0.001 or 0.1%)"))?
        }
        "p50" | "p90" | "p99" | "p99.9" | "p999" | "max" | "mean" if scenario.is_some() => {
            parse_duration(value).map_err(|e| format!("{text:?}: {e}"))?.as_secs_f64() * 1e3
        }
        _ => return Err(format!("{text:?}: unknown metric {metric:?}")),
    };
    if stat == "achieved" && scenario.is_none() {
        return Err(format!("{text:?}: achieved belongs to a scenario, e.g. publish.achieved>=99%"));
    }
    Ok(Objective { text: text.to_owned(), scenario, stat, op, value })
}

fn parse_share(text: &str) -> Option<f64> {
    match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().ok().map(|p| p / 100.0),
        None => text.parse().ok(),
    }
}

impl Objective {
    pub fn judge(&self, report: &Report) -> Verdict {
        let measured = self.measure(report);
        let held = measured.is_some_and(|m| match self.op {
            Op::Lt => m < self.value,
            Op::Le => m <= self.value,
            Op::Gt => m > self.value,
            Op::Ge => m >= self.value,
        });
        Verdict { objective: self.text.clone(), measured, held }
    }

    /// The measured value, or `None` when the report has no such scenario (which fails).
    fn measure(&self, report: &Report) -> Option<f64> {
        let Some(name) = &self.scenario else {
            return Some(report.error_ratio);
        };
        let scenario = report.scenario(name)?;
        match self.stat.as_str() {
            "errors" => {
                let errors: u64 = scenario.errors.values().sum();
                Some(if scenario.offered == 0 { 0.0 } else { errors as f64 / scenario.offered as f64 })
            }
            "achieved" => {
                Some(if scenario.offered_rate > 0.0 { scenario.achieved_rate / scenario.offered_rate } else { 0.0 })
            }
            stat => scenario.latency.stat(stat),
        }
    }
}

/// Judge every objective; true when all held.
pub fn judge_all(objectives: &[Objective], report: &Report) -> (bool, Vec<Verdict>) {
    let verdicts: Vec<Verdict> = objectives.iter().map(|o| o.judge(report)).collect();
    (verdicts.iter().all(|v| v.held), verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_parse() {
        let objectives = parse("publish.p99<5ms, fanout.p99.9<=10ms,errors<0.1%,query.achieved>=0.99").unwrap();
        assert_eq!(objectives.len(), 4);
        assert_eq!(objectives[0].value, 5.0);
        assert_eq!(objectives[1].stat, "p99.9");
        assert!((objectives[2].value - 0.001).abs() < 1e-12);
        assert_eq!(objectives[3].op, Op::Ge);
        assert!(parse("publish.p99 5ms").is_err());
        assert!(parse("bogus.p99<5ms").is_err());
        assert!(parse("publish.p77<5ms").is_err());
        assert!(parse("publish.p99<fast").is_err());
        assert!(parse("achieved>1").is_err());
    }
}
