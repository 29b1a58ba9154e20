//! How long change notices take to reach a near tier: [`LagHistogram`] in
//! [`Stats::near_lag`](crate::Stats::near_lag), and the live counts behind
//! it.
//!
//! A notice carries the time its change was sent (`changes.rs`); its lag is
//! the time from then until this process applied it. Across machines the
//! two clocks' offset is part of it (a notice that seems to come from the
//! future counts as 0).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bounds of the buckets, in microseconds; one more bucket holds
/// everything slower.
const BOUNDS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A histogram of near-tier propagation lags: the time from a change
/// being sent by any process to this process's near tier applying its
/// notice, on stores that push them: invalidations, deletes and writes on
/// Redis; invalidations and deletes on PostgreSQL (whose writes' notices
/// are made by the database and carry no time). It starts when the
/// changing call is sent, so it includes the change's own round trips;
/// across machines, the offset between their clocks too. Empty on polling
/// stores and without a near tier.
///
/// ```
/// # let stats = cacheruntime::Stats::default();
/// let lag = &stats.near_lag;
/// if let Some(p99) = lag.quantile(0.99) {
///     println!("p99 propagation under {p99:?} over {} notices", lag.count());
/// }
/// for (upper, n) in lag.buckets() {
///     // `upper` is `None` for the last bucket (slower than every bound).
///     let _ = (upper, n);
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LagHistogram {
    /// Counts per bucket: `BOUNDS_US`, then one for anything slower.
    counts: Vec<u64>,
    sum_us: u64,
}

impl LagHistogram {
    /// The notices measured.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Each bucket's upper bound (`None`: above every bound, 1 s) and the
    /// notices in it, fastest first. Bounds: 100, 250 and 500 µs; 1, 2.5,
    /// 5, 10, 25, 50, 100 and 250 ms; 1 s.
    pub fn buckets(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        BOUNDS_US
            .iter()
            .map(|&us| Some(Duration::from_micros(us)))
            .chain(std::iter::once(None))
            .zip(
                self.counts
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(0))
                    .take(BOUNDS_US.len() + 1),
            )
    }

    /// The upper bound of the bucket holding quantile `q` (0.0 to 1.0) of
    /// the lags, or `None` when nothing was measured or it lies above
    /// every bound (over 1 s).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (upper, n) in self.buckets() {
            seen += n;
            if seen >= rank {
                return upper;
            }
        }
        None
    }

    /// The mean lag, or `None` before the first notice.
    pub fn mean(&self) -> Option<Duration> {
        let total = self.count();
        (total > 0).then(|| Duration::from_micros(self.sum_us / total))
    }
}

const HOUR_US: u64 = 3_600_000_000;

/// The live counts of one near tier.
#[derive(Debug, Default)]
pub(crate) struct LagRecorder {
    counts: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LagRecorder {
    /// Counts one notice that took `lag`.
    pub(crate) fn record(&self, lag: Duration) {
        // A stamp far off (a clock set wrong) counts in the last bucket,
        // and adds at most an hour to the sum, which cannot wrap then.
        let us = u64::try_from(lag.as_micros()).map_or(HOUR_US, |us| us.min(HOUR_US));
        let bucket = BOUNDS_US.partition_point(|&bound| bound < us);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LagHistogram {
        LagHistogram {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lags_land_in_the_bucket_of_their_upper_bound() {
        let r = LagRecorder::default();
        for us in [50, 100, 101, 3_000, 2_000_000] {
            r.record(Duration::from_micros(us));
        }
        let h = r.snapshot();
        assert_eq!(h.count(), 5);
        let got: Vec<_> = h.buckets().filter(|&(_, n)| n > 0).collect();
        assert_eq!(
            got,
            [
                (Some(Duration::from_micros(100)), 2),
                (Some(Duration::from_micros(250)), 1),
                (Some(Duration::from_millis(5)), 1),
                (None, 1),
            ]
        );
        assert_eq!(h.quantile(0.4), Some(Duration::from_micros(100)));
        assert_eq!(h.quantile(0.6), Some(Duration::from_micros(250)));
        assert_eq!(h.quantile(0.8), Some(Duration::from_millis(5)));
        assert_eq!(h.quantile(1.0), None);
        assert_eq!(h.mean(), Some(Duration::from_micros(2_003_251 / 5)));
    }

    #[test]
    fn an_empty_histogram_has_no_quantile() {
        let h = LagHistogram::default();
        assert_eq!((h.count(), h.quantile(0.5), h.mean()), (0, None, None));
        assert_eq!(h.buckets().count(), BOUNDS_US.len() + 1);
    }
}
