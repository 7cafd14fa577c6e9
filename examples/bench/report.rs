//! Collected figures, the comparison table with the targets, and
//! the machine-readable lines `rrpc METRIC VALUE UNIT` / `raw METRIC VALUE UNIT`.

use std::time::Duration;

/// Which side a figure measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Rrpc,
    Raw,
}

impl Side {
    fn word(self) -> &'static str {
        match self {
            Side::Rrpc => "rrpc",
            Side::Raw => "raw",
        }
    }
}

#[derive(Debug)]
struct Entry {
    side: Side,
    metric: String,
    value: f64,
    unit: &'static str,
}

/// Every figure of a run, in the order measured.
#[derive(Debug, Default)]
pub struct Results {
    entries: Vec<Entry>,
    /// Figures that could not be measured, and why.
    skipped: Vec<(String, String)>,
}

/// The p-th percentile (0..=100) of `samples`, in microseconds.
pub fn percentile_us(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)].as_secs_f64() * 1e6
}

impl Results {
    pub fn add(&mut self, side: Side, metric: impl Into<String>, value: f64, unit: &'static str) {
        let entry = Entry {
            side,
            metric: metric.into(),
            value,
            unit,
        };
        eprintln!(
            "  {} {} = {} {}",
            entry.side.word(),
            entry.metric,
            number(value, unit),
            unit
        );
        self.entries.push(entry);
    }

    pub fn rrpc(&mut self, metric: impl Into<String>, value: f64, unit: &'static str) {
        self.add(Side::Rrpc, metric, value, unit);
    }

    pub fn raw(&mut self, metric: impl Into<String>, value: f64, unit: &'static str) {
        self.add(Side::Raw, metric, value, unit);
    }

    pub fn skip(&mut self, what: &str, why: impl Into<String>) {
        let why = why.into();
        eprintln!("  {what}: skipped ({why})");
        self.skipped.push((what.to_owned(), why));
    }

    fn get(&self, side: Side, metric: &str) -> Option<f64> {
        self.entries
            .iter()
            .find(|e| e.side == side && e.metric == metric)
            .map(|e| e.value)
    }

    fn unit(&self, side: Side, metric: &str) -> &'static str {
        self.entries
            .iter()
            .find(|e| e.side == side && e.metric == metric)
            .map_or("", |e| e.unit)
    }

    /// The comparison table: each rrpc figure, its baseline, the ratio and
    /// the target (informational).
    pub fn print_table(&self) {
        println!(
            "{:<22} {:>14} {:>26} {:>8}  {:<24} mark",
            "figure", "rrpc", "baseline", "ratio", "target"
        );
        println!("{}", "-".repeat(106));
        for row in ROWS {
            let Some(value) = self.get(Side::Rrpc, row.metric) else {
                continue;
            };
            let unit = self.unit(Side::Rrpc, row.metric);
            let base = row
                .base
                .and_then(|(side, metric)| Some((side, metric, self.get(side, metric)?)));
            let ratio = base.map(|(_, _, b)| value / b);
            let base_text = match base {
                Some((side, metric, b)) => format!(
                    "{} {} {}",
                    side.word(),
                    metric,
                    human(b, self.unit(side, metric))
                ),
                None => "-".to_owned(),
            };
            let ratio_text = ratio.map_or("-".to_owned(), |r| format!("{r:.2}x"));
            let (target_text, mark) = match row.target {
                Some(t) => (
                    t.describe(unit),
                    t.check(value, ratio).map_or("", pass_miss),
                ),
                None => (String::new(), ""),
            };
            println!(
                "{:<22} {:>14} {:>26} {:>8}  {:<24} {}",
                row.label,
                human(value, unit),
                base_text,
                ratio_text,
                target_text,
                mark
            );
        }
        for (what, why) in &self.skipped {
            println!("{what:<22} skipped: {why}");
        }
        println!("(targets are the issue's, for information: the program exits 0 either way)");
    }

    /// One line per figure: `rrpc METRIC VALUE UNIT`, then `raw METRIC VALUE UNIT`.
    pub fn print_lines(&self) {
        for side in [Side::Rrpc, Side::Raw] {
            for e in self.entries.iter().filter(|e| e.side == side) {
                println!(
                    "{} {} {} {}",
                    side.word(),
                    e.metric,
                    number(e.value, e.unit),
                    e.unit
                );
            }
        }
    }
}

fn pass_miss(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// A value for the machine-readable lines.
fn number(value: f64, unit: &str) -> String {
    match unit {
        "calls/s" | "msgs/s" | "B/proxy" | "B/object" | "B/conn" => format!("{value:.0}"),
        _ => format!("{value:.1}"),
    }
}

/// A value for the table, with its unit (rates in k/M).
fn human(value: f64, unit: &str) -> String {
    match unit {
        "calls/s" | "msgs/s" if value >= 1e6 => format!("{:.2}M {unit}", value / 1e6),
        "calls/s" | "msgs/s" if value >= 1e3 => format!("{:.1}k {unit}", value / 1e3),
        _ => format!("{} {unit}", number(value, unit)),
    }
}

/// What the issue asks of a figure.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The ratio to the baseline is at most this.
    RatioAtMost(f64),
    /// The ratio to the baseline is at least this.
    RatioAtLeast(f64),
    /// The figure itself is at most this (in its unit).
    AtMost(f64),
    /// The figure itself is at least this (in its unit).
    AtLeast(f64),
}

impl Target {
    fn describe(self, unit: &str) -> String {
        match self {
            Target::RatioAtMost(r) => format!("<= {r}x baseline"),
            Target::RatioAtLeast(r) if r < 1.0 => format!(">= {:.0}% of baseline", r * 100.0),
            Target::RatioAtLeast(r) => format!(">= {r}x baseline"),
            Target::AtMost(v) => format!("<= {}", human(v, unit)),
            Target::AtLeast(v) => format!(">= {}", human(v, unit)),
        }
    }

    fn check(self, value: f64, ratio: Option<f64>) -> Option<bool> {
        Some(match self {
            Target::RatioAtMost(r) => ratio? <= r,
            Target::RatioAtLeast(r) => ratio? >= r,
            Target::AtMost(v) => value <= v,
            Target::AtLeast(v) => value >= v,
        })
    }
}

/// One row of the table.
struct Row {
    label: &'static str,
    metric: &'static str,
    base: Option<(Side, &'static str)>,
    target: Option<Target>,
}

const fn row(
    label: &'static str,
    metric: &'static str,
    base: Option<(Side, &'static str)>,
    target: Option<Target>,
) -> Row {
    Row {
        label,
        metric,
        base,
        target,
    }
}

const RAW_PINGPONG: Option<(Side, &str)> = Some((Side::Raw, "pingpong_p50"));
const RAW_PIPELINED: Option<(Side, &str)> = Some((Side::Raw, "pipelined"));
const RAW_BULK: Option<(Side, &str)> = Some((Side::Raw, "bulk"));
const NULL_P50: Option<(Side, &str)> = Some((Side::Rrpc, "null_call_p50"));
const RAW_PINGPONG_P25: Option<(Side, &str)> = Some((Side::Raw, "pingpong_p25"));
const NULL_P25: Option<(Side, &str)> = Some((Side::Rrpc, "null_call_p25"));

const ROWS: &[Row] = &[
    row(
        "null_call p50",
        "null_call_p50",
        RAW_PINGPONG,
        Some(Target::RatioAtMost(1.5)),
    ),
    // The lower quartiles: what a host that sometimes stalls the vCPU
    // does not reach (see BENCHMARKS.md, "The machine").
    row("null_call p25", "null_call_p25", RAW_PINGPONG_P25, None),
    row(
        "null_call p99",
        "null_call_p99",
        NULL_P50,
        Some(Target::RatioAtMost(3.0)),
    ),
    row("pipelined @16", "pipelined_16", RAW_PIPELINED, None),
    row(
        "pipelined @128",
        "pipelined_128",
        RAW_PIPELINED,
        Some(Target::AtLeast(500_000.0)),
    ),
    row(
        "pipelined @1024",
        "pipelined_1024",
        RAW_PIPELINED,
        Some(Target::RatioAtLeast(0.10)),
    ),
    row("  CPU/call client", "pipelined_1024_cpu_client", None, None),
    row("  CPU/call server", "pipelined_1024_cpu_server", None, None),
    row(
        "pipelined @1024 futures",
        "pipelined_1024_futures",
        RAW_PIPELINED,
        None,
    ),
    row(
        "  CPU/call client",
        "pipelined_1024_futures_cpu_client",
        None,
        None,
    ),
    row(
        "  CPU/call server",
        "pipelined_1024_futures_cpu_server",
        None,
        None,
    ),
    row(
        "callback p50",
        "callback_p50",
        NULL_P50,
        Some(Target::RatioAtMost(2.0)),
    ),
    row("callback p25", "callback_p25", NULL_P25, None),
    row(
        "  callback - 2 null_call",
        "callback_excess_p50",
        None,
        None,
    ),
    row("async_callback p50", "async_callback_p50", NULL_P50, None),
    row(
        "pool overhead / job",
        "pool_overhead",
        None,
        Some(Target::AtMost(50.0)),
    ),
    row(
        "bulk_down",
        "bulk_down",
        RAW_BULK,
        Some(Target::RatioAtLeast(0.8)),
    ),
    row(
        "bulk_up",
        "bulk_up",
        RAW_BULK,
        Some(Target::RatioAtLeast(0.8)),
    ),
    row(
        "bulk RSS before client",
        "bulk_rss_before_client",
        None,
        None,
    ),
    row(
        "bulk RSS before server",
        "bulk_rss_before_server",
        None,
        None,
    ),
    row(
        "bulk_down peak client",
        "bulk_down_peak_rss_client",
        None,
        None,
    ),
    row(
        "bulk_down peak server",
        "bulk_down_peak_rss_server",
        None,
        None,
    ),
    row("bulk_up peak client", "bulk_up_peak_rss_client", None, None),
    row("bulk_up peak server", "bulk_up_peak_rss_server", None, None),
    row(
        "connect p50",
        "connect_p50",
        Some((Side::Raw, "connect_p50")),
        None,
    ),
    row(
        "many_clients",
        "many_clients",
        Some((Side::Raw, "many_clients")),
        None,
    ),
    row(
        "proxy_mem client",
        "proxy_mem_client",
        None,
        Some(Target::AtMost(200.0)),
    ),
    row(
        "proxy_mem server",
        "proxy_mem_server",
        None,
        Some(Target::AtMost(300.0)),
    ),
    row(
        "conn_mem server",
        "conn_mem",
        None,
        Some(Target::AtMost(65_536.0)),
    ),
    row("conn_mem client", "conn_mem_client", None, None),
];
