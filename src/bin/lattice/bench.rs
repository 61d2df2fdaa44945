//! `lattice bench`: closed-loop clients against a running cluster. For each
//! client count, every client issues one operation at a time for the
//! duration; throughput and latency percentiles are printed, and written as
//! CSV and as an SVG plot of throughput and p99 latency against clients.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lattice::Client;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Closed-loop puts of fresh values.
    Put,
    /// Linearizable reads (ReadIndex) of preloaded keys.
    Get,
    /// Half puts, half gets.
    Mixed,
}

#[derive(Args)]
pub struct BenchArgs {
    /// KV endpoints of the cluster, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Client counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// gRPC connections per endpoint, shared by the clients (each client is
    /// its own session; the sessions on a connection share its `Batch`
    /// stream, so their operations travel several to a message). Like etcd's
    /// `benchmark --conns`, and with its default. Capped at the client count.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Workloads to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "put,get,mixed")]
    workloads: Vec<Workload>,
    /// Seconds per configuration (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Distinct keys written and read.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// CSV output (appended, with a header if new).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// SVG plot of this run.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Every measured operation of the last configuration, as CSV lines
    /// `completed_unix_ms,latency_us` (to relate latency to what the nodes
    /// logged at the time, e.g. snapshots).
    #[arg(long)]
    latency_log: Option<PathBuf>,
    #[command(flatten)]
    tls: super::ClientTlsArgs,
}

/// One configuration's result.
#[derive(Clone, Debug)]
struct Measurement {
    workload: Workload,
    clients: usize,
    ops: u64,
    errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

impl Measurement {
    fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

fn percentile(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted_us.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted_us[index]) / 1000.0
}

/// Bench clients wait long: a slow answer is a data point, not a failure.
fn new_client(args: &BenchArgs) -> Result<Client> {
    super::client(&args.endpoints, Duration::from_secs(10), args.tls.load()?)
}

async fn measure(args: &BenchArgs, workload: Workload, clients: usize) -> Result<Measurement> {
    let warm_up = Duration::from_secs(1);
    let start = Instant::now() + warm_up;
    let end = start + Duration::from_secs(args.duration_secs);
    let mut tasks = Vec::new();
    let connections = (0..args.conns.min(clients))
        .map(|_| new_client(args))
        .collect::<Result<Vec<_>>>()?;
    for index in 0..clients {
        let mut client = connections[index % connections.len()].new_session();
        let value = vec![b'v'; args.value_bytes];
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::new();
            let mut completed_ms: Vec<u64> = Vec::new();
            let mut errors = 0u64;
            let mut n = index;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = format!("bench-{}", (n >> 33) % keys);
                let is_put = match workload {
                    Workload::Put => true,
                    Workload::Get => false,
                    Workload::Mixed => (n >> 17) & 1 == 0,
                };
                let ok = if is_put {
                    client.put(key.into_bytes(), value.clone()).await.is_ok()
                } else {
                    client.get(key.into_bytes()).await.is_ok()
                };
                let done = Instant::now();
                if began >= start && done <= end {
                    if ok {
                        latencies_us.push(
                            done.duration_since(began).as_micros().min(u32::MAX as u128) as u32,
                        );
                        completed_ms.push(done.duration_since(start).as_millis() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies_us, completed_ms, errors)
        }));
    }
    let start_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .saturating_sub(Instant::now().saturating_duration_since(start).as_millis() as u64);
    let mut all = Vec::new();
    let mut log = String::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, completed, task_errors) = task.await.context("a bench client panicked")?;
        if args.latency_log.is_some() {
            for (latency, at) in latencies.iter().zip(&completed) {
                let _ = writeln!(log, "{},{latency}", start_unix_ms + at);
            }
        }
        all.extend(latencies);
        errors += task_errors;
    }
    if let Some(path) = &args.latency_log {
        std::fs::write(path, log)
            .with_context(|| format!("writing the latency log {}", path.display()))?;
    }
    all.sort_unstable();
    Ok(Measurement {
        workload,
        clients,
        ops: all.len() as u64,
        errors,
        seconds: args.duration_secs as f64,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        p999_ms: percentile(&all, 0.999),
    })
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.clients.is_empty()
        || args.clients.contains(&0)
        || args.duration_secs == 0
        || args.conns == 0
    {
        bail!("--clients must list positive counts; --conns and --duration-secs must be positive");
    }
    // Preload the keys so reads find values: 64 sessions on one connection
    // (a million keys load in seconds, not minutes).
    let loader = new_client(&args)?;
    let loaders = 64.min(args.keys.max(1));
    let mut loading = Vec::new();
    for first in 0..loaders {
        let mut session = loader.new_session();
        let (keys, value_bytes) = (args.keys, args.value_bytes);
        loading.push(tokio::spawn(async move {
            for key in (first..keys).step_by(loaders) {
                session
                    .put(format!("bench-{key}").into_bytes(), vec![b'v'; value_bytes])
                    .await
                    .with_context(|| format!("preloading key bench-{key}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for task in loading {
        task.await.context("a preloading session panicked")??;
    }
    println!(
        "{} s per configuration, {}-byte values, {} keys, {} connection(s) per endpoint",
        args.duration_secs, args.value_bytes, args.keys, args.conns
    );
    println!(
        "{:<8} {:>7} {:>12} {:>9} {:>9} {:>9} {:>7}",
        "workload", "clients", "ops/s", "p50 ms", "p99 ms", "p999 ms", "errors"
    );
    let mut results = Vec::new();
    for &workload in &args.workloads {
        for &clients in &args.clients {
            let m = measure(&args, workload, clients).await?;
            println!(
                "{:<8} {:>7} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
                format!("{workload:?}").to_lowercase(),
                clients,
                m.ops_per_second(),
                m.p50_ms,
                m.p99_ms,
                m.p999_ms,
                m.errors
            );
            results.push(m);
        }
    }
    if let Some(path) = &args.csv {
        let is_new = !path.exists();
        let mut text = String::new();
        if is_new {
            text.push_str("workload,clients,ops_per_second,p50_ms,p99_ms,p999_ms,errors,value_bytes,seconds,conns\n");
        }
        for m in &results {
            let _ = writeln!(
                text,
                "{},{},{:.0},{:.3},{:.3},{:.3},{},{},{},{}",
                format!("{:?}", m.workload).to_lowercase(),
                m.clients,
                m.ops_per_second(),
                m.p50_ms,
                m.p99_ms,
                m.p999_ms,
                m.errors,
                args.value_bytes,
                m.seconds,
                args.conns.min(m.clients)
            );
        }
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("csv: {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&results))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("plot: {}", path.display());
    }
    Ok(())
}

/// What a plot panel shows of a measurement.
type Metric = fn(&Measurement) -> f64;

/// Two panels (throughput, p99 latency) against clients on a log2 axis.
fn svg(results: &[Measurement]) -> String {
    let (width, height, margin) = (420.0f64, 300.0f64, 55.0f64);
    let colors = [
        (Workload::Put, "#d62728"),
        (Workload::Get, "#1f77b4"),
        (Workload::Mixed, "#2ca02c"),
    ];
    let clients_max = results.iter().map(|m| m.clients).max().unwrap_or(1).max(2) as f64;
    let x = |clients: usize| {
        margin + (clients as f64).log2() / clients_max.log2() * (width - 2.0 * margin)
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">",
        width * 2.0,
        height + 30.0
    );
    let panels: [(&str, Metric); 2] = [
        ("throughput (ops/s)", |m| m.ops_per_second()),
        ("p99 latency (ms)", |m| m.p99_ms),
    ];
    for (panel, (title, value)) in panels.iter().enumerate() {
        let left = panel as f64 * width;
        let y_max = results
            .iter()
            .map(value)
            .filter(|v| v.is_finite())
            .fold(1.0f64, f64::max)
            * 1.1;
        let y = |v: f64| height - margin + 20.0 - v / y_max * (height - 2.0 * margin);
        let _ = write!(
            out,
            "<g transform=\"translate({left},0)\"><text x=\"{margin}\" y=\"18\" font-size=\"13\">{title} vs clients</text>\
             <line x1=\"{margin}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#888\"/>\
             <line x1=\"{margin}\" y1=\"{2}\" x2=\"{margin}\" y2=\"{0}\" stroke=\"#888\"/>\
             <text x=\"{margin}\" y=\"{3}\">0</text><text x=\"4\" y=\"{4}\">{5:.0}</text>",
            y(0.0),
            width - margin,
            y(y_max),
            y(0.0) + 14.0,
            y(y_max / 1.1) + 4.0,
            y_max / 1.1
        );
        let mut counts: Vec<usize> = results.iter().map(|m| m.clients).collect();
        counts.sort_unstable();
        counts.dedup();
        for c in counts {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{c}</text>",
                x(c),
                y(0.0) + 14.0
            );
        }
        for (row, (workload, color)) in colors.iter().enumerate() {
            let points: Vec<String> = results
                .iter()
                .filter(|m| m.workload == *workload && value(m).is_finite())
                .map(|m| format!("{:.1},{:.1}", x(m.clients), y(value(m))))
                .collect();
            if points.is_empty() {
                continue;
            }
            let _ = write!(
                out,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\
                 <text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>",
                points.join(" "),
                width - margin - 40.0,
                30.0 + 14.0 * row as f64,
                format!("{workload:?}").to_lowercase()
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>\n");
    out
}
