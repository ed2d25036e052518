//! `bench --plot FILE.svg` and `bench --hdr-out DIR`: the run's histograms as a picture and as
//! HdrHistogram interval logs.
//!
//! The percentile plot is HdrHistogram's: latency against the percentile, the percentile axis
//! logarithmic in 1/(1 − p) (so 90%, 99%, 99.9% are evenly spaced), one line per point or side.
//! Open-loop series are plotted from each cycle's intended start (coordinated omission
//! corrected): that is the latency a caller arriving on schedule sees. A sweep adds a second
//! panel, throughput against p99, one line per side through its points.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::cli::bench::Results;

/// One measurement of a series: where it falls in the run and what it measured.
pub struct Interval {
    pub started: Instant,
    pub length: Duration,
    pub cycle: Histogram<u64>,
    pub corrected: Option<Histogram<u64>>,
}

/// One line of the percentile plot and one interval log: a point, a side, or both.
pub struct Series {
    pub label: String,
    /// What is plotted: the corrected histogram in an open loop, else the cycle's.
    pub plotted: Histogram<u64>,
    pub intervals: Vec<Interval>,
}

impl Series {
    /// Whether it plots an open loop's latency from each cycle's intended start.
    pub fn open_loop(&self) -> bool {
        self.intervals.iter().any(|i| i.corrected.is_some())
    }

    /// A series of one measurement.
    pub fn new(label: &str, open_loop: bool, r: &Results) -> Series {
        let mut s = Series {
            label: label.to_string(),
            plotted: crate::cli::bench::hist(),
            intervals: Vec::new(),
        };
        s.push(open_loop, r);
        s
    }

    /// Adds a measurement (a slice or a run) to the series.
    pub fn push(&mut self, open_loop: bool, r: &Results) {
        let plotted = if open_loop {
            &r.cycle_corrected
        } else {
            &r.cycle
        };
        self.plotted.add(plotted).ok();
        self.intervals.push(Interval {
            started: r.started,
            length: r.elapsed,
            cycle: r.cycle.clone(),
            corrected: open_loop.then(|| r.cycle_corrected.clone()),
        });
    }
}

/// One side's line through a sweep: (label of the point, grants/s, p99 µs) per point; an
/// open-loop point's p99 is from each cycle's intended start.
pub struct SweepLine {
    pub label: String,
    pub points: Vec<(String, f64, f64)>,
    /// Some of its points are open-loop (see `open_loop_caption`).
    pub open_loop: bool,
}

/// What a panel's caption adds for its lines' latency: `None` when every line is closed-loop
/// (the cycle's latency), else whether all or some of them are from the intended start.
fn open_loop_caption(open: impl Iterator<Item = bool>) -> Option<&'static str> {
    let (mut any, mut all) = (false, true);
    for o in open {
        any |= o;
        all &= o;
    }
    match (any, all) {
        (false, _) => None,
        (true, true) => Some("from each cycle's intended start"),
        (true, false) => Some("open-loop lines from each cycle's intended start"),
    }
}

/// The deepest percentile plotted: 99.999%. Past the data's own depth (log10 of the count)
/// the line would only repeat the maximum.
const MAX_NINES: f64 = 5.0;

fn percentile_label(nines: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-nines));
    let s = format!("{p:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// Writes the SVG.
pub fn plot(path: &Path, series: &[Series], sweep: &[SweepLine]) -> io::Result<()> {
    let svg = render(series, sweep).map_err(io::Error::other)?;
    std::fs::write(path, svg)
}

/// The SVG text.
pub fn render(series: &[Series], sweep: &[SweepLine]) -> Result<String, String> {
    let height = if sweep.is_empty() { 600 } else { 1150 };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (1000, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (top, bottom) = if sweep.is_empty() {
            (root.clone(), None)
        } else {
            let (a, b) = root.split_vertically(600);
            (a, Some(b))
        };
        percentiles(&top, series)?;
        if let Some(area) = bottom {
            throughput(&area, sweep)?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

fn percentiles<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    series: &[Series],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let count = series
        .iter()
        .map(|s| s.plotted.len())
        .max()
        .unwrap_or(1)
        .max(10);
    // A whole number of nines, so that the ticks fall on 90%, 99%, 99.9%…
    let nines = (count as f64).log10().ceil().clamp(1.0, MAX_NINES);
    let ms = |v: u64| v as f64 / 1e6;
    let top = series
        .iter()
        .filter(|s| !s.plotted.is_empty())
        .map(|s| ms(s.plotted.max()))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.05;
    let caption = match open_loop_caption(series.iter().map(Series::open_loop)) {
        Some(part) => format!("Lock cycle latency by percentile ({part})"),
        None => "Lock cycle latency by percentile".to_string(),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22).into_font())
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..nines, 0f64..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(nines.ceil() as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in series.iter().enumerate() {
        if s.plotted.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        let steps = (nines * 50.0) as usize;
        let points = (0..=steps).map(|k| {
            let x = nines * k as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-x);
            (x, ms(s.plotted.value_at_quantile(q)))
        });
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    sweep: &[SweepLine],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let all = || sweep.iter().flat_map(|l| l.points.iter());
    let x_top = all().map(|p| p.1).fold(0.0f64, f64::max).max(1.0) * 1.1;
    let y_top = all()
        .map(|p| p.2 / 1000.0)
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let caption = match open_loop_caption(sweep.iter().map(|l| l.open_loop)) {
        Some(part) => format!("Throughput against p99 ({part})"),
        None => "Throughput against p99".to_string(),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22).into_font())
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_top, 0f64..y_top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("grants/s")
        .y_desc("cycle p99 (ms)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, line) in sweep.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = line.points.iter().map(|p| (p.1, p.2 / 1000.0)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(line.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(line.points.iter().map(|p| {
                Text::new(
                    p.0.clone(),
                    (p.1, p.2 / 1000.0),
                    ("sans-serif", 13).into_font(),
                )
            }))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A file name for a series label: letters, digits, `-`, `_` and `.`; the rest becomes `_`.
pub fn file_name(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}.hlog", s.trim_matches('_'))
}

/// Writes `DIR/<series>.hlog` for each series: one interval per measurement, timestamps in
/// seconds from the run's first measured window (the log's `BaseTime`), values in
/// nanoseconds (`MaxValueDivisor` 1e6: the max column reads milliseconds, as Java's
/// `HistogramLogProcessor` expects by default).
pub fn hdr_logs(dir: &Path, series: &[Series]) -> io::Result<()> {
    let first = series
        .iter()
        .flat_map(|s| s.intervals.iter().map(|i| i.started))
        .min();
    let Some(first) = first else { return Ok(()) };
    let base = SystemTime::now() - first.elapsed();
    for s in series {
        let mut file = io::BufWriter::new(std::fs::File::create(dir.join(file_name(&s.label)))?);
        let mut serializer = V2DeflateSerializer::new();
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "dragonlock bench: {}: lock cycle latency in nanoseconds; intervals tagged \
                 'intended' are measured from each cycle's intended start (open loop)",
                s.label
            ))
            .with_start_time(base)
            .with_base_time(base)
            .with_max_value_divisor(1e6)
            .begin_log_with(&mut file, &mut serializer)?;
        for i in &s.intervals {
            let at = i.started.saturating_duration_since(first);
            log.write_histogram(&i.cycle, at, i.length, None)
                .map_err(|e| io::Error::other(format!("{e:?}")))?;
            if let Some(c) = &i.corrected {
                log.write_histogram(c, at, i.length, Tag::new("intended"))
                    .map_err(|e| io::Error::other(format!("{e:?}")))?;
            }
        }
        drop(log);
        io::Write::flush(&mut file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_say_when_latency_is_from_the_intended_start() {
        assert_eq!(open_loop_caption([false, false].into_iter()), None);
        assert_eq!(
            open_loop_caption([true, true].into_iter()),
            Some("from each cycle's intended start")
        );
        assert_eq!(
            open_loop_caption([false, true].into_iter()),
            Some("open-loop lines from each cycle's intended start")
        );
    }

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
    }

    #[test]
    fn file_names() {
        assert_eq!(file_name("c=4 quorum"), "c_4_quorum.hlog");
        assert_eq!(file_name("dragonlock"), "dragonlock.hlog");
    }
}
