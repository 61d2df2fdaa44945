//! `checker`: decides whether a recorded history is linearizable.
//! Exit status: 0 linearizable, 1 not linearizable, 2 unknown, 3 bad input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use checker::generate::{self, Shape};
use checker::history::{self, History};
use checker::search::{check, CheckOptions, Outcome, Verdict};
use checker::{jepsen, report, KvModel};

const USAGE: &str = "\
checker: decide whether a recorded history is linearizable

USAGE:
    checker [--format jsonl|jepsen-etcd|jepsen-kv] [--model kv|register]
            [--html FILE] [--timeout SECONDS] [--search-only] HISTORY
    checker bench [--corpus DIR] [--runs N] [--seeds N] [--write DIR]
    checker generate [--class tame|crashes] [--seed N] [--clients N]
                     [--keys N] [--operations N] [--stale]

OPTIONS:
    --format FORMAT    jsonl (default): Lattice's JSON Lines history;
                       jepsen-etcd: Jepsen etcd register logs;
                       jepsen-kv: Jepsen EDN key-value histories
    --model MODEL      kv: keys start absent, checked per key (default for
                       jsonl); register: one register (default for jepsen-etcd)
    --html FILE        write a self-contained HTML report (timeline, failing window)
    --timeout SECONDS  give up after this long: verdict unknown (default: none)
    --search-only      skip the direct proofs (a stale read of a value written
                       once) and always search: to time the search alone
    -h, --help         this text

bench: times the corpus (all etcd histories, each KV history), a generated
100,000-operation history (100 keys, 20 clients), and the crash class (see
generate): --seeds N histories of 3,000 operations (4 keys, 8 clients) and one
of 100,000 (100 keys, 20 clients), each also with one stale read; prints
parse and search time apart, and peak memory. --write DIR also writes the
crash-class histories there (to time other checkers on the same files).
The corpus defaults to checker/tests/data/porcupine (Porcupine's test data,
kept in the repository with its licence).

generate: writes a generated history (JSON Lines) to standard output,
linearizable by construction; --stale makes one read return an overwritten
value, so it is not. Classes: tame (2% info, all applied); crashes (5% info,
3% never complete, half of those applied, cas mostly on the current value).
Defaults: --class crashes --seed 1 --clients 8 --keys 4 --operations 3000.

EXIT STATUS:
    0 linearizable, 1 not linearizable, 2 unknown (time budget), 3 bad input";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Jsonl,
    JepsenEtcd,
    JepsenKv,
}

struct Args {
    format: Format,
    model: Option<String>,
    html: Option<PathBuf>,
    timeout: Option<Duration>,
    search_only: bool,
    history: PathBuf,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut format = Format::Jsonl;
    let (mut model, mut html, mut timeout, mut history) = (None, None, None, None);
    let mut search_only = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--format" => {
                format = match value("--format")?.as_str() {
                    "jsonl" => Format::Jsonl,
                    "jepsen-etcd" => Format::JepsenEtcd,
                    "jepsen-kv" => Format::JepsenKv,
                    other => {
                        return Err(format!(
                            "unknown format {other:?} (jsonl, jepsen-etcd, jepsen-kv)"
                        ))
                    }
                }
            }
            "--model" => {
                let m = value("--model")?;
                if m != "kv" && m != "register" {
                    return Err(format!("unknown model {m:?} (kv, register)"));
                }
                model = Some(m);
            }
            "--html" => html = Some(PathBuf::from(value("--html")?)),
            "--search-only" => search_only = true,
            "--timeout" => {
                let text = value("--timeout")?;
                let seconds: f64 = text
                    .parse()
                    .map_err(|_| format!("--timeout wants seconds, not {text:?}"))?;
                if !(seconds.is_finite() && seconds > 0.0) {
                    return Err("--timeout must be positive".into());
                }
                timeout = Some(Duration::from_secs_f64(seconds));
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            path => {
                if history.replace(PathBuf::from(path)).is_some() {
                    return Err("give exactly one HISTORY".into());
                }
            }
        }
    }
    let history = history.ok_or("missing HISTORY")?;
    Ok(Args {
        format,
        model,
        html,
        timeout,
        search_only,
        history,
    })
}

fn parse(format: Format, text: &str) -> checker::Result<History> {
    match format {
        Format::Jsonl => history::parse_jsonl(text),
        Format::JepsenEtcd => jepsen::parse_etcd(text),
        Format::JepsenKv => jepsen::parse_kv(text),
    }
}

fn model_for(format: Format, model: Option<&str>) -> KvModel {
    match (model, format) {
        (Some("register"), _) | (None, Format::JepsenEtcd) => KvModel::register(),
        (_, Format::JepsenKv) => KvModel::empty_string_kv(),
        _ => KvModel::kv(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match args.first().map(String::as_str) {
        Some("bench") => return bench(&args[1..]),
        Some("generate") => return generate_command(&args[1..]),
        _ => {}
    }
    let args = match parse_args(&args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("checker: {e}\n\n{USAGE}");
            return ExitCode::from(3);
        }
    };
    let text = match std::fs::read_to_string(&args.history) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("checker: cannot read {}: {e}", args.history.display());
            return ExitCode::from(3);
        }
    };
    let parse_start = Instant::now();
    let history = match parse(args.format, &text) {
        Ok(history) => history,
        Err(e) => {
            eprintln!("checker: {}: {e}", args.history.display());
            return ExitCode::from(3);
        }
    };
    let parse_time = parse_start.elapsed();
    let model = model_for(args.format, args.model.as_deref());
    let options = CheckOptions {
        timeout: args.timeout,
        use_refutations: !args.search_only,
        ..CheckOptions::default()
    };
    let verdict = check(&model, &history.operations, &options);
    println!(
        "history: {} ({:?}, model {})",
        args.history.display(),
        args.format,
        if model.by_key { "kv" } else { "register" }
    );
    // Invocations with no completion line at all (an `info` line has one).
    let never_completed = history
        .operations
        .iter()
        .filter(|o| o.ret_line.is_none())
        .count();
    println!(
        "events {}, operations {} (ok {}, fail {}, info {}, never completed {}), processes {}",
        history.events,
        history.operations.len(),
        history.oks,
        history.fails,
        history.infos,
        never_completed,
        history.processes
    );
    println!(
        "partitions {}, states explored {}, parse {:.1} ms, search {:.1} ms",
        verdict.partitions.len(),
        verdict.states_explored,
        parse_time.as_secs_f64() * 1e3,
        verdict.elapsed.as_secs_f64() * 1e3
    );
    print!("{}", report::text(&model, &history.operations, &verdict));
    if let Some(path) = &args.html {
        let title = format!("Linearizability of {}", args.history.display());
        if let Err(e) = std::fs::write(
            path,
            report::html(&model, &history.operations, &verdict, &title),
        ) {
            eprintln!("checker: cannot write {}: {e}", path.display());
            return ExitCode::from(3);
        }
        println!("report: {}", path.display());
    }
    ExitCode::from(match verdict.outcome {
        Outcome::Linearizable => 0,
        Outcome::NotLinearizable => 1,
        Outcome::Unknown => 2,
    })
}

/// The history `checker generate` writes.
struct GenerateArgs {
    class: String,
    seed: u64,
    clients: u64,
    keys: u64,
    operations: u64,
    stale: bool,
}

fn parse_generate_args(args: &[String]) -> Result<GenerateArgs, String> {
    let mut parsed = GenerateArgs {
        class: "crashes".into(),
        seed: 1,
        clients: 8,
        keys: 4,
        operations: 3000,
        stale: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--stale" {
            parsed.stale = true;
            continue;
        }
        let value = it.next().ok_or(format!("{arg} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("{arg} wants a positive integer, not {value:?}"))
        };
        match arg.as_str() {
            "--class" if value == "tame" || value == "crashes" => parsed.class = value.clone(),
            "--class" => return Err(format!("unknown class {value:?} (tame, crashes)")),
            "--seed" => parsed.seed = number()?,
            "--clients" => parsed.clients = number()?,
            "--keys" => parsed.keys = number()?,
            "--operations" => parsed.operations = number()?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(parsed)
}

fn generated(args: &GenerateArgs) -> Option<Vec<checker::Event>> {
    let shape = if args.class == "tame" {
        Shape::tame(args.clients, args.keys, args.operations)
    } else {
        Shape::with_crashes(args.clients, args.keys, args.operations)
    };
    let mut events = generate::kv_history(args.seed, shape);
    if args.stale {
        generate::make_read_stale(&mut events, args.seed)?;
    }
    Some(events)
}

fn generate_command(args: &[String]) -> ExitCode {
    let args = match parse_generate_args(args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("checker generate: {e}\n\n{USAGE}");
            return ExitCode::from(3);
        }
    };
    let Some(events) = generated(&args) else {
        eprintln!("checker generate: no read in this history can be made stale");
        return ExitCode::from(3);
    };
    use std::io::Write as _;
    if let Err(e) = std::io::stdout()
        .lock()
        .write_all(to_jsonl(&events).as_bytes())
    {
        eprintln!("checker generate: {e}");
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

fn to_jsonl(events: &[checker::Event]) -> String {
    let mut out = String::with_capacity(events.len() * 80);
    for event in events {
        out.push_str(&serde_json::to_string(event).expect("events serialize"));
        out.push('\n');
    }
    out
}

/// The crash class (`Shape::with_crashes`) in `checker bench`: each history
/// parsed from its JSON Lines text and checked `runs` times; prints the
/// medians of parse and search time apart. Returns the verdicts that were
/// wrong (linearizable by construction; `stale`: one stale read, so not).
fn bench_crashes(
    name: &str,
    args: &GenerateArgs,
    runs: usize,
    write_dir: Option<&std::path::Path>,
) -> usize {
    let Some(events) = generated(args) else {
        eprintln!("{name}: no read to make stale");
        return 1;
    };
    let text = to_jsonl(&events);
    if let Some(dir) = write_dir {
        let path = dir.join(format!("{name}.jsonl"));
        if let Err(e) = std::fs::write(&path, &text) {
            eprintln!("checker bench: cannot write {}: {e}", path.display());
            return 1;
        }
    }
    let (mut parse_times, mut search_times, mut states) = (Vec::new(), Vec::new(), 0);
    let mut wrong = 0;
    let expected = if args.stale {
        Outcome::NotLinearizable
    } else {
        Outcome::Linearizable
    };
    for _ in 0..runs {
        let start = Instant::now();
        let history = history::parse_jsonl(&text).expect("generated histories are well formed");
        parse_times.push(start.elapsed().as_secs_f64());
        let (verdict, seconds) = timed_check(&KvModel::kv(), &history);
        search_times.push(seconds);
        states = verdict.states_explored;
        if verdict.outcome != expected {
            wrong += 1;
            eprintln!("MISMATCH {name}: {:?}", verdict.outcome);
        }
    }
    // A stale read is proven without a search; time the search too.
    let mut search_only = String::new();
    if args.stale {
        let history = history::parse_jsonl(&text).expect("generated histories are well formed");
        let options = CheckOptions {
            use_refutations: false,
            ..CheckOptions::default()
        };
        let mut times = Vec::new();
        for _ in 0..runs {
            let (verdict, seconds) = timed_check_with(&KvModel::kv(), &history, &options);
            times.push(seconds);
            if verdict.outcome != expected {
                wrong += 1;
                eprintln!("MISMATCH {name} (search only): {:?}", verdict.outcome);
            }
        }
        search_only = format!("; search only {:.4} s", median(times));
    }
    println!(
        "{name}: {} operations, {} keys, {} clients, {:?} expected: parse {:.4} s, search {:.4} s{search_only} (medians of {runs}), {states} states",
        args.operations,
        args.keys,
        args.clients,
        expected,
        median(parse_times),
        median(search_times),
    );
    wrong
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_memory_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn timed_check(model: &KvModel, history: &History) -> (Verdict, f64) {
    timed_check_with(model, history, &CheckOptions::default())
}

fn timed_check_with(model: &KvModel, history: &History, options: &CheckOptions) -> (Verdict, f64) {
    let start = Instant::now();
    let verdict = check(model, &history.operations, options);
    (verdict, start.elapsed().as_secs_f64())
}

fn bench(args: &[String]) -> ExitCode {
    let mut corpus = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/porcupine"));
    let mut runs = 5usize;
    let mut crash_seeds = 5u64;
    let mut write_dir: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next()) {
            ("--corpus", Some(dir)) => corpus = PathBuf::from(dir),
            ("--write", Some(dir)) => write_dir = Some(PathBuf::from(dir)),
            ("--seeds", Some(n)) if n.parse::<u64>().is_ok_and(|n| n > 0) => {
                crash_seeds = n.parse().expect("checked")
            }
            ("--runs", Some(n)) if n.parse::<usize>().is_ok_and(|n| n > 0) => {
                runs = n.parse().expect("checked")
            }
            _ => {
                eprintln!("checker bench: bad arguments\n\n{USAGE}");
                return ExitCode::from(3);
            }
        }
    }
    let expected = match std::fs::read_to_string(corpus.join("expected.tsv")) {
        Ok(text) => text,
        Err(e) => {
            eprintln!(
                "checker bench: cannot read {}: {e}",
                corpus.join("expected.tsv").display()
            );
            return ExitCode::from(3);
        }
    };
    let mut etcd = Vec::new();
    let mut kv = Vec::new();
    for line in expected.lines().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        let (Some(file), Some(verdict)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        let path = corpus.join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let is_linearizable = *verdict == "true";
        if file.starts_with("jepsen/") {
            match jepsen::parse_etcd(&text) {
                Ok(h) => etcd.push((file.to_string(), h, is_linearizable)),
                Err(e) => eprintln!("{file}: {e}"),
            }
        } else {
            match jepsen::parse_kv(&text) {
                Ok(h) => kv.push((file.to_string(), h, is_linearizable)),
                Err(e) => eprintln!("{file}: {e}"),
            }
        }
    }
    let mut mismatches = 0;
    let register = KvModel::register();
    let mut etcd_totals = Vec::new();
    let states: u64 = etcd
        .iter()
        .map(|(_, h, _)| timed_check(&register, h).0.states_explored)
        .sum();
    for _ in 0..runs {
        let mut total = 0.0;
        for (file, history, is_linearizable) in &etcd {
            let (verdict, seconds) = timed_check(&register, history);
            total += seconds;
            if (verdict.outcome == Outcome::Linearizable) != *is_linearizable {
                mismatches += 1;
                eprintln!("MISMATCH {file}: {:?}", verdict.outcome);
            }
        }
        etcd_totals.push(total);
    }
    println!(
        "etcd register histories: {} files, {states} states, median total {:.4} s over {runs} runs (min {:.4} s)",
        etcd.len(),
        median(etcd_totals.clone()),
        etcd_totals.iter().copied().fold(f64::INFINITY, f64::min)
    );
    let kv_model = KvModel::empty_string_kv();
    for (file, history, is_linearizable) in &kv {
        let mut times = Vec::new();
        for _ in 0..runs {
            let (verdict, seconds) = timed_check(&kv_model, history);
            if (verdict.outcome == Outcome::Linearizable) != *is_linearizable {
                mismatches += 1;
                eprintln!("MISMATCH {file}: {:?}", verdict.outcome);
            }
            times.push(seconds);
        }
        println!(
            "{file}: {} operations, median {:.4} s over {runs} runs",
            history.operations.len(),
            median(times)
        );
    }
    let shape = Shape::tame(20, 100, 100_000);
    let events = generate::kv_history(1, shape);
    let numbered: Vec<(usize, checker::Event)> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i + 1, e))
        .collect();
    let history = history::from_events(numbered).expect("generated histories are well formed");
    let mut times = Vec::new();
    for _ in 0..runs {
        let (verdict, seconds) = timed_check(&KvModel::kv(), &history);
        if verdict.outcome != Outcome::Linearizable {
            mismatches += 1;
            eprintln!("MISMATCH generated: {:?}", verdict.outcome);
            eprint!(
                "{}",
                report::text(&KvModel::kv(), &history.operations, &verdict)
            );
        }
        times.push(seconds);
    }
    println!(
        "generated: {} operations, 100 keys, 20 clients: median {:.4} s over {runs} runs",
        history.operations.len(),
        median(times)
    );
    for seed in 1..=crash_seeds {
        for stale in [false, true] {
            let args = GenerateArgs {
                class: "crashes".into(),
                seed,
                clients: 8,
                keys: 4,
                operations: 3000,
                stale,
            };
            let name = format!("crashes-3k-{seed}{}", if stale { "-stale" } else { "" });
            mismatches += bench_crashes(&name, &args, runs, write_dir.as_deref());
        }
    }
    for stale in [false, true] {
        let args = GenerateArgs {
            class: "crashes".into(),
            seed: 1,
            clients: 20,
            keys: 100,
            operations: 100_000,
            stale,
        };
        let name = format!("crashes-100k-1{}", if stale { "-stale" } else { "" });
        mismatches += bench_crashes(&name, &args, runs, write_dir.as_deref());
    }
    println!("peak memory: {:.1} MiB", peak_memory_mib());
    if mismatches > 0 {
        eprintln!("{mismatches} verdict(s) disagree with the expected ones");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
