//! The server's counters, written out in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the search latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Request counts, search latencies and rejections.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    search_buckets: [AtomicU64; BUCKETS.len()],
    search_count: AtomicU64,
    search_micros: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    /// Records one search's wall time.
    pub fn search(&self, seconds: f64) {
        for (b, le) in self.search_buckets.iter().zip(BUCKETS) {
            if seconds <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.search_count.fetch_add(1, Ordering::Relaxed);
        self.search_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Counts a search turned away because the server was saturated.
    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a search that ran past the request timeout.
    pub fn timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered with `status` so far, all routes.
    pub fn count_status(&self, status: u16) -> u64 {
        self.requests
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|((_, s), _)| *s == status)
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The Prometheus text exposition; `admitted` and `images` are gauges read by the caller.
    pub fn render(&self, admitted: usize, capacity: usize, images: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP squire_http_requests_total HTTP requests answered, by route and status."
        );
        let _ = writeln!(out, "# TYPE squire_http_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "squire_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(out, "# HELP squire_search_duration_seconds Wall time of searches (model work and every stage).");
        let _ = writeln!(out, "# TYPE squire_search_duration_seconds histogram");
        for (b, le) in self.search_buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "squire_search_duration_seconds_bucket{{le=\"{le}\"}} {}",
                b.load(Ordering::Relaxed)
            );
        }
        let count = self.search_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "squire_search_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "squire_search_duration_seconds_sum {}",
            self.search_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "squire_search_duration_seconds_count {count}");
        let _ = writeln!(out, "# HELP squire_search_rejected_total Searches answered 503 because every worker and waiting place was taken.");
        let _ = writeln!(out, "# TYPE squire_search_rejected_total counter");
        let _ = writeln!(
            out,
            "squire_search_rejected_total {}",
            self.rejected.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP squire_search_timeouts_total Searches answered 504 after the request timeout."
        );
        let _ = writeln!(out, "# TYPE squire_search_timeouts_total counter");
        let _ = writeln!(
            out,
            "squire_search_timeouts_total {}",
            self.timed_out.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP squire_search_admitted Searches running or waiting now."
        );
        let _ = writeln!(out, "# TYPE squire_search_admitted gauge");
        let _ = writeln!(out, "squire_search_admitted {admitted}");
        let _ = writeln!(
            out,
            "# HELP squire_search_capacity Most searches admitted at once (workers + queue)."
        );
        let _ = writeln!(out, "# TYPE squire_search_capacity gauge");
        let _ = writeln!(out, "squire_search_capacity {capacity}");
        let _ = writeln!(
            out,
            "# HELP squire_collection_images Images in the served collection."
        );
        let _ = writeln!(out, "# TYPE squire_collection_images gauge");
        let _ = writeln!(out, "squire_collection_images {images}");
        if let Some(rss) = resident_bytes() {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory of the server process."
            );
            let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }
        out
    }
}

impl Metrics {
    /// The process's resident memory now (Linux: /proc/self/statm), bytes.
    pub fn resident_bytes() -> Option<u64> {
        resident_bytes()
    }
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_text_is_well_formed() {
        let m = Metrics::default();
        m.search(0.004);
        m.search(0.02);
        m.search(100.0);
        m.request("/api/search", 200);
        m.request("/api/search", 200);
        m.request("/api/search", 503);
        let text = m.render(1, 66, 12);
        assert!(
            text.contains("squire_search_duration_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("squire_search_duration_seconds_bucket{le=\"0.025\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("squire_search_duration_seconds_bucket{le=\"30\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("squire_search_duration_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("squire_http_requests_total{route=\"/api/search\",status=\"200\"} 2"),
            "{text}"
        );
        assert_eq!(m.count_status(503), 1);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "not a sample line: {line}");
        }
    }
}
