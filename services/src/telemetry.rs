//! Structured logging with `tracing`: text for people, JSON for log shippers, filtered by an
//! `EnvFilter` directive. Every line logged during a call is inside that call's span, which
//! carries its request id (see `request_id`).

use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call twice (tests): the second call changes nothing.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Counts events too frequent to log one by one (shed calls, unaudited anonymous calls) and
/// says, at most once a second, how many there were since it last said so.
#[derive(Debug, Default)]
pub struct CountedWarning {
    count: AtomicU64,
    warned_at_sec: AtomicU64,
}

impl CountedWarning {
    pub const fn new() -> Self {
        CountedWarning {
            count: AtomicU64::new(0),
            warned_at_sec: AtomicU64::new(0),
        }
    }

    /// Counts one event; `Some(n)` when it is time to warn about the `n` counted so far.
    pub fn add(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.warned_at_sec.load(Ordering::Relaxed);
        (now > last
            && self
                .warned_at_sec
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok())
        .then(|| self.count.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_warning_speaks_once_a_second_with_the_count() {
        let warning = CountedWarning::new();
        assert_eq!(warning.add(), Some(1), "the first event warns");
        assert_eq!(warning.add(), None);
        assert_eq!(warning.add(), None);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(
            warning.add(),
            Some(3),
            "the next second's warning counts the two unsaid"
        );
    }
}
