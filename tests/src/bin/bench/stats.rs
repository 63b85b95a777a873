//! Medians, percentiles and spreads of repeated measurements.

use super::*;

pub(crate) fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The `p`-th percentile (0–100), nearest rank.
pub(crate) fn pct(v: &[f64], p: f64) -> f64 {
    let v = sorted(v);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub(crate) fn median(v: &[f64]) -> f64 {
    pct(v, 50.0)
}

pub(crate) fn spread(v: &[f64]) -> String {
    let v = sorted(v);
    match (v.first(), v.last()) {
        (Some(a), Some(b)) => format!("{a:.1}–{b:.1}"),
        _ => "-".into(),
    }
}

pub(crate) fn met(ok: bool) -> String {
    if ok { "met" } else { "missed" }.into()
}

pub(crate) fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}
