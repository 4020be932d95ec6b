//! Per-principal rate limits: one token bucket per authenticated principal, refilled at a steady
//! rate up to a burst, checked by the gate right after authentication (before the request body
//! is decoded or anything is read from the database). A caller over its rate gets
//! RESOURCE_EXHAUSTED with the wait until its next call is allowed; other principals are not
//! slowed by it. This complements the global concurrency limit (load shedding), which protects the
//! server; the buckets protect the other callers from one noisy one. The gate also keys a
//! limiter by peer address: the audit budget of calls without valid credentials.
//!
//! Memory stays bounded: at most [`MAX_TRACKED`] buckets are kept; when a new principal would
//! exceed that, buckets that have refilled completely (idle principals) are dropped first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Principals tracked at once.
pub const MAX_TRACKED: usize = 100_000;

/// The limit: calls per second and the burst a quiet principal may spend at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one call from `principal`'s bucket, or says how long until one is available.
    pub fn check(&self, principal: &str) -> Result<(), Duration> {
        self.check_at(principal, Instant::now())
    }

    fn check_at(&self, principal: &str, now: Instant) -> Result<(), Duration> {
        let RateLimit { per_second, burst } = self.limit;
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(principal) {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * per_second
                    < burst
            });
            if buckets.len() >= MAX_TRACKED {
                // Every tracked principal is busy: the newcomer waits like an empty bucket.
                return Err(Duration::from_secs_f64(1.0 / per_second));
            }
        }
        let bucket = buckets.entry(principal.to_owned()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate_per_principal() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 10.0,
            burst: 5.0,
        });
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check_at("user:a", t0).is_ok());
        }
        let wait = limiter
            .check_at("user:a", t0)
            .expect_err("the burst is spent");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // Another principal is not affected.
        assert!(limiter.check_at("user:b", t0).is_ok());
        // 100 ms later one call is allowed again, and only one.
        let later = t0 + Duration::from_millis(100);
        assert!(limiter.check_at("user:a", later).is_ok());
        assert!(limiter.check_at("user:a", later).is_err());
        // After a second the bucket is full again (never more than the burst).
        let much_later = t0 + Duration::from_secs(10);
        for _ in 0..5 {
            assert!(limiter.check_at("user:a", much_later).is_ok());
        }
        assert!(limiter.check_at("user:a", much_later).is_err());
    }
}
