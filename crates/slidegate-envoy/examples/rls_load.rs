//! A load client for the rate-limit service: `ShouldRateLimit` calls from many concurrent streams for a while, then one `RESULT` line (used by `tests/load/rls_bench.sh`).
//!
//! ```text
//! cargo run --release -p slidegate-envoy --example rls_load -- \
//!     <host:port> <streams> <seconds> <descriptors> <key space> [connections]
//! ```
//!
//! Each call carries `descriptors` descriptors (keys `d0`, `d1`, …), each
//! with one entry whose value is a random `user-<n>`, `n` in `[0, key space)`,
//! in the domain `bench`. Every stream sends its next call as soon as the
//! last one is answered (a closed loop, as wrk does for `/v1/check`), over
//! `connections` HTTP/2 connections (default 4) shared by the streams.
//!
//! The client runs on one thread so that it takes as little of the machine
//! from the replica as wrk's single thread does. It prints
//! `RESULT calls=… ok=… over=… errors=… duration_us=… p50_us=… p99_us=… max_us=…`.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::Channel;

#[derive(Default)]
struct Counts {
    ok: u64,
    over: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: rls_load <host:port> <streams> <seconds> <descriptors> <key space> [connections]";
    let number = |index: usize, default: Option<u64>| -> u64 {
        match args.get(index) {
            Some(text) => text.parse().unwrap_or_else(|_| {
                eprintln!("{usage}: {text:?} is not a whole number");
                std::process::exit(2)
            }),
            None => default.unwrap_or_else(|| {
                eprintln!("{usage}");
                std::process::exit(2)
            }),
        }
    };
    let Some(address) = args.first().cloned() else {
        eprintln!("{usage}");
        std::process::exit(2)
    };
    let streams = number(1, None).max(1);
    let seconds = number(2, None).max(1);
    let descriptors = number(3, None).clamp(1, 64);
    let key_space = number(4, None).max(1);
    let connections = number(5, Some(4)).max(1);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let mut channels = Vec::new();
        for _ in 0..connections {
            let channel = Channel::from_shared(format!("http://{address}"))
                .expect("a valid address")
                .connect()
                .await
                .unwrap_or_else(|error| {
                    eprintln!("cannot connect to {address}: {error}");
                    std::process::exit(1)
                });
            channels.push(channel);
        }
        let started = Instant::now();
        let until = started + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for stream in 0..streams {
            let mut client =
                RateLimitServiceClient::new(channels[(stream % connections) as usize].clone());
            tasks.push(tokio::spawn(async move {
                // xorshift64*, seeded per stream: no two streams replay one sequence.
                let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ (stream + 1).wrapping_mul(0x2545_F491);
                let mut next = move || {
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
                };
                let mut counts = Counts::default();
                while Instant::now() < until {
                    let request = RateLimitRequest {
                        domain: "bench".to_owned(),
                        descriptors: (0..descriptors)
                            .map(|index| RateLimitDescriptor {
                                entries: vec![Entry {
                                    key: format!("d{index}"),
                                    value: format!("user-{}", next() % key_space),
                                }],
                                ..Default::default()
                            })
                            .collect(),
                        hits_addend: 1,
                    };
                    let sent = Instant::now();
                    let answer = client.should_rate_limit(request).await;
                    let took = sent.elapsed();
                    counts
                        .latencies_us
                        .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                    match answer.map(|reply| reply.into_inner().overall_code) {
                        Ok(code) if code == Code::Ok as i32 => counts.ok += 1,
                        Ok(code) if code == Code::OverLimit as i32 => counts.over += 1,
                        _ => counts.errors += 1,
                    }
                }
                counts
            }));
        }
        let mut total = Counts::default();
        for task in tasks {
            let counts = task.await.expect("a load stream panicked");
            total.ok += counts.ok;
            total.over += counts.over;
            total.errors += counts.errors;
            total.latencies_us.extend(counts.latencies_us);
        }
        let elapsed = started.elapsed();
        total.latencies_us.sort_unstable();
        let percentile = |share: f64| -> u32 {
            let latencies = &total.latencies_us;
            if latencies.is_empty() {
                return 0;
            }
            let index =
                ((latencies.len() as f64 * share).ceil() as usize).clamp(1, latencies.len());
            latencies[index - 1]
        };
        println!(
            "RESULT calls={} ok={} over={} errors={} duration_us={} p50_us={} p99_us={} max_us={}",
            total.latencies_us.len(),
            total.ok,
            total.over,
            total.errors,
            elapsed.as_micros(),
            percentile(0.50),
            percentile(0.99),
            total.latencies_us.last().copied().unwrap_or(0),
        );
    });
}
