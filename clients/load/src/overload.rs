//! The overload phase. The closed-loop scenarios measure what the server serves; this one offers
//! `factor` times that rate open-loop — calls start on a fixed schedule whether or not earlier
//! ones have answered, as many independent clients would — and records how the server answers:
//! the latency of admitted calls, how many are refused with RESOURCE_EXHAUSTED and how fast, any
//! other error, and the server's memory. Then the load stops and the scenario runs closed-loop
//! for a second, to show how soon service is normal again.
//!
//! The generator runs on the same machine as the server, so at high rates it competes with it
//! for the CPU; calls it could not start on schedule (more than [`MAX_IN_FLIGHT`] unanswered) are
//! counted, not hidden.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::Channel;

use crate::scenario::{self, Clients, Lcg, Load, Measured, Scenario, latency_histogram};
use crate::seed::Fixture;

/// Unanswered calls the generator allows itself before it counts further ones as not sent.
const MAX_IN_FLIGHT: usize = 50_000;

/// What the overload phase measured.
#[derive(Debug, serde::Serialize)]
pub struct Overloaded {
    pub scenario: Scenario,
    /// The closed-loop throughput the offered rate is a multiple of.
    pub capacity_per_second: f64,
    pub factor: f64,
    pub offered_per_second: f64,
    pub seconds: f64,
    /// Calls answered OK, and their latency in milliseconds.
    pub admitted: u64,
    pub admitted_p50_ms: f64,
    pub admitted_p99_ms: f64,
    pub admitted_max_ms: f64,
    /// Calls refused with RESOURCE_EXHAUSTED, and how long the refusal took.
    pub refused: u64,
    pub refused_p50_ms: f64,
    pub refused_p99_ms: f64,
    /// Other failures by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    /// Calls the generator could not start on schedule.
    pub not_sent: u64,
    /// The server's resident memory before the phase and its peak during it.
    pub rss_before_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    /// From the end of the load to the first call answered OK.
    pub first_ok_after_ms: Option<f64>,
    /// The scenario closed-loop for one second right after the load.
    pub recovery: Measured,
}

struct Tally {
    admitted: Histogram<u64>,
    refused: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Offers `factor × capacity` calls per second of `scenario` for `load.duration`.
pub async fn run(
    scenario: Scenario,
    capacity_per_second: f64,
    factor: f64,
    channels: &[Channel],
    fixture: &Arc<Fixture>,
    load: Load,
    server_pid: Option<u32>,
) -> Overloaded {
    let offered_per_second = (capacity_per_second * factor).max(1.0);
    let rss_before_bytes = server_pid.and_then(crate::server::memory).map(|m| m.rss);
    let tally = Arc::new(Mutex::new(Tally {
        admitted: latency_histogram(),
        refused: latency_histogram(),
        errors: BTreeMap::new(),
    }));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let peak = Arc::new(Mutex::new(0u64));
    let sampler = server_pid.map(|pid| {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(memory) = crate::server::memory(pid) {
                    let mut peak = peak.lock().expect("peak");
                    *peak = (*peak).max(memory.rss);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    });

    // Calls are started in 1 ms batches (the timer's resolution), carrying the fraction over.
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut sent, mut not_sent, mut n) = (0u64, 0u64, 0usize);
    while started.elapsed() < load.duration {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * offered_per_second) as u64;
        while sent + not_sent < due {
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                not_sent += 1;
                continue;
            };
            sent += 1;
            n += 1;
            let mut clients = Clients::new(channels[n % channels.len()].clone());
            let fixture = fixture.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut rng = Lcg(n as u64 * 7_919 + 17);
                let began = Instant::now();
                let outcome = scenario::call(scenario, &mut clients, &fixture, &mut rng).await;
                let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                let mut tally = tally.lock().expect("tally");
                match outcome {
                    Ok(()) => tally.admitted.saturating_record(micros),
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                        tally.refused.saturating_record(micros)
                    }
                    Err(status) => {
                        let count = tally
                            .errors
                            .entry(format!("{:?}", status.code()))
                            .or_default();
                        if *count == 0 {
                            eprintln!(
                                "  overload: first {:?}: {}",
                                status.code(),
                                status.message()
                            );
                        }
                        *count += 1;
                    }
                }
                drop(permit);
            });
        }
    }
    let seconds = started.elapsed().as_secs_f64();

    // The load stops: how soon is a call served, and how does the next second look?
    let stopped = Instant::now();
    let mut probe = Clients::new(channels[0].clone());
    let mut rng = Lcg(1);
    let mut first_ok_after_ms = None;
    while stopped.elapsed() < Duration::from_secs(30) {
        if scenario::call(scenario, &mut probe, fixture, &mut rng)
            .await
            .is_ok()
        {
            first_ok_after_ms = Some(stopped.elapsed().as_secs_f64() * 1000.0);
            break;
        }
    }
    let recovery_load = Load {
        callers: load.callers,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(1),
    };
    let recovery = scenario::drive(scenario, channels, fixture, recovery_load, server_pid).await;
    // Calls still unanswered finish before the figures are read.
    let _ = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let tally = tally.lock().expect("tally");
    Overloaded {
        scenario,
        capacity_per_second,
        factor,
        offered_per_second,
        seconds,
        admitted: tally.admitted.len(),
        admitted_p50_ms: ms(&tally.admitted, 0.5),
        admitted_p99_ms: ms(&tally.admitted, 0.99),
        admitted_max_ms: tally.admitted.max() as f64 / 1000.0,
        refused: tally.refused.len(),
        refused_p50_ms: ms(&tally.refused, 0.5),
        refused_p99_ms: ms(&tally.refused, 0.99),
        errors: tally.errors.clone(),
        not_sent,
        rss_before_bytes,
        peak_rss_bytes: server_pid.map(|_| *peak.lock().expect("peak")),
        first_ok_after_ms,
        recovery,
    }
}
