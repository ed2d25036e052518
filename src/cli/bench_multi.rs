//! Sweeps (`--concurrency 1,4,16`, `--rate 1000,5000`), repeated runs (`--runs N`) and
//! comparisons (`--compare KEY=A,B`): many measurements in one run, one table.
//!
//! Order: point after point (concurrency major, then rate); within a point, run after run;
//! within a run, with `--compare`, the sides take turns in slices of `--slice`, in the order
//! A B, then B A, then A B… (ABBA: a drift that grows steadily over the run costs both sides
//! alike). Each slice of a side after its first gets a short warm-up of its own (a tenth of the
//! slice, at most `--warmup`): the other side has just had the servers.
//!
//! Each point is printed when it is done (a table row per side, or a JSON line per side and
//! per ratio), so a run that loses its servers has already shown what it measured; it then
//! prints the point it was in, marked incomplete, and exits 69.

use std::collections::BTreeMap;
use std::process::ExitCode;

use crate::cli::bench::{
    as_json, measure, saturation_warning, server_lines, setup_json, write_outputs, BenchArgs,
    Outcomes, Results, Runner, Spec, OPEN_LOOP_REACHED,
};
use crate::cli::bench_plot::{Series, SweepLine};
use crate::cli::bench_sides::{Compare, Side};
use crate::{fail, EXIT_UNAVAILABLE};

/// One point of a sweep.
#[derive(Clone, Copy)]
struct Point {
    concurrency: usize,
    rate: Option<u64>,
}

impl Point {
    fn label(&self) -> String {
        match self.rate {
            Some(r) => format!("c={} rate={r}", self.concurrency),
            None => format!("c={}", self.concurrency),
        }
    }
}

/// The figures compared across runs and sides, by name (the JSON keys of `runs`, `median`,
/// `spread` and the ratio lines).
type Metrics = BTreeMap<&'static str, f64>;

fn metrics(r: &Results, open_loop: bool) -> Metrics {
    let us = |h: &hdrhistogram::Histogram<u64>, q: f64| {
        (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0
    };
    let mut m = Metrics::new();
    m.insert("grants_per_sec", r.grants_per_sec().round());
    m.insert("attempts_per_sec", r.attempts_per_sec().round());
    m.insert("cycle_p50_us", us(&r.cycle, 0.5));
    m.insert("cycle_p99_us", us(&r.cycle, 0.99));
    m.insert("cycle_p999_us", us(&r.cycle, 0.999));
    if r.cycles > 0 {
        m.insert(
            "client_cpu_us_per_cycle",
            (r.cpu.as_secs_f64() * 1e6 / r.cycles as f64 * 100.0).round() / 100.0,
        );
    }
    if open_loop {
        m.insert("cycle_corrected_p99_us", us(&r.cycle_corrected, 0.99));
    }
    if let Some(s) = &r.server {
        if s.cycles > 0 {
            m.insert(
                "server_cpu_us_per_cycle",
                (s.cpu() * 1e6 / s.cycles as f64 * 100.0).round() / 100.0,
            );
        }
        m.insert(
            "server_cores_used",
            (s.cores_used() * 100.0).round() / 100.0,
        );
    }
    m
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The median of each figure over the runs that measured anything, and its spread:
/// (max − min) / median.
fn median_and_spread(runs: &[Metrics]) -> (Metrics, Metrics) {
    let (mut med, mut spread) = (Metrics::new(), Metrics::new());
    let keys: Vec<&'static str> = runs.iter().flat_map(|m| m.keys().copied()).collect();
    for k in keys {
        let v: Vec<f64> = runs.iter().filter_map(|m| m.get(k).copied()).collect();
        let m = median(v.clone());
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        med.insert(k, (m * 100.0).round() / 100.0);
        spread.insert(
            k,
            if m > 0.0 {
                ((hi - lo) / m * 1000.0).round() / 1000.0
            } else {
                0.0
            },
        );
    }
    (med, spread)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b * 1000.0).round() / 1000.0),
        _ => None,
    }
}

/// What one side measured at one point.
struct SideResult {
    merged: Results,
    runs: Vec<Results>,
}

pub async fn run(args: &BenchArgs, mut sides: Vec<Side>, compare: Option<Compare>) -> ExitCode {
    let mut points = Vec::new();
    for &c in &args.concurrency {
        if args.rate.is_empty() {
            points.push(Point {
                concurrency: c,
                rate: None,
            });
        }
        for &r in &args.rate {
            points.push(Point {
                concurrency: c,
                rate: Some(r),
            });
        }
    }
    let sliced = sides.len() > 1;
    let slices = if sliced {
        (args.duration.as_nanos().div_ceil(args.slice().as_nanos())) as u32
    } else {
        1
    };
    let runs = args.runs as usize;
    if !args.json {
        header(args, &sides, compare.as_ref(), points.len(), slices);
    }
    let total = points.len() * runs * slices as usize * sides.len();
    let mut done = 0;
    let mut all_series: Vec<Series> = Vec::new();
    let mut sweep: Vec<SweepLine> = sides
        .iter()
        .map(|s| SweepLine {
            label: if sliced {
                s.label().to_string()
            } else {
                "dragonlock".into()
            },
            points: Vec::new(),
            open_loop: false,
        })
        .collect();
    let mut lost: Option<String> = None;
    let mut footnotes = Vec::new();
    for point in &points {
        let mut results: Vec<SideResult> = sides
            .iter()
            .map(|_| SideResult {
                merged: Results::empty(),
                runs: (0..runs).map(|_| Results::empty()).collect(),
            })
            .collect();
        let mut series: Vec<Series> = sides
            .iter()
            .map(|s| Series {
                label: series_label(point, s, points.len(), sliced),
                plotted: crate::cli::bench::hist(),
                intervals: Vec::new(),
            })
            .collect();
        'runs: for run in 0..runs {
            for k in 0..slices {
                let mut order: Vec<usize> = (0..sides.len()).collect();
                if (k as usize + run) % 2 == 1 {
                    order.reverse();
                }
                for si in order {
                    let side = &mut sides[si];
                    let length = if sliced {
                        args.slice()
                            .min(args.duration.saturating_sub(args.slice() * k))
                    } else {
                        args.duration
                    };
                    let warmup = if k == 0 {
                        args.warmup
                    } else {
                        args.warmup.min(length / 10)
                    };
                    let spec = Spec {
                        concurrency: point.concurrency,
                        rate: point.rate,
                        warmup,
                        duration: length,
                        ops: if sliced { None } else { args.ops },
                        progress: false,
                    };
                    // Each side its own keys: a release one side queued for a minority node
                    // must not meet the other side's acquire of the same key.
                    let prefix = if sliced {
                        format!("bench:s{si}")
                    } else {
                        "bench".to_string()
                    };
                    // A baseline side's workers are new callers on the lanes of the last
                    // slice's; the baseline adds no key prefix of its own: it gets the one
                    // dragonlock's manager adds.
                    let mut base = side.baseline.as_mut();
                    let prefix = match base.as_mut() {
                        Some(b) => {
                            b.rewind();
                            format!("{}{prefix}", args.key_prefix)
                        }
                        None => prefix,
                    };
                    let redlock = side.redlock.clone();
                    let runner = |_| match base.as_mut() {
                        Some(b) => Runner::Baseline(b.client()),
                        None => Runner::Dragonlock(redlock.clone()),
                    };
                    let r = measure(args, &spec, runner, &prefix, Some(&side.redlock)).await;
                    let answering = side.answering().await;
                    done += 1;
                    if !args.json {
                        eprintln!(
                            "[{done}/{total}] {}{}{}: {:.0} grants/s, cycle p99 {:.1} us",
                            point.label(),
                            if sliced {
                                format!(" {}", side.label())
                            } else {
                                String::new()
                            },
                            if runs > 1 {
                                format!(" run {}", run + 1)
                            } else {
                                String::new()
                            },
                            r.grants_per_sec(),
                            r.cycle.value_at_quantile(0.99) as f64 / 1000.0
                        );
                    }
                    series[si].push(point.rate.is_some(), &r);
                    results[si].merged.merge(&r);
                    results[si].runs[run].merge(&r);
                    let quorum = side.redlock.quorum();
                    if answering < quorum {
                        lost = Some(format!(
                            "lost the servers at {}{}: only {answering} nodes answer, fewer than \
                             the quorum of {quorum}; stopping, with what was measured reported",
                            point.label(),
                            if sliced {
                                format!(" ({})", side.label())
                            } else {
                                String::new()
                            }
                        ));
                        break 'runs;
                    }
                }
            }
        }
        let complete = lost.is_none();
        emit(
            args,
            point,
            &sides,
            &results,
            complete,
            &mut footnotes,
            &mut sweep,
        );
        all_series.extend(series);
        if !complete {
            break;
        }
    }
    if !args.json && !footnotes.is_empty() {
        println!();
        for f in &footnotes {
            println!("{f}");
        }
    }
    let sweep_lines: Vec<SweepLine> = if points.len() > 1 { sweep } else { Vec::new() };
    let code = write_outputs(args, &all_series, &sweep_lines);
    drop(sides);
    if let Some(why) = lost {
        return fail(EXIT_UNAVAILABLE, why);
    }
    code
}

fn series_label(point: &Point, side: &Side, points: usize, sliced: bool) -> String {
    match (points > 1, sliced) {
        (true, true) => format!("{} {}", point.label(), side.label()),
        (true, false) => point.label(),
        (false, true) => side.label().to_string(),
        (false, false) => "dragonlock".to_string(),
    }
}

/// Which optional columns the table has: the side with `--compare`, the spread with
/// `--runs`, the corrected p99 with `--rate`.
#[derive(Clone, Copy)]
struct Layout {
    sides: bool,
    spread: bool,
    open_loop: bool,
}

impl Layout {
    fn columns(self) -> impl Iterator<Item = (&'static str, &'static str)> {
        COLUMNS
            .into_iter()
            .filter(move |(_, k)| self.open_loop || *k != "cycle_corrected_p99_us")
    }

    /// The cells before the figures: point, side, spread.
    fn lead(self, point: &str, side: &str, spread: &str) -> String {
        let mut s = format!("{point:<22}");
        if self.sides {
            s += &format!(" {side:<14}");
        }
        if self.spread {
            s += &format!(" {spread:>6}");
        }
        s
    }
}

const COLUMNS: [(&str, &str); 9] = [
    ("grants/s", "grants_per_sec"),
    ("attempts/s", "attempts_per_sec"),
    ("p50 us", "cycle_p50_us"),
    ("p99 us", "cycle_p99_us"),
    ("p99.9 us", "cycle_p999_us"),
    ("p99 int. us", "cycle_corrected_p99_us"),
    ("cpu us/op", "client_cpu_us_per_cycle"),
    ("srv us/op", "server_cpu_us_per_cycle"),
    ("srv cores", "server_cores_used"),
];

fn header(args: &BenchArgs, sides: &[Side], compare: Option<&Compare>, points: usize, slices: u32) {
    let first = &sides[0];
    println!(
        "setup: {} nodes ({} stopped), {}, RESP{}, workload {}, ttl {} ms, {} cores",
        first.addrs.len(),
        args.nodes_down,
        first.server,
        first.protocol,
        format!("{:?}", args.workload).to_lowercase(),
        args.ttl.as_millis(),
        crate::cli::bench::cores(),
    );
    let plan = match compare {
        Some(c) => format!(
            "{points} point(s) x {} run(s) x {} sides ({}), {} measured per side and run, in \
             {slices} slice(s) of {} taken in turn (A B, B A, ...)",
            args.runs,
            sides.len(),
            c.key.name(),
            humantime::format_duration(args.duration),
            humantime::format_duration(args.slice()),
        ),
        None => format!(
            "{points} point(s) x {} run(s), {} measured each after a {} warm-up",
            args.runs,
            humantime::format_duration(args.duration),
            humantime::format_duration(args.warmup),
        ),
    };
    println!("plan: {plan}");
    for s in sides {
        let paths: Vec<&str> = s.release_paths.to_vec();
        let name = if sides.len() > 1 {
            format!("side {}: ", s.label())
        } else {
            String::new()
        };
        println!(
            "{name}servers: {}; release via {} (waits for {})",
            s.servers_line(),
            summarize(&paths),
            format!("{:?}", s.spec.release_wait).to_lowercase(),
        );
    }
    println!();
    let layout = layout(args, sides);
    print!("{}", layout.lead("point", "side", "±%"));
    for (title, _) in layout.columns() {
        print!(" {title:>11}");
    }
    println!();
}

fn layout(args: &BenchArgs, sides: &[Side]) -> Layout {
    Layout {
        sides: sides.len() > 1,
        spread: args.runs > 1,
        open_loop: !args.rate.is_empty(),
    }
}

/// `EVALSHA x5` or `DELEX x3, EVALSHA x2`.
fn summarize(paths: &[&str]) -> String {
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for p in paths {
        match groups.iter_mut().find(|(g, _)| g == p) {
            Some(g) => g.1 += 1,
            None => groups.push((p, 1)),
        }
    }
    groups
        .iter()
        .map(|(p, n)| format!("{p} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[allow(clippy::too_many_arguments)]
fn emit(
    args: &BenchArgs,
    point: &Point,
    sides: &[Side],
    results: &[SideResult],
    complete: bool,
    footnotes: &mut Vec<String>,
    sweep: &mut [SweepLine],
) {
    let open_loop = point.rate.is_some();
    let layout = layout(args, sides);
    let mut medians: Vec<Option<Metrics>> = Vec::new();
    for (si, (side, res)) in sides.iter().zip(results).enumerate() {
        let measured: Vec<Metrics> = res
            .runs
            .iter()
            .filter(|r| !r.elapsed.is_zero())
            .map(|r| metrics(r, open_loop))
            .collect();
        if measured.is_empty() {
            medians.push(None);
            continue;
        }
        let (med, spread) = median_and_spread(&measured);
        let warning = saturation_warning(&res.merged, &side.addrs);
        // An open-loop point's p99 from each cycle's intended start, as the percentile panel
        // draws it (the latency a caller arriving on schedule sees).
        let p99_key = if open_loop {
            "cycle_corrected_p99_us"
        } else {
            "cycle_p99_us"
        };
        if let (Some(g), Some(p99)) = (med.get("grants_per_sec"), med.get(p99_key)) {
            sweep[si].points.push((point.label(), *g, *p99));
            sweep[si].open_loop |= open_loop;
        }
        let side_name = (sides.len() > 1).then(|| side.label().to_string());
        let spec = Spec {
            concurrency: point.concurrency,
            rate: point.rate,
            warmup: args.warmup,
            duration: args.duration,
            ops: if sides.len() > 1 { None } else { args.ops },
            progress: false,
        };
        if args.json {
            let mut v = serde_json::json!({
                "kind": "point",
                "point": { "concurrency": point.concurrency, "rate": point.rate, "label": point.label() },
                "side": side_name,
                "complete": complete,
                "setup": setup_json(args, side, &spec),
                "dragonlock": as_json(&res.merged, point.rate),
                "run_count": measured.len(),
                "runs": measured,
                "median": med,
                "spread": spread,
            });
            if let Some(server) = &res.merged.server {
                v["server"] = server.to_json();
                v["server"]["saturated"] = serde_json::json!(warning.is_some());
            }
            println!("{v}");
        } else {
            let spread_cell = if measured.len() > 1 {
                format!(
                    "{:.1}",
                    spread.get("grants_per_sec").copied().unwrap_or(0.0) * 100.0
                )
            } else {
                String::new()
            };
            let lead = if si == 0 {
                point.label()
            } else {
                String::new()
            };
            print!(
                "{}",
                layout.lead(&lead, side_name.as_deref().unwrap_or(""), &spread_cell)
            );
            for (_, key) in layout.columns() {
                let cell = med.get(key).map(|v| fmt_num(*v)).unwrap_or_default();
                print!(" {cell:>11}");
            }
            println!("{}", if complete { "" } else { "  (incomplete)" });
            let who = format!(
                "{}{}",
                point.label(),
                side_name.map(|s| format!(" {s}")).unwrap_or_default()
            );
            if let Some(w) = warning {
                footnotes.push(format!("{who}: {w}"));
            }
            if let Some(note) = outcome_note(&who, res.merged.cycles, &res.merged.outcomes) {
                footnotes.push(note);
            }
            if let Some(f) = res.merged.refused.filter(|f| f.total() > 0) {
                footnotes.push(format!(
                    "{who}: {} node requests refused by the client ({} overloaded, {} not \
                     connected, {} restart delay): {}",
                    f.total(),
                    f.overloaded,
                    f.not_connected,
                    f.restarted,
                    super::bench::REFUSED_LEGEND
                ));
            }
            if let Some(target) = point.rate {
                let achieved = res.merged.cycles_per_sec();
                if achieved < target as f64 * OPEN_LOOP_REACHED {
                    footnotes.push(format!(
                        "{who}: open loop target {target} cycles/s NOT REACHED: achieved \
                         {achieved:.0}/s (more --concurrency or a lower --rate)"
                    ));
                }
            }
            if args.server_stats {
                if let Some(server) = &res.merged.server {
                    for line in server_lines(&server.to_json()) {
                        footnotes.push(format!("{who}: {line}"));
                    }
                }
            }
        }
        medians.push(Some(med));
    }
    // Ratios of every side to the first.
    let Some(Some(base)) = medians.first() else {
        return;
    };
    for (si, m) in medians.iter().enumerate().skip(1) {
        let Some(m) = m else { continue };
        let r = |k: &str| ratio(m.get(k).copied(), base.get(k).copied());
        let keys = [
            "grants_per_sec",
            "attempts_per_sec",
            "cycle_p50_us",
            "cycle_p99_us",
            "cycle_p999_us",
            "cycle_corrected_p99_us",
            "client_cpu_us_per_cycle",
            "server_cpu_us_per_cycle",
            "server_cores_used",
        ];
        if args.json {
            let mut v = serde_json::json!({
                "kind": "ratio",
                "point": { "concurrency": point.concurrency, "rate": point.rate, "label": point.label() },
                "side": sides[si].label(),
                "to": sides[0].label(),
                "complete": complete,
            });
            for k in keys {
                if let Some(x) = r(k) {
                    v[k] = serde_json::json!(x);
                }
            }
            println!("{v}");
        } else {
            let name = format!("{}/{}", sides[si].label(), sides[0].label());
            print!("{}", layout.lead("", &name, ""));
            for (_, key) in layout.columns() {
                let cell = r(key).map(|x| format!("{x:.3}x")).unwrap_or_default();
                print!(" {cell:>11}");
            }
            println!();
        }
    }
}

/// Whole numbers above 100, one decimal below.
fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A point's footnote on the cycles that were not done: attempts not granted, by why, and
/// cycles granted but not released on a quorum. A failed release follows a granted acquire:
/// those are not "not granted", they are cycles not done, named on their own. `None` when
/// every cycle was done.
fn outcome_note(who: &str, cycles: u64, o: &Outcomes) -> Option<String> {
    let refused = cycles.saturating_sub(o.granted + o.release_failed);
    let released = match o.release_failed {
        0 => String::new(),
        n => format!("{n} granted but not released on a quorum"),
    };
    if refused > 0 {
        let released = if released.is_empty() {
            released
        } else {
            format!("; {released}")
        };
        Some(format!(
            "{who}: {refused} of {cycles} attempts not granted: busy {}, no quorum {}, \
             unavailable {}, expired {}, other {}{released}",
            o.busy, o.no_quorum, o.unavailable, o.expired, o.other,
        ))
    } else if o.release_failed > 0 {
        Some(format!("{who}: {released}, of {cycles} attempts"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweep's footnote: refusals by why, and failed releases as their own clause, alone
    /// when every attempt was granted (it read "0 of N attempts not granted" then).
    #[test]
    fn the_footnote_names_failed_releases_apart_from_refusals() {
        let mut o = Outcomes {
            granted: 10,
            ..Outcomes::default()
        };
        assert_eq!(outcome_note("c=4", 10, &o), None);
        o.release_failed = 2;
        assert_eq!(
            outcome_note("c=4", 12, &o).as_deref(),
            Some("c=4: 2 granted but not released on a quorum, of 12 attempts")
        );
        o.busy = 3;
        assert_eq!(
            outcome_note("c=4", 15, &o).as_deref(),
            Some(
                "c=4: 3 of 15 attempts not granted: busy 3, no quorum 0, unavailable 0, \
                 expired 0, other 0; 2 granted but not released on a quorum"
            )
        );
        o.release_failed = 0;
        assert_eq!(
            outcome_note("c=4", 13, &o).as_deref(),
            Some(
                "c=4: 3 of 13 attempts not granted: busy 3, no quorum 0, unavailable 0, \
                 expired 0, other 0"
            )
        );
    }

    #[test]
    fn medians_and_spreads() {
        let runs: Vec<Metrics> = [100.0, 120.0, 90.0]
            .iter()
            .map(|g| Metrics::from([("grants_per_sec", *g)]))
            .collect();
        let (m, s) = median_and_spread(&runs);
        assert_eq!(m["grants_per_sec"], 100.0);
        assert_eq!(s["grants_per_sec"], 0.3);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(
            summarize(&["DELEX", "EVALSHA", "DELEX"]),
            "DELEX x2, EVALSHA x1"
        );
    }
}
