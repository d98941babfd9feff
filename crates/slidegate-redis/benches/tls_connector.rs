//! Cost of building the TLS connector for `rediss://`: why `store/redis.rs` builds one at start-up and shares it.
//!
//! What is measured: `RedisTls::new(None, None)`, i.e. a native-tls connector
//! trusting the system's roots, as every `rediss://` URL without
//! `redis.tls_ca_file` gets. OpenSSL reads and parses the whole system trust
//! store for it. redis-rs builds one such connector per connection, which is
//! what this store avoids: compare the time with `redis.connect_timeout`
//! (100 ms by default), within which a connection must be opened.
//!
//! `cargo bench --bench tls_connector`

use criterion::{Criterion, criterion_group, criterion_main};

use slidegate_redis::RedisTls;

fn connector(c: &mut Criterion) {
    let mut group = c.benchmark_group("tls_connector");
    // Each build takes long enough that ten samples say what matters.
    group.sample_size(10);
    group.bench_function("system_roots", |b| {
        b.iter(|| RedisTls::new(None, None).expect("the system's roots load"));
    });
    group.finish();
}

criterion_group!(benches, connector);
criterion_main!(benches);
