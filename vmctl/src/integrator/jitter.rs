//! The jittered period between cycles, so that many integrators started
//! together never poll their batch systems in lock-step.

use std::time::Duration;

/// The largest jitter fraction accepted: a period never shrinks below half
/// or grows past one and a half times its nominal length.
pub const MAX_JITTER: f64 = 0.5;

/// `period` scaled by a factor in `[1 - f, 1 + f]`, where `f` is `fraction`
/// clamped to `[0, MAX_JITTER]` and `unit` (in `[0, 1]`, clamped) picks the
/// point in that range. Pure, so the bounds are testable.
pub fn jittered(period: Duration, fraction: f64, unit: f64) -> Duration {
    let f = if fraction.is_finite() {
        fraction.clamp(0.0, MAX_JITTER)
    } else {
        0.0
    };
    let u = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    period.mul_f64(1.0 - f + 2.0 * f * u)
}

/// The next period with a random point in the jitter range.
pub fn next_period(period: Duration, fraction: f64) -> Duration {
    jittered(period, fraction, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bounds() {
        let p = Duration::from_secs(60);
        assert_eq!(jittered(p, 0.2, 0.0), Duration::from_secs(48));
        assert_eq!(jittered(p, 0.2, 1.0), Duration::from_secs(72));
        assert_eq!(jittered(p, 0.2, 0.5), p);
        // Out-of-range inputs are clamped, never unbounded.
        assert_eq!(jittered(p, 5.0, 1.0), Duration::from_secs(90));
        assert_eq!(jittered(p, -1.0, 1.0), p);
        assert_eq!(jittered(p, f64::NAN, 1.0), p);
        assert_eq!(jittered(p, 0.2, 7.0), Duration::from_secs(72));
        for _ in 0..10_000 {
            let d = next_period(p, 0.25);
            assert!(
                d >= Duration::from_secs(45) && d <= Duration::from_secs(75),
                "{d:?}"
            );
        }
    }

    #[test]
    fn random_periods_spread() {
        let p = Duration::from_secs(10);
        let mut seen: Vec<Duration> = (0..100).map(|_| next_period(p, 0.3)).collect();
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 50, "jitter should spread the periods");
    }
}
