//! `--saturate`: the highest offered rate a broker sustains, found by
//! running the scenario in short steps. The rate grows by half from
//! `--rate` until a step is not sustained, then the gap between the last
//! sustained and the first unsustained rate is halved until it is within
//! 10%. Each step is a whole run (its own connections and clock), so a
//! backlog left by an overloaded step cannot slow the next.
//!
//! A step is sustained when the broker accepted at least 95% of the offer
//! per second, delivered everything it accepted before the drain ended,
//! made no errors, and its send->delivery p99 stayed within
//! `--saturation-p99-ms` (a queue that keeps growing shows there first).

use super::report::{Report, Saturation, SaturationStep};
use super::BenchArgs;

/// Growth of the offered rate while every step is sustained.
const GROWTH: f64 = 1.5;
/// The search stops when the unsustained rate is within this factor of the
/// sustained one.
const PRECISION: f64 = 1.1;
/// Accepted/s below this share of the offer is not sustained.
const MIN_ACCEPTED_SHARE: f64 = 0.95;

/// Whether one step's `report` at `offered` msg/s shows a broker keeping up.
pub fn sustained(report: &Report, offered: f64, p99_limit_ms: f64) -> bool {
    report.errors == 0
        && report.lost == 0
        && report.accepted > 0
        && report.accepted_per_sec >= MIN_ACCEPTED_SHARE * offered
        && report.delivery_latency.p99_ms <= p99_limit_ms
}

/// The next rate to try after `steps`, or `None` when the search is done.
pub fn next_rate(steps: &[SaturationStep], max_steps: usize) -> Option<f64> {
    let first = steps.first()?;
    if steps.len() >= max_steps {
        return None;
    }
    let best_ok = steps
        .iter()
        .filter(|s| s.sustained)
        .map(|s| s.rate)
        .fold(None, |acc: Option<f64>, r| {
            Some(acc.map_or(r, |a| a.max(r)))
        });
    let lowest_failed = steps
        .iter()
        .filter(|s| !s.sustained)
        .map(|s| s.rate)
        .fold(None, |acc: Option<f64>, r| {
            Some(acc.map_or(r, |a| a.min(r)))
        });
    match (best_ok, lowest_failed) {
        (Some(ok), None) => Some(ok * GROWTH),
        (Some(ok), Some(failed)) if failed > ok * PRECISION => Some((ok + failed) / 2.0),
        (Some(_), Some(_)) => None,
        // Not even the first rate held: go down until one does.
        (None, Some(failed)) if failed > first.rate / 16.0 => Some(failed / 2.0),
        (None, _) => None,
    }
}

/// Runs the search; the returned report is the highest sustained step's (or
/// the first step's, if none was), with every step in `saturation`.
pub async fn search(args: &BenchArgs) -> anyhow::Result<Report> {
    let mut steps = Vec::new();
    let mut best: Option<Report> = None;
    let mut first: Option<Report> = None;
    let mut rate = args.rate;
    loop {
        let mut step_args = args.clone();
        step_args.rate = rate;
        step_args.saturate = false;
        let report = super::run_once(&step_args).await?;
        let step = SaturationStep {
            rate,
            accepted_per_sec: report.accepted_per_sec,
            delivered_per_sec: report.delivered_per_sec,
            delivery_p99_ms: report.delivery_latency.p99_ms,
            errors_and_lost: report.errors + report.lost,
            sustained: sustained(&report, rate, args.saturation_p99_ms),
        };
        if !args.quiet {
            eprintln!(
                "saturation step {rate:.0} msg/s: accepted {:.0}/s, p99 {:.1} ms, {}",
                step.accepted_per_sec,
                step.delivery_p99_ms,
                if step.sustained {
                    "sustained"
                } else {
                    "not sustained"
                }
            );
        }
        if step.sustained && best.as_ref().is_none_or(|b| b.params.rate < rate) {
            best = Some(report.clone());
        }
        first.get_or_insert(report);
        steps.push(step);
        match next_rate(&steps, args.saturation_max_steps as usize) {
            Some(next) => rate = next.round(),
            None => break,
        }
    }
    let mut report = best.or(first).unwrap_or_default();
    report.saturation = Some(summarize(steps));
    Ok(report)
}

fn summarize(steps: Vec<SaturationStep>) -> Saturation {
    let max = |f: fn(&SaturationStep) -> f64| steps.iter().map(f).fold(0.0, f64::max);
    let best = steps
        .iter()
        .filter(|s| s.sustained)
        .max_by(|a, b| a.rate.total_cmp(&b.rate));
    Saturation {
        sustained_rate: best.map_or(0.0, |s| s.rate),
        sustained_delivered_per_sec: best.map_or(0.0, |s| s.delivered_per_sec),
        max_accepted_per_sec: max(|s| s.accepted_per_sec),
        max_delivered_per_sec: max(|s| s.delivered_per_sec),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LatencySummary;

    fn step(rate: f64, sustained: bool) -> SaturationStep {
        SaturationStep {
            rate,
            sustained,
            ..SaturationStep::default()
        }
    }

    #[test]
    fn grows_until_a_step_fails_then_halves_the_gap() {
        let mut steps = vec![step(1000.0, true)];
        assert_eq!(next_rate(&steps, 12), Some(1500.0));
        steps.push(step(1500.0, true));
        assert_eq!(next_rate(&steps, 12), Some(2250.0));
        steps.push(step(2250.0, false));
        assert_eq!(next_rate(&steps, 12), Some(1875.0));
        steps.push(step(1875.0, false));
        assert_eq!(next_rate(&steps, 12), Some(1687.5));
        steps.push(step(1687.5, true));
        assert_eq!(next_rate(&steps, 12), Some(1781.25));
        steps.push(step(1781.25, true));
        // 1875 is within 10% of 1781.25: done.
        assert_eq!(next_rate(&steps, 12), None);
        assert_eq!(summarize(steps).sustained_rate, 1781.25);
    }

    #[test]
    fn a_first_step_that_fails_goes_down_and_the_step_budget_ends_it() {
        let steps = vec![step(8000.0, false)];
        assert_eq!(next_rate(&steps, 12), Some(4000.0));
        assert_eq!(next_rate(&steps, 1), None);
        let hopeless: Vec<_> = [8000.0, 4000.0, 2000.0, 1000.0, 500.0]
            .into_iter()
            .map(|r| step(r, false))
            .collect();
        assert_eq!(next_rate(&hopeless, 12), None);
        assert_eq!(summarize(hopeless).sustained_rate, 0.0);
    }

    #[test]
    fn sustained_needs_the_offer_every_delivery_no_error_and_a_bounded_p99() {
        let good = Report {
            accepted: 1000,
            accepted_per_sec: 980.0,
            delivery_latency: LatencySummary {
                count: 1000,
                p99_ms: 20.0,
                ..LatencySummary::default()
            },
            ..Report::default()
        };
        assert!(sustained(&good, 1000.0, 500.0));
        assert!(!sustained(&good, 1100.0, 500.0), "below 95% of the offer");
        assert!(!sustained(&good, 1000.0, 10.0), "p99 above the limit");
        let lossy = Report {
            lost: 1,
            ..good.clone()
        };
        assert!(!sustained(&lossy, 1000.0, 500.0));
        let failing = Report { errors: 3, ..good };
        assert!(!sustained(&failing, 1000.0, 500.0));
    }
}
