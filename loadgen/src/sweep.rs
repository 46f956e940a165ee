//! `--sweep`: the same plan at rising offered rates until an objective breaks; the highest
//! rate that held, and latency against rate drawn as SVG with plotters.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::plan::Plan;
use crate::run::{run, Target};
use crate::slo::{judge_all, Objective, Verdict};
use crate::stats::Report;

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The primary rate offered in this step.
    pub rate: f64,
    pub held: bool,
    pub verdicts: Vec<Verdict>,
    pub report: Report,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sweep {
    pub relay: String,
    pub rate_label: String,
    pub steps: Vec<Step>,
    /// The highest primary rate at which every objective held.
    pub highest_held: Option<f64>,
}

/// Run `plan` scaled by `factor^k` for k = 0, 1, ... up to `steps` runs, stopping after the
/// first step that breaks an objective.
pub fn sweep(
    target: &Target,
    plan: &Plan,
    objectives: &[Objective],
    factor: f64,
    steps: usize,
    progress: bool,
) -> anyhow::Result<Sweep> {
    anyhow::ensure!(factor > 1.0, "the sweep factor must be above 1");
    anyhow::ensure!(!objectives.is_empty(), "a sweep needs --slo to know when to stop");
    let (label, _) = plan.primary_rate();
    let mut result =
        Sweep { relay: target.url.clone(), rate_label: label.to_owned(), steps: Vec::new(), highest_held: None };
    for k in 0..steps {
        let step_plan = plan.scaled(factor.powi(k as i32));
        let rate = step_plan.primary_rate().1;
        if progress {
            eprintln!("loadgen: sweep step {} of at most {steps}: {label} {rate:.0}", k + 1);
        }
        let report = run(target, &step_plan, progress)?;
        let (held, verdicts) = judge_all(objectives, &report);
        if progress {
            eprint!("{}", report.render());
            eprintln!("loadgen: step at {rate:.0}: {}", if held { "held" } else { "broke" });
        }
        if held {
            result.highest_held = Some(rate);
        }
        result.steps.push(Step { rate, held, verdicts, report });
        if !held {
            break;
        }
    }
    Ok(result)
}

/// Latency (p50, p99, p99.9 of every scenario, log scale) against the offered rate.
pub fn plot(sweep: &Sweep, path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        path.extension().is_some_and(|e| e == "svg"),
        "the plot is written as SVG: give a path ending in .svg"
    );
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for step in &sweep.steps {
        for scenario in &step.report.scenarios {
            for (stat, value) in [
                ("p50", scenario.latency.p50_ms),
                ("p99", scenario.latency.p99_ms),
                ("p99.9", scenario.latency.p999_ms),
            ] {
                if scenario.latency.samples == 0 {
                    continue;
                }
                let name = format!("{} {stat}", scenario.name);
                let point = (step.rate, value.max(0.001));
                match series.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, points)) => points.push(point),
                    None => series.push((name, vec![point])),
                }
            }
        }
    }
    anyhow::ensure!(!series.is_empty(), "nothing to plot: no step recorded latency");
    let x_max = sweep.steps.iter().map(|s| s.rate).fold(1.0, f64::max) * 1.05;
    let y_values = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
    // Whole decades at both ends, so the log axis is labelled at each end.
    let y_max = 10f64.powf(y_values.clone().fold(0.01, f64::max).log10().ceil());
    let y_min = 10f64.powf(y_values.fold(f64::MAX, f64::min).log10().floor()).min(y_max / 10.0);
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: latency against offered rate", sweep.relay), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(sweep.rate_label.as_str())
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(8)
        .y_label_formatter(&|y| match *y {
            y if y >= 1.0 => format!("{y:.0}"),
            y if y >= 0.1 => format!("{y:.1}"),
            y => format!("{y:.2}"),
        })
        .light_line_style(WHITE)
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    if let Some(held) = sweep.highest_held {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(held, y_min), (held, y_max)],
            BLACK.mix(0.4).stroke_width(1),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(())
}
