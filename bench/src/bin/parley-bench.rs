//! `parley-bench`: drives a running broker with simulated users and reports
//! throughput, latency and broker memory. See `parley_bench`.
//!
//! ```text
//! parley-bench dm --pairs 100 --rate 23000 --duration 30 --broker 127.0.0.1:1883 \
//!     --users-prefix bench --password pw --broker-pid $(pidof parley) \
//!     --json dm.json --markdown dm.md
//! ```

use clap::Parser;
use parley_bench::BenchArgs;

/// The same allocator as the broker's: the load generator shares the
/// machine with the broker under test, so its own CPU cost matters.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = BenchArgs::parse();
    let report = parley_bench::run(args).await?;
    print!("{}", report.to_markdown());
    Ok(())
}
