//! Capped exponential backoff, the one schedule every retry here follows: `first`,
//! `2 × first`, `4 × first`, … up to `cap`, without jitter (each loop retries one thing).

use std::time::Duration;

use backon::BackoffBuilder;

/// The delays before each retry, for ever.
pub fn delays(first: Duration, cap: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(cap)
        .without_max_times()
        .build()
}

/// The delay after `failures` failures in a row (the first failure is 1).
pub fn delay_after(first: Duration, cap: Duration, failures: u32) -> Duration {
    // Past 32 doublings every delay is the cap.
    let index = failures.saturating_sub(1).min(32) as usize;
    delays(first, cap).nth(index).unwrap_or(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_up_to_the_cap() {
        // backon multiplies in f32: equal to the millisecond.
        let ms = Duration::from_millis;
        let millis = |d: Duration| d.as_millis();
        let taken: Vec<u128> = delays(ms(100), ms(1000)).take(6).map(millis).collect();
        assert_eq!(taken, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(millis(delay_after(ms(100), ms(1000), 0)), 100);
        assert_eq!(millis(delay_after(ms(100), ms(1000), 1)), 100);
        assert_eq!(millis(delay_after(ms(100), ms(1000), 3)), 400);
        assert_eq!(delay_after(ms(100), ms(1000), u32::MAX), ms(1000));
    }
}
