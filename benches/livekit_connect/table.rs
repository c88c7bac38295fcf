//! The benchmark's results and their printing as a Markdown table with device/Python ratios.

use std::time::Duration;

/// Connect timings of one side, in milliseconds from "token in hand", one entry per run.
#[derive(Default)]
pub struct Connects {
    /// Device: `connect()` returned (joined). Python: `Room.connect()` returned.
    pub joined: Vec<f64>,
    /// Device: first Opus packet sent. Python: `publish_track()` returned.
    pub published: Vec<f64>,
    /// First frame of the other side's audio decoded.
    pub first_audio: Vec<f64>,
}

/// What one side cost over the call.
#[derive(Default)]
pub struct CallCost {
    /// CPU seconds (all threads) per wall-clock second of the call.
    pub cpu_per_s: f64,
    /// Peak resident set size, bytes.
    pub peak_rss: u64,
}

/// Whether the call carried audio both ways while it was measured.
#[derive(Default)]
pub struct CallQuality {
    /// Frames the device decoded from the Python peer during the call.
    pub device_decoded: u64,
    /// Frames the device concealed or recovered with FEC during the call.
    pub device_repaired: u64,
    /// One-second reports of the Python peer that heard the device's tone clearly.
    pub python_good_seconds: usize,
    /// All one-second reports of the Python peer about the device.
    pub python_seconds: usize,
}

pub struct Report {
    pub runs: usize,
    pub call: Duration,
    pub device: Connects,
    pub python: Connects,
    pub device_cost: CallCost,
    pub python_cost: CallCost,
    pub quality: CallQuality,
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

fn ms_cell(v: &[f64], runs: usize) -> String {
    let Some(m) = median(v) else {
        return "no sample".into();
    };
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    let missing = if v.len() < runs {
        format!(", {} of {runs} runs", v.len())
    } else {
        String::new()
    };
    format!("{m:.0} ms ({min:.0}–{max:.0}{missing})")
}

fn ratio(device: Option<f64>, python: Option<f64>) -> String {
    match (device, python) {
        (Some(d), Some(p)) if p > 0.0 => format!("{:.2}", d / p),
        _ => "–".into(),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report {
    /// The table (Markdown) with one row per measure; ratios are device / Python.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| measure | device (Rust, str0m) | Python SDK (libwebrtc) | device / Python |\n",
        );
        out.push_str("|---|---|---|---|\n");
        let rows: [(&str, &[f64], &[f64]); 3] = [
            (
                "token in hand → joined (`connect()` returned)",
                &self.device.joined,
                &self.python.joined,
            ),
            (
                "token in hand → publishing (device: first Opus packet sent; Python: `publish_track()` returned)",
                &self.device.published,
                &self.python.published,
            ),
            (
                "token in hand → first remote audio decoded",
                &self.device.first_audio,
                &self.python.first_audio,
            ),
        ];
        for (name, d, p) in rows {
            out.push_str(&format!(
                "| {name} | {} | {} | {} |\n",
                ms_cell(d, self.runs),
                ms_cell(p, self.runs),
                ratio(median(d), median(p))
            ));
        }
        let (d, p) = (&self.device_cost, &self.python_cost);
        out.push_str(&format!(
            "| CPU per call-second ({} s two-party call) | {:.4} s ({:.1} % of a core) | {:.4} s ({:.1} % of a core) | {} |\n",
            self.call.as_secs(),
            d.cpu_per_s,
            d.cpu_per_s * 100.0,
            p.cpu_per_s,
            p.cpu_per_s * 100.0,
            ratio(Some(d.cpu_per_s), Some(p.cpu_per_s))
        ));
        out.push_str(&format!(
            "| peak RSS (whole process) | {:.1} MiB | {:.1} MiB | {} |\n",
            mib(d.peak_rss),
            mib(p.peak_rss),
            ratio(Some(mib(d.peak_rss)), Some(mib(p.peak_rss)))
        ));
        out
    }

    pub fn print(&self) {
        println!(
            "LiveKit client: device vs official Python SDK, same test SFU (veth netns), \
             medians of {} connect(s) per side (min–max):\n",
            self.runs
        );
        print!("{}", self.table());
        let q = &self.quality;
        let repaired = if q.device_decoded > 0 {
            100.0 * q.device_repaired as f64 / q.device_decoded as f64
        } else {
            100.0
        };
        println!(
            "\ncall check: the device decoded {} frames from the Python peer ({repaired:.1} % \
             concealed/FEC); the Python peer heard the device's tone clearly in {} of {} \
             one-second reports.",
            q.device_decoded, q.python_good_seconds, q.python_seconds
        );
    }
}
