//! rustls warns once per ClientHello that names an IP address (or an invalid host name) in SNI
//! ("Illegal SNI extension …", target `rustls::msgs::handshake`): anyone who can connect could
//! fill the log with it. Those warnings are dropped from the log (unless the log filter names
//! `rustls`) and counted instead; the count is logged at `info` at most once per
//! [`SUMMARY_INTERVAL`], by a thread started at the first one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tracing::level_filters::LevelFilter;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The rustls module whose warnings these are.
const TARGET: &str = "rustls::msgs::handshake";
/// How often, at most, the count is logged.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

static IGNORED: AtomicU64 = AtomicU64::new(0);
static SUMMARY_STARTED: AtomicBool = AtomicBool::new(false);

fn is_sni_warning(meta: &Metadata<'_>) -> bool {
    meta.target() == TARGET && *meta.level() == LevelFilter::WARN
}

/// The log filter directive that drops rustls's SNI warnings, unless `filter` (the user's
/// `--log`) says something about rustls itself.
pub(super) fn directive(filter: &str) -> Option<&'static str> {
    (!filter.contains("rustls")).then_some("rustls::msgs::handshake=error")
}

/// The layer that counts rustls's SNI warnings (it sees nothing else).
pub(super) fn counter<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // A `FilterFn` caches its verdict per callsite: other events never reach the counter.
    Counter.with_filter(filter_fn(is_sni_warning).with_max_level_hint(LevelFilter::WARN))
}

struct Counter;

impl<S: Subscriber> Layer<S> for Counter {
    fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
        IGNORED.fetch_add(1, Ordering::Relaxed);
        if !SUMMARY_STARTED.swap(true, Ordering::Relaxed) {
            // A plain thread: the summary must not depend on which runtime (if any) is running.
            let _ = std::thread::Builder::new()
                .name("sni-log".into())
                .spawn(summarize);
        }
    }
}

fn summarize() {
    loop {
        std::thread::sleep(SUMMARY_INTERVAL);
        let count = IGNORED.swap(0, Ordering::Relaxed);
        if count > 0 {
            tracing::info!(
                count,
                interval = ?SUMMARY_INTERVAL,
                "ignored an IP address or invalid name in TLS SNI (rustls's per-connection \
                 \"Illegal SNI\" warning; `--log info,rustls=warn` shows each)"
            );
        }
    }
}
