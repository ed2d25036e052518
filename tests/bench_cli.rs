//! `dragonlock bench`'s sweeps, repeated runs, comparisons, server statistics and outputs, end
//! to end as a process against local servers. Runs are short (a few hundred milliseconds a
//! point): these tests check what is reported, never how fast.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::server::cluster;

use support::cli::{bench_json_stdout, code, dragonlock, node_list};

/// `bench … --json` in a multi-point mode: one JSON object per line.
fn json_lines(args: &[&str]) -> Vec<serde_json::Value> {
    bench_json_stdout(args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `args` for the shortest comparison that still takes turns: two 100 ms slices a side, no
/// warm-up.
fn short_turns<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend([
        "--duration",
        "200ms",
        "--slice",
        "100ms",
        "--warmup",
        "0s",
        "--ttl",
        "5s",
    ]);
    all
}

/// A scratch directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "dragonlock-bench-cli-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The keys every point object carries (the schema in `dragonlock bench --help` and the
/// README); `server` is there whenever the servers were read.
fn assert_point_schema(v: &serde_json::Value) {
    assert_eq!(v["kind"], "point", "{v}");
    for key in [
        "point",
        "side",
        "complete",
        "setup",
        "dragonlock",
        "run_count",
        "runs",
        "median",
        "spread",
        "server",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    for key in ["concurrency", "rate", "label"] {
        assert!(v["point"].get(key).is_some(), "point.{key} missing: {v}");
    }
    for key in [
        "grants_per_sec",
        "attempts_per_sec",
        "cycle_p50_us",
        "cycle_p99_us",
    ] {
        assert!(v["median"][key].is_number(), "median.{key}: {v}");
        assert!(v["spread"][key].is_number(), "spread.{key}: {v}");
    }
    let server = &v["server"];
    for key in [
        "cpu_us_per_cycle",
        "cores_used",
        "nodes",
        "commands",
        "saturated",
    ] {
        assert!(server.get(key).is_some(), "server.{key} missing: {server}");
    }
}

/// A sweep runs one point after another on the same servers: a table row per point, a JSON
/// line per point with that point's workers, and the servers' side of each point read from
/// INFO: the SETs each measured cycle sent (3 nodes), give or take the cycles in flight when
/// the counters were read.
#[test]
fn bench_sweep_reports_a_row_and_a_json_line_per_point() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let common = [
        "--nodes",
        &nodes,
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--ttl",
        "5s",
    ];
    let mut args = common.to_vec();
    args.extend(["--concurrency", "1,2,4"]);
    let lines = json_lines(&args);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (v, c) in lines.iter().zip([1, 2, 4]) {
        assert_point_schema(v);
        assert_eq!(v["point"]["concurrency"], c, "{v}");
        assert_eq!(v["setup"]["concurrency"], c, "{v}");
        assert_eq!(v["complete"], true);
        assert_eq!(v["side"], serde_json::Value::Null);
        let d = &v["dragonlock"];
        let cycles = d["cycles"].as_u64().unwrap();
        assert!(cycles > 0, "{d}");
        assert_eq!(d["outcomes"]["granted"], cycles, "{d}");
        let server = &v["server"];
        assert_eq!(server["nodes"].as_array().unwrap().len(), 3, "{server}");
        assert!(
            server["cpu_us_per_cycle"].as_f64().unwrap() > 0.0,
            "{server}"
        );
        // The readings bracket every cycle run, warm-up included (none here): each sent one
        // SET to each of the 3 nodes.
        assert_eq!(server["cycles"], cycles, "{server}");
        assert_eq!(server["commands"]["set"]["calls"], 3 * cycles, "{server}");
        assert_eq!(
            server["commands"]["evalsha"]["calls"],
            3 * cycles,
            "{server}"
        );
        let evalsha = &server["commands"]["evalsha"];
        assert!(evalsha["usec_per_call"].as_f64().unwrap() > 0.0, "{server}");
    }

    // The table: a row per point, in order.
    let mut all = vec!["bench"];
    all.extend_from_slice(&args);
    let o = dragonlock(&all);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("c="))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(rows, ["c=1", "c=2", "c=4"], "{out}");
    assert!(out.contains("srv us/op"), "{out}");
    assert!(out.contains("servers: 3 x redis"), "{out}");

    // A rate list: a point per rate, with the corrected p99.
    let mut args = common.to_vec();
    args.extend(["--concurrency", "2", "--rate", "100,200"]);
    let lines = json_lines(&args);
    assert_eq!(lines.len(), 2);
    for (v, r) in lines.iter().zip([100u64, 200]) {
        assert_eq!(v["point"]["rate"], r, "{v}");
        assert_eq!(v["dragonlock"]["open_loop"]["target_per_sec"], r, "{v}");
        assert!(v["median"]["cycle_corrected_p99_us"].is_number(), "{v}");
    }
}

/// `--runs 3` repeats the point and reports every run, their median and spread; the merged
/// client figures cover all three.
#[test]
fn bench_runs_report_each_run_the_median_and_the_spread() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let lines = json_lines(&[
        "--nodes",
        &nodes,
        "--runs",
        "3",
        "--ops",
        "40",
        "--concurrency",
        "2",
        "--warmup",
        "0s",
        "--ttl",
        "5s",
    ]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v = &lines[0];
    assert_point_schema(v);
    assert_eq!(v["run_count"], 3);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(v["dragonlock"]["cycles"], 120, "{v}");
    let g: Vec<f64> = runs
        .iter()
        .map(|r| r["grants_per_sec"].as_f64().unwrap())
        .collect();
    let mut sorted = g.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    assert_eq!(v["median"]["grants_per_sec"].as_f64().unwrap(), sorted[1]);
    let spread = (sorted[2] - sorted[0]) / sorted[1];
    assert!(
        (v["spread"]["grants_per_sec"].as_f64().unwrap() - spread).abs() < 0.001,
        "{v}"
    );
}

/// `--compare release-wait=all,quorum`: both sides on the same servers, each with its own
/// release policy (all: every node counted; quorum: 2 of 3 at least), the ratio of the second
/// to the first, and the sides interleaved A B B A in their slices (the interval logs'
/// timestamps show the order).
#[test]
fn bench_compare_prints_both_sides_and_the_ratios_interleaved() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let scratch = Scratch::new("compare");
    let hdr = scratch.path("hdr");
    let plot = scratch.path("compare.svg");
    let common = [
        "--nodes",
        &nodes,
        "--compare",
        "release-wait=all,quorum",
        "--duration",
        "400ms",
        "--slice",
        "200ms",
        "--warmup",
        "50ms",
        "--concurrency",
        "2",
        "--ttl",
        "5s",
    ];
    let mut args = common.to_vec();
    args.extend(["--hdr-out", &hdr, "--plot", &plot]);
    let lines = json_lines(&args);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let (all, quorum, ratio) = (&lines[0], &lines[1], &lines[2]);
    assert_point_schema(all);
    assert_point_schema(quorum);
    assert_eq!(all["side"], "all");
    assert_eq!(all["setup"]["release_wait"], "all");
    assert_eq!(quorum["side"], "quorum");
    assert_eq!(quorum["setup"]["release_wait"], "quorum");
    assert_eq!(all["dragonlock"]["nodes_per_release"], 3.0, "{all}");
    let q = quorum["dragonlock"]["nodes_per_release"].as_f64().unwrap();
    assert!((2.0..=3.0).contains(&q), "{quorum}");
    assert_eq!(ratio["kind"], "ratio");
    assert_eq!(ratio["side"], "quorum");
    assert_eq!(ratio["to"], "all");
    let expect = quorum["median"]["grants_per_sec"].as_f64().unwrap()
        / all["median"]["grants_per_sec"].as_f64().unwrap();
    assert!(
        (ratio["grants_per_sec"].as_f64().unwrap() - expect).abs() < 0.002,
        "{ratio}"
    );

    // Interleaved: all's two slices come first and last, quorum's between them.
    let starts = |file: &str| -> Vec<f64> {
        let text = std::fs::read_to_string(format!("{hdr}/{file}")).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("\"Start"))
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect()
    };
    let (a, b) = (starts("all.hlog"), starts("quorum.hlog"));
    assert_eq!((a.len(), b.len()), (2, 2), "{a:?} {b:?}");
    assert!(a[0] < b[0] && b[0] < b[1] && b[1] < a[1], "{a:?} {b:?}");

    // The plot: well-formed SVG, a line per side (and its legend sample), both named. The
    // series are drawn 2 px wide; the axes and ticks are 1 px polylines.
    let svg = std::fs::read_to_string(&plot).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let polylines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .count();
    assert_eq!(polylines, 4, "two series, each with its legend sample");
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    for side in ["all", "quorum"] {
        assert!(texts.contains(&side), "{side} not in the legend: {texts:?}");
    }

    // The table: a row per side and the ratio row.
    let mut all_args = vec!["bench"];
    all_args.extend_from_slice(&common);
    let o = dragonlock(&all_args);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("all")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("quorum ")),
        "{out}"
    );
    let ratio_row = out
        .lines()
        .find(|l| l.trim_start().starts_with("quorum/all"))
        .unwrap_or_else(|| panic!("no ratio row: {out}"));
    assert!(ratio_row.contains('x'), "{ratio_row}");
}

/// Two server sets side by side: `nodes=` with `+` inside a side and `,` between sides.
#[test]
fn bench_compare_two_node_sets() {
    let first = cluster(3);
    let second = cluster(3);
    let set =
        |s: &[support::server::Server]| s.iter().map(|s| s.addr()).collect::<Vec<_>>().join("+");
    let spec = format!("nodes={},{}", set(&first), set(&second));
    let lines = json_lines(&short_turns(&["--compare", &spec, "--concurrency", "1"]));
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["side"], "set1");
    assert_eq!(lines[1]["side"], "set2");
    assert_eq!(lines[0]["setup"]["nodes"][0], first[0].addr());
    assert_eq!(lines[1]["setup"]["nodes"][0], second[0].addr());
    assert_eq!(lines[2]["kind"], "ratio");
}

/// `--compare client=baseline,dragonlock`: the single-loop baseline and dragonlock take turns
/// on the same servers, run after run, with the ratio of dragonlock to the baseline. The
/// baseline's side runs the baseline's own client (no dragonlock refusal counts: it has its
/// own sockets), and its setup says it is the baseline.
#[test]
fn bench_compare_client_takes_turns_with_the_baseline() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let lines = json_lines(&short_turns(&[
        "--nodes",
        &nodes,
        "--compare",
        "client=baseline,dragonlock",
        "--runs",
        "2",
        "--concurrency",
        "2",
    ]));
    assert_eq!(lines.len(), 3, "{lines:?}");
    let (base, ours, ratio) = (&lines[0], &lines[1], &lines[2]);
    assert_point_schema(base);
    assert_point_schema(ours);
    assert_eq!(base["side"], "baseline");
    assert_eq!(base["setup"]["baseline"], "single-loop");
    assert_eq!(base["setup"]["baseline_release"], "evalsha");
    assert!(base["dragonlock"]["refused"].is_null(), "{base}");
    assert_eq!(ours["side"], "dragonlock");
    assert!(ours["setup"]["baseline"].is_null(), "{ours}");
    assert!(ours["dragonlock"]["refused"].is_number(), "{ours}");
    for side in [base, ours] {
        assert_eq!(side["run_count"], 2, "{side}");
        let cycles = side["dragonlock"]["cycles"].as_u64().unwrap();
        // Every slice of every run measured cycles (lanes handed to new callers each time).
        assert!(cycles > 0, "{side}");
        assert_eq!(side["dragonlock"]["outcomes"]["granted"], cycles, "{side}");
    }
    assert_eq!(ratio["kind"], "ratio");
    assert_eq!(ratio["side"], "dragonlock");
    assert_eq!(ratio["to"], "baseline");
    assert!(ratio["client_cpu_us_per_cycle"].is_number(), "{ratio}");

    // On the local servers (no --nodes): both clients on the same five, started once.
    let lines = json_lines(&short_turns(&[
        "--compare",
        "client=baseline,dragonlock",
        "--concurrency",
        "1",
    ]));
    assert_eq!(lines.len(), 3, "{lines:?}");
    let nodes = &lines[0]["setup"]["nodes"];
    assert_eq!(nodes.as_array().map(Vec::len), Some(5), "{}", lines[0]);
    assert_eq!(&lines[1]["setup"]["nodes"], nodes, "{}", lines[1]);
    assert_eq!(
        lines[0]["setup"]["server_binary"],
        lines[1]["setup"]["server_binary"]
    );
}

/// A sweep's plot has the percentile panel (a line per point) and the throughput-against-p99
/// panel (a line through the points); `--hdr-out` writes a log per point that the
/// hdrhistogram crate reads back, with the corrected histograms of an open loop tagged.
#[test]
fn bench_sweep_plot_and_histogram_logs() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let scratch = Scratch::new("plot");
    let (plot, hdr) = (scratch.path("sweep.svg"), scratch.path("hdr"));
    let o = dragonlock(&[
        "bench",
        "--nodes",
        &nodes,
        "--concurrency",
        "1,2",
        "--rate",
        "200",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--ttl",
        "5s",
        "--plot",
        &plot,
        "--hdr-out",
        &hdr,
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(&plot).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let polylines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .count();
    // Percentiles: 2 series + 2 legend samples; throughput: 1 line + 1 legend sample.
    assert_eq!(polylines, 6);
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    // An open-loop sweep: both panels say their latency is from each cycle's intended start.
    for label in [
        "c=1 rate=200",
        "c=2 rate=200",
        "Lock cycle latency by percentile (from each cycle's intended start)",
        "Throughput against p99 (from each cycle's intended start)",
    ] {
        assert!(texts.contains(&label), "{label}: {texts:?}");
    }
    for file in ["c_1_rate_200.hlog", "c_2_rate_200.hlog"] {
        let text = std::fs::read(format!("{hdr}/{file}")).unwrap();
        let mut untagged = 0;
        let mut intended = 0;
        for interval in hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&text) {
            let interval = match interval.unwrap() {
                hdrhistogram::serialization::interval_log::LogEntry::Interval(i) => i,
                _ => continue,
            };
            let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
                .deserialize(&mut std::io::Cursor::new(base64_decode(
                    interval.encoded_histogram(),
                )))
                .unwrap();
            assert!(!h.is_empty(), "{file}");
            match interval.tag().map(|t| t.as_str()) {
                None => untagged += 1,
                Some("intended") => intended += 1,
                Some(other) => panic!("tag {other}"),
            }
        }
        assert_eq!((untagged, intended), (1, 1), "{file}");
    }
}

/// Standard base64 (the interval log's encoding), without a dependency for six lines.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (val(c) as u32) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Without the new flags the single run's JSON is as it was: no `server`, no `servers`;
/// `--server-stats` adds the servers' side; `--server-bin` names the binary and each server.
#[test]
fn bench_single_run_server_stats_and_server_bin() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let common = [
        "--nodes",
        &nodes,
        "--ops",
        "60",
        "--concurrency",
        "1",
        "--warmup",
        "0s",
        "--ttl",
        "5s",
        "--json",
    ];
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut all = vec!["bench"];
        all.extend_from_slice(&common);
        all.extend_from_slice(extra);
        let o = dragonlock(&all);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let v = run(&[]);
    assert!(v.get("server").is_none(), "{v}");
    assert!(v["setup"].get("servers").is_none(), "{v}");
    let v = run(&["--server-stats"]);
    let server = &v["server"];
    assert_eq!(server["commands"]["set"]["calls"], 180, "{server}");
    assert_eq!(server["cycles"], 60, "{server}");
    assert!(server["saturated"].is_boolean(), "{server}");
    assert_eq!(v["setup"]["servers"].as_array().unwrap().len(), 3, "{v}");
    assert!(v["setup"]["servers"][0]
        .as_str()
        .unwrap()
        .starts_with("redis "));

    let bin = support::server::binary().0.display().to_string();
    let o = dragonlock(&[
        "bench",
        "--server-bin",
        &bin,
        "--ops",
        "20",
        "--concurrency",
        "1",
        "--warmup",
        "0s",
        "--ttl",
        "5s",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.starts_with("servers: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("5 x ") && line.contains(&bin), "{line}");
}

/// Every new flag refuses bad input with exit 2 and one line that says what is wrong, before
/// any server is started or any file written.
#[test]
fn bench_new_flags_refuse_bad_input_with_a_clear_message() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let scratch = Scratch::new("bad");
    let png = scratch.path("plot.png");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--concurrency", "1,,4"], "--concurrency"),
        (vec!["--concurrency", "4,4"], "lists 4 twice"),
        (vec!["--concurrency", "0,4"], "at least 1"),
        (vec!["--rate", "100,0"], "--rate must be at least 1"),
        (vec!["--rate", "100,abc"], "--rate"),
        (vec!["--runs", "0"], "--runs must be from 1"),
        (vec!["--ops", "0"], "--ops must be at least 1"),
        (vec!["--compare", "release-wait=all"], "at least two"),
        (vec!["--compare", "colour=red,blue"], "unknown key"),
        (
            vec!["--compare", "release-wait=all,maybe"],
            "not all or quorum",
        ),
        (
            vec![
                "--compare",
                "release-wait=all,quorum",
                "--release-wait",
                "all",
            ],
            "both set",
        ),
        (
            vec!["--compare", "release-wait=all,quorum", "--ops", "5"],
            "--ops with --compare",
        ),
        (
            vec!["--compare", "release-wait=all,quorum", "--slice", "1ms"],
            "--slice must be at least",
        ),
        (
            vec!["--compare", "release=script,delex"],
            "no node has DELEX",
        ),
        (vec!["--plot", "/nonexistent-dir/x.svg"], "cannot write"),
        (vec!["--plot", &png], "ending in .svg"),
        (vec!["--hdr-out", "/proc/dragonlock"], "cannot write there"),
        (vec!["--server-threads", "2"], "not with --nodes"),
        (
            vec!["--baseline", "--runs", "2"],
            "--baseline runs beside a single point",
        ),
        (
            vec!["--compare", "client=dragonlock,redsync"],
            "not dragonlock or baseline",
        ),
        (
            vec!["--compare", "client=baseline,dragonlock", "--retries", "1"],
            "--retries with --compare client=",
        ),
        (
            vec![
                "--compare",
                "client=baseline,dragonlock",
                "--workload",
                "extend",
            ],
            "runs the uncontended, contended and acquire-only workloads",
        ),
        (
            vec!["--compare", "client=baseline,dragonlock", "--baseline"],
            "--baseline and --compare client=… both run the baseline",
        ),
        (
            vec![
                "--compare",
                "client=baseline,dragonlock",
                "--release-wait",
                "all",
            ],
            "--release-wait all with --compare client=…",
        ),
        (
            vec!["--baseline", "--release-wait", "all"],
            "--release-wait all with --baseline",
        ),
    ];
    for (extra, says) in cases {
        let mut args = vec!["bench", "--nodes", &nodes, "--duration", "200ms"];
        args.extend(extra.iter());
        let o = dragonlock(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), 2, "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
    assert!(!std::path::Path::new(&png).exists());
    // On the local servers (no --nodes): a binary that is not there, and threads for Redis.
    for (extra, says) in [
        (
            vec!["--server-bin", "/nonexistent/redis-server"],
            "cannot run it",
        ),
        (vec!["--server-threads", "0"], "at least 1"),
    ] {
        let mut args = vec!["bench", "--duration", "200ms"];
        args.extend(extra.iter());
        let o = dragonlock(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), 2, "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
    if support::server::binary().1 == support::server::Flavor::Redis {
        let bin = support::server::binary().0.display().to_string();
        let o = dragonlock(&["bench", "--server-bin", &bin, "--server-threads", "2"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), 2, "{err}");
        assert!(err.contains("is not Dragonfly"), "{err}");
    }
}

/// A sweep whose servers die after its first point reports the first point, then the point it
/// was in (marked incomplete), and exits 69 saying so. The kill happens once the first point's
/// line is out, so the run is mid-way by construction, not by timing.
#[test]
fn bench_sweep_that_loses_its_servers_reports_what_it_measured_and_exits_69() {
    let mut servers = cluster(3);
    let nodes = node_list(&servers);
    let mut child = Command::new(env!("CARGO_BIN_EXE_dragonlock"))
        .args([
            "bench",
            "--nodes",
            &nodes,
            "--concurrency",
            "1,2,3",
            // Long enough that the servers die inside point 2 even when a loaded machine
            // holds this test up after point 1's line.
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--ttl",
            "5s",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["complete"], true);
    servers[0].kill9();
    servers[1].kill9();
    let rest: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "bench did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(69), "{err}");
    assert!(err.contains("lost the servers"), "{err}");
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0]["point"]["concurrency"], 2);
    assert_eq!(rest[0]["complete"], false);
}

/// Coordinated omission, shown with a server stall made on purpose: an open loop at 100
/// cycles/s with one worker, and a majority of the nodes SIGSTOPped for 1 s in the middle.
/// The one cycle caught in the stall waits it out (the uncorrected maximum shows it), but it
/// is one cycle of ~300, so the uncorrected p99 stays a normal cycle's: a closed loop's view,
/// which stops offering load while it waits. The ~100 cycles that were due during the stall
/// all start late, and measured from their intended starts (the corrected figures) they put
/// the stall into the p99.
#[test]
fn bench_open_loop_corrected_p99_shows_a_stall_the_uncorrected_one_hides() {
    const STALL: Duration = Duration::from_secs(1);
    let mut servers = cluster(3);
    let nodes = node_list(&servers);
    let child = Command::new(env!("CARGO_BIN_EXE_dragonlock"))
        .args([
            "bench",
            "--nodes",
            &nodes,
            "--rate",
            "100",
            "--concurrency",
            "1",
            "--duration",
            "3s",
            "--warmup",
            "0s",
            "--ttl",
            "10s",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stall once the run is under way: 50 cycles (half a second) have reached the first node.
    let deadline = Instant::now() + Duration::from_secs(20);
    while servers[0].command_calls("set") < 50 {
        assert!(Instant::now() < deadline, "the bench never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    servers[0].stop();
    servers[1].stop();
    std::thread::sleep(STALL);
    servers[0].cont();
    servers[1].cont();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = &v["dragonlock"];
    let half = STALL.as_secs_f64() * 1e6 / 2.0;
    let us = |part: &str, q: &str| d[part][q].as_f64().unwrap();
    assert!(us("cycle", "max_us") >= half, "the stalled cycle: {d}");
    assert!(us("cycle", "p99_us") < half, "uncorrected p99: {d}");
    assert!(
        us("cycle_corrected", "p99_us") >= half,
        "corrected p99: {d}"
    );
}

/// An open loop far above what the client can do is measured at the rate it really keeps.
/// Its cycles once counted as measured only if their *intended* start fell in the window: a
/// run 10 million cycles/s behind was still running warm-up slots when the window ended and
/// reported "achieved 0/s". Now the closed loop and the open loop report the same order of
/// magnitude, and the open loop says NOT REACHED.
#[test]
fn bench_open_loop_above_capacity_reports_what_it_achieved() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let common = [
        "bench",
        "--nodes",
        &nodes,
        "--concurrency",
        "4",
        "--duration",
        "500ms",
        "--warmup",
        "300ms",
        "--ttl",
        "10s",
    ];
    let mut closed = common.to_vec();
    closed.push("--json");
    let o = dragonlock(&closed);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let closed_rate = v["dragonlock"]["cycles_per_sec"].as_f64().unwrap();
    assert!(closed_rate > 0.0, "{v}");

    let mut open = common.to_vec();
    open.extend(["--rate", "10000000"]);
    let o = dragonlock(&open);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("open loop target"))
        .unwrap_or_else(|| panic!("no open-loop line: {text}"));
    assert!(line.contains("NOT REACHED"), "{line}");
    let achieved: f64 = line
        .split("achieved ")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no achieved rate: {line}"));
    assert!(
        achieved >= closed_rate / 10.0 && achieved <= closed_rate * 10.0,
        "open loop achieved {achieved}/s, closed loop {closed_rate}/s: {text}"
    );
}

/// Requests the client refused (a node stopped mid-run fills its connection's in-flight table,
/// and further acquires to it are refused `Overloaded`) are in the outcomes line, the JSON and
/// the help, not only in the per-node view; a run that refused none says so in the JSON.
#[test]
fn bench_reports_the_requests_the_client_refused() {
    let mut servers = cluster(3);
    let nodes = node_list(&servers);
    // With `stop`, the third node is stopped once the run is under way, and resumed after.
    let mut run = |json: bool, stop: bool| {
        let mut args = vec![
            "bench",
            "--nodes",
            &nodes,
            "--concurrency",
            "4",
            "--duration",
            "1500ms",
            "--warmup",
            "0s",
            "--ttl",
            "10s",
        ];
        if json {
            args.push("--json");
        }
        if !stop {
            // Fewer requests per node than the 768 in flight that make acquires refused:
            // none can be refused, however long a node lags (a loaded machine stalled one for
            // 36 ms at full speed, and 1,072 acquires to it were refused).
            args.extend(["--ops", "200"]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_dragonlock"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if stop {
            let before = servers[0].command_calls("set");
            let deadline = Instant::now() + Duration::from_secs(20);
            while servers[0].command_calls("set") < before + 50 {
                assert!(Instant::now() < deadline, "the bench never got going");
                std::thread::sleep(Duration::from_millis(10));
            }
            servers[2].stop();
        }
        let o = child.wait_with_output().unwrap();
        if stop {
            servers[2].cont();
        }
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let v: serde_json::Value = serde_json::from_str(&run(true, false)).unwrap();
    assert_eq!(v["dragonlock"]["refused"], 0, "{v}");

    // A stopped minority: every cycle still gets its quorum, and leaves one request more in
    // flight on the stopped node, until acquires to it are refused.
    let v: serde_json::Value = serde_json::from_str(&run(true, true)).unwrap();
    let d = &v["dragonlock"];
    assert!(
        d["refused_by_reason"]["overloaded"].as_u64().unwrap() > 0,
        "{d}"
    );
    assert!(d["refused"].as_u64() >= d["refused_by_reason"]["overloaded"].as_u64());
    let text = run(false, true);
    let outcomes = text
        .lines()
        .find(|l| l.starts_with("outcomes:"))
        .unwrap_or_else(|| panic!("no outcomes line: {text}"));
    assert!(outcomes.contains("; refused "), "{outcomes}");
    assert!(text.contains("already owed too many replies"), "{text}");

    let help = dragonlock(&["bench", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("three quarters"), "{help}");
}

/// In the contended workload the cycle histogram holds granted cycles only, as acquire and
/// release do: busy attempts (one round trip each) once went into it, and its p50 fell below
/// the acquire p50. Failed attempts stay in the outcomes and attempts/s, and the table says so.
#[test]
fn bench_contended_latency_rows_hold_granted_cycles_only() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let common = [
        "bench",
        "--nodes",
        &nodes,
        "--workload",
        "contended",
        "--resources",
        "1",
        "--concurrency",
        "8",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
        "--ttl",
        "10s",
    ];
    let v = json_run(&common);
    let d = &v["dragonlock"];
    assert!(d["outcomes"]["busy"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(d["cycle"]["count"], d["outcomes"]["granted"], "{d}");
    assert_eq!(d["acquire"]["count"], d["outcomes"]["granted"], "{d}");
    let text = text_run(&common);
    assert!(text.contains("granted cycles only"), "{text}");
}

/// A run of `args` with `--json`, which must succeed: its object.
fn json_run(args: &[&str]) -> serde_json::Value {
    let mut json = args.to_vec();
    json.push("--json");
    let o = dragonlock(&json);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A run of `args`, which must succeed: its text report.
fn text_run(args: &[&str]) -> String {
    let o = dragonlock(args);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A lock granted and then not released on a quorum is not a granted cycle: it is counted as
/// a failed release, and left out of the grants and the latency rows. Releases are made to fail
/// by taking `EVAL`/`EVALSHA` from the servers' default user (the release script); each
/// worker's first lock then stays, and its later attempts are busy.
#[test]
fn bench_counts_a_failed_release_as_its_own_outcome() {
    if support::server::binary().1 == support::server::Flavor::Dragonfly {
        support::not_on_this_server(
            "bench_counts_a_failed_release_as_its_own_outcome",
            "denies the release script by ACL; Dragonfly releases by DELEX",
        );
        return;
    }
    let servers = cluster(3);
    for s in &servers {
        s.cmd(&["ACL", "SETUSER", "default", "-eval", "-evalsha"]);
    }
    let nodes = node_list(&servers);
    let common = [
        "bench",
        "--nodes",
        &nodes,
        "--concurrency",
        "4",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
    ];
    let v = json_run(&common);
    let d = &v["dragonlock"];
    assert_eq!(d["outcomes"]["release_failed"], 4, "{d}");
    assert_eq!(d["outcomes"]["granted"], 0, "{d}");
    assert_eq!(d["cycle"]["count"], 0, "{d}");
    assert_eq!(d["nodes_per_release"], serde_json::Value::Null, "{d}");
    for s in &servers {
        s.cmd(&["FLUSHALL"]);
    }
    // The baseline releases by the same script: its failed releases are counted the same way,
    // and the text shows them too (not only the JSON).
    let with_baseline = [&common[..], &["--baseline"]].concat();
    let text = text_run(&with_baseline);
    assert!(text.contains("release failed 4"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("baseline outcomes:") && l.contains("release failed 4")),
        "{text}"
    );
    // A sweep's footnote names them as not released, not as attempts not granted.
    for s in &servers {
        s.cmd(&["FLUSHALL"]);
    }
    let sweep = [
        "bench",
        "--nodes",
        &nodes,
        "--concurrency",
        "2,4",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
    ];
    // The first point's workers hold their keys (30 s) into the second: c=4's w0 and w1 are
    // busy, w2 and w3 granted once and not released.
    let text = text_run(&sweep);
    for point in ["c=2: ", "c=4: "] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(point)
                    && l.ends_with("; 2 granted but not released on a quorum")),
            "{text}"
        );
    }
}

/// An error reply to the `SET` (here the user may not run it) is a failed node for both
/// clients: every acquire is `unavailable`, none granted, and neither client dies of it (the
/// baseline's loop used to panic on any error reply).
#[test]
fn bench_counts_error_replies_to_the_acquire_as_unavailable_for_both_clients() {
    let servers = cluster(3);
    for s in &servers {
        s.cmd(&["ACL", "SETUSER", "default", "-set"]);
    }
    let nodes = node_list(&servers);
    let v = json_run(&[
        "bench",
        "--nodes",
        &nodes,
        "--concurrency",
        "4",
        "--duration",
        "200ms",
        "--warmup",
        "0s",
        "--baseline",
    ]);
    for client in ["dragonlock", "baseline"] {
        let o = &v[client]["outcomes"];
        assert_eq!(o["granted"], 0, "{client}: {o}");
        assert_eq!(o["no_quorum"], 0, "{client}: {o}");
        assert!(o["unavailable"].as_u64().unwrap_or(0) > 0, "{client}: {o}");
    }
}

/// With `--retries`, attempts/s counts every attempt, retries included (the manager's lock
/// counters), not the cycles: on one shared resource most attempts are busy and retried, so
/// attempts exceed cycles. Without retries the two are the same count.
#[test]
fn bench_retries_count_every_attempt() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let run = |retries: &str| {
        let o = dragonlock(&[
            "bench",
            "--nodes",
            &nodes,
            "--workload",
            "contended",
            "--resources",
            "1",
            "--concurrency",
            "8",
            "--retries",
            retries,
            "--retry-delay",
            "1ms",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
            "--ttl",
            "10s",
            "--json",
        ]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["dragonlock"].clone()
    };
    let d = run("0");
    assert_eq!(d["attempts"], d["cycles"], "{d}");
    let d = run("5");
    let n = |k: &str| d[k].as_f64().unwrap_or_else(|| panic!("{k}: {d}"));
    assert!(n("attempts") > n("cycles"), "{d}");
    assert!(n("attempts_per_sec") > n("cycles_per_sec"), "{d}");
}

/// The setup names no server binary with --nodes (null, not ""), says whether the nodes are
/// TLS ones, and the text ratios to the baseline have two decimals, like every other ratio.
#[test]
fn bench_setup_and_baseline_ratios_read_consistently() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let args = [
        "bench",
        "--nodes",
        &nodes,
        "--concurrency",
        "2",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--ttl",
        "10s",
        "--baseline",
    ];
    let mut json = args.to_vec();
    json.push("--json");
    let o = dragonlock(&json);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["setup"]["server_binary"].is_null(), "{v}");
    assert_eq!(v["setup"]["tls"], false, "{v}");

    let o = dragonlock(&args);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("ratio to baseline:"))
        .unwrap_or_else(|| panic!("no ratio line: {text}"));
    let ratios: Vec<&str> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').strip_suffix('x'))
        .collect();
    assert_eq!(ratios.len(), 4, "{line}");
    for r in ratios {
        let decimals = r.split('.').nth(1).map(str::len);
        assert_eq!(decimals, Some(2), "{r} in {line}");
    }
}
