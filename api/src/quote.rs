//! Quotes: what a proof would take before it is submitted. The program is executed on the cluster
//! (an execute-mode proof through the normal pipeline, so the cycle count is exact and the api
//! never runs guest code), then the asked-for mode is estimated from this cluster's own completed
//! proofs: each figure (wall time, task- and runner-seconds per pool) is fitted as a line in the
//! cycle count over the recent history. When the proof is later submitted with the quote's id,
//! `Get` sets the estimate against what the proof actually took.

use std::time::Duration;

use chrono::Utc;
use proofjobs_pipeline::{
    stage::Mode,
    state::{wait_for, HistoryPoint, Notifications, ProofRow, ProofStatus, QuoteRow, Usage},
};
use tonic::Status;

use crate::{
    intake::{internal, Intake},
    proto,
};

/// How many recent completed proofs of a mode a quote learns from.
const HISTORY: i64 = 50;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Added to the ETA when the mode runs on GPU runners and none ran lately: the time the
    /// autoscaler takes to bring up a GPU node and the node to pull the runner image.
    pub gpu_scale_up: Duration,
    /// How long a GPU node stays up after its last runner (the autoscaler's scale-down delay).
    pub gpu_node_idle: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { gpu_scale_up: Duration::from_secs(240), gpu_node_idle: Duration::from_secs(600) }
    }
}

/// y = intercept + slope * x.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    intercept: f64,
    slope: f64,
}

impl Line {
    fn at(self, x: f64) -> f64 {
        (self.intercept + self.slope * x).max(0.0)
    }
}

/// Least-squares line through `points`, kept non-negative: a fixed part (start-up, setup) and a
/// part per cycle. With one distinct cycle count there is nothing to separate them, so the
/// figure is taken as proportional to the cycles.
fn fit(points: &[(f64, f64)]) -> Line {
    let n = points.len() as f64;
    if points.is_empty() {
        return Line { intercept: 0.0, slope: 0.0 };
    }
    let proportional = || {
        let (sxx, sxy) = points.iter().fold((0.0, 0.0), |(sxx, sxy), (x, y)| (sxx + x * x, sxy + x * y));
        Line { intercept: 0.0, slope: if sxx > 0.0 { sxy / sxx } else { 0.0 } }
    };
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let var_x: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    if var_x <= f64::EPSILON * mean_x.max(1.0) {
        return proportional();
    }
    let slope = points.iter().map(|(x, y)| (x - mean_x) * (y - mean_y)).sum::<f64>() / var_x;
    if slope < 0.0 {
        return Line { intercept: mean_y, slope: 0.0 };
    }
    let intercept = mean_y - slope * mean_x;
    if intercept < 0.0 {
        return proportional();
    }
    Line { intercept, slope }
}

/// The estimate for a proof of `cycles` from `history`; `gpu_warm` is whether a GPU node is
/// likely up (a GPU runner ran within the node's idle time).
fn estimate(cycles: u64, history: &[HistoryPoint], gpu_warm: bool, settings: &Settings) -> (f64, f64, Usage) {
    let x = cycles as f64;
    let at = |figure: fn(&HistoryPoint) -> f64| fit(&history.iter().map(|h| (h.cycles as f64, figure(h))).collect::<Vec<_>>()).at(x);
    let usage = Usage {
        cpu_task_secs: at(|h| h.usage.cpu_task_secs),
        gpu_task_secs: at(|h| h.usage.gpu_task_secs),
        cpu_runner_secs: at(|h| h.usage.cpu_runner_secs),
        gpu_runner_secs: at(|h| h.usage.gpu_runner_secs),
    };
    let uses_gpus = history.iter().any(|h| h.usage.gpu_runner_secs > 0.0);
    let scale_up = if uses_gpus && !gpu_warm { settings.gpu_scale_up.as_secs_f64() } else { 0.0 };
    (at(|h| h.wall_secs) + scale_up, scale_up, usage)
}

/// A usage as the API reports it, with its cost (priced now for a proof's figures, as stored for
/// a quote's).
pub(crate) fn usage_message(usage: &Usage, cost_usd: f64) -> proto::Usage {
    proto::Usage {
        cpu_task_secs: usage.cpu_task_secs,
        gpu_task_secs: usage.gpu_task_secs,
        cpu_runner_secs: usage.cpu_runner_secs,
        gpu_runner_secs: usage.gpu_runner_secs,
        estimated_cost_usd: cost_usd,
    }
}

fn estimate_message(quote: &QuoteRow) -> proto::Estimate {
    proto::Estimate {
        eta_secs: quote.eta_secs,
        scale_up_secs: quote.scale_up_secs,
        usage: Some(usage_message(&quote.usage, quote.cost_usd)),
    }
}

/// (estimated - actual) / actual in percent; None where the actual figure is 0.
fn error_pct(estimated: f64, actual: f64) -> Option<f64> {
    (actual > 0.0).then(|| 100.0 * (estimated - actual) / actual)
}

/// The quote's estimate, and once the proof has completed, the actual figures and the errors.
pub fn check(quote: &QuoteRow, proof: &ProofRow, actual: &proto::Usage) -> proto::QuoteCheck {
    let mut check = proto::QuoteCheck {
        quote_id: quote.id.clone(),
        basis_proofs: quote.basis_proofs as u32,
        estimated: Some(estimate_message(quote)),
        ..Default::default()
    };
    let (ProofStatus::Completed, Some(finished)) = (proof.status, proof.finished_at) else { return check };
    if quote.basis_proofs == 0 {
        return check;
    }
    let actual_secs = (finished - proof.created_at).num_milliseconds() as f64 / 1000.0;
    check.actual_secs = actual_secs;
    check.actual_usage = Some(*actual);
    check.eta_error_pct = error_pct(quote.eta_secs, actual_secs);
    check.cpu_task_secs_error_pct = error_pct(quote.usage.cpu_task_secs, actual.cpu_task_secs);
    check.gpu_task_secs_error_pct = error_pct(quote.usage.gpu_task_secs, actual.gpu_task_secs);
    check.cost_error_pct = error_pct(quote.cost_usd, actual.estimated_cost_usd);
    check
}

/// Executes the program as an execute-mode proof of `owner`'s, waits for it, and quotes `mode`.
pub async fn quote(
    intake: &Intake,
    notifications: &Notifications,
    mode: Mode,
    execution: crate::intake::Request,
    program: Vec<u8>,
    stdin: Vec<u8>,
) -> Result<proto::QuoteResponse, Status> {
    let owner = execution.owner.clone();
    let (id, _) = intake.submit(crate::intake::Request { mode: Mode::Execute, quote_id: None, ..execution }, program, stdin).await?;
    let mut wake = notifications.subscribe();
    let row = loop {
        let row = intake.db.get_proof(&id).await.map_err(internal)?.ok_or_else(|| Status::internal(format!("proof {id} vanished")))?;
        if row.status.is_terminal() {
            break row;
        }
        wait_for(&mut wake, Some(&id), Duration::from_secs(2)).await;
    };
    if row.status != ProofStatus::Completed {
        return Err(Status::failed_precondition(format!(
            "executing the program for the quote ended {} (proof {id}): {}",
            row.status.as_str(),
            row.failure_cause.unwrap_or_default()
        )));
    }
    let cycles = row.cycles.unwrap_or(0).max(0);
    let history = intake.db.history(mode, HISTORY).await.map_err(internal)?;
    let settings = intake.limits.quotes;
    let since = Utc::now() - chrono::Duration::from_std(settings.gpu_node_idle).unwrap_or_default();
    let gpu_warm = intake.db.gpu_runner_seen_since(since).await.map_err(internal)?;
    let (eta_secs, scale_up_secs, usage) = estimate(cycles as u64, &history, gpu_warm, &settings);
    let prices = intake.db.prices().await.map_err(internal)?;
    let quote = QuoteRow {
        id: id.clone(),
        owner,
        mode,
        cycles,
        basis_proofs: history.len() as i32,
        eta_secs,
        scale_up_secs,
        usage,
        cost_usd: usage.estimated_cost_usd(&prices),
        created_at: Utc::now(),
    };
    intake.db.insert_quote(&quote).await.map_err(internal)?;
    tracing::info!(quote = %id, mode = %mode, cycles, basis = history.len(), eta_secs, "quoted");
    Ok(proto::QuoteResponse {
        quote_id: id,
        mode: mode.as_str().to_string(),
        cycles: cycles as u64,
        public_values: row.public_values.unwrap_or_default(),
        basis_proofs: quote.basis_proofs as u32,
        estimate: Some(estimate_message(&quote)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(cycles: i64, wall_secs: f64, gpu_runner_secs: f64) -> HistoryPoint {
        HistoryPoint {
            cycles,
            wall_secs,
            usage: Usage { cpu_task_secs: wall_secs / 2.0, gpu_task_secs: 0.0, cpu_runner_secs: wall_secs, gpu_runner_secs },
        }
    }

    #[test]
    fn a_line_separates_the_fixed_part_from_the_part_per_cycle() {
        let line = fit(&[(1e6, 30.0), (2e6, 40.0), (4e6, 60.0)]);
        assert!((line.intercept - 20.0).abs() < 1e-9 && (line.slope - 1e-5).abs() < 1e-15, "{line:?}");
        assert!((line.at(3e6) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn one_cycle_count_scales_proportionally() {
        let line = fit(&[(1e6, 30.0), (1e6, 50.0)]);
        assert_eq!(line.intercept, 0.0);
        assert!((line.at(2e6) - 80.0).abs() < 1e-9);
    }

    #[test]
    fn the_fit_never_goes_negative() {
        // Falling with the cycles (noise): the mean, flat.
        assert_eq!(fit(&[(1e6, 50.0), (2e6, 30.0)]), Line { intercept: 40.0, slope: 0.0 });
        // A negative fixed part: proportional through the origin instead.
        let line = fit(&[(1e6, 1.0), (2e6, 100.0)]);
        assert_eq!(line.intercept, 0.0);
        assert!(line.slope > 0.0 && line.at(0.0) == 0.0);
        assert_eq!(fit(&[]).at(1e9), 0.0);
    }

    #[test]
    fn a_cold_gpu_pool_adds_the_scale_up_once() {
        let settings = Settings::default();
        let gpu = [point(1_000_000, 100.0, 80.0), point(2_000_000, 150.0, 120.0)];
        let (warm_eta, warm_scale, usage) = estimate(3_000_000, &gpu, true, &settings);
        assert_eq!(warm_scale, 0.0);
        assert!((warm_eta - 200.0).abs() < 1e-6 && (usage.gpu_runner_secs - 160.0).abs() < 1e-6);
        let (cold_eta, cold_scale, _) = estimate(3_000_000, &gpu, false, &settings);
        assert_eq!(cold_scale, 240.0);
        assert!((cold_eta - 440.0).abs() < 1e-6);
        // A mode that ran on CPU runners only waits for no GPU node.
        let cpu = [point(1_000_000, 100.0, 0.0)];
        assert_eq!(estimate(1_000_000, &cpu, false, &settings).1, 0.0);
        // No history: no estimate.
        assert_eq!(estimate(1_000_000, &[], false, &settings), (0.0, 0.0, Usage::default()));
    }

    #[test]
    fn errors_are_relative_to_the_actual_figure() {
        assert_eq!(error_pct(120.0, 100.0), Some(20.0));
        assert_eq!(error_pct(50.0, 100.0), Some(-50.0));
        assert_eq!(error_pct(5.0, 0.0), None);
    }
}
