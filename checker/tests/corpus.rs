//! The external corpus (Porcupine's test data, `tests/data/porcupine`): every
//! history parses to exactly the counts `expected.tsv` lists, and every verdict
//! agrees with the expected one.

use std::path::PathBuf;

use checker::history::History;
use checker::search::{check, CheckOptions, Outcome};
use checker::{jepsen, KvModel};

fn corpus() -> PathBuf {
    let dir = std::env::var_os("LATTICE_PORCUPINE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/porcupine"));
    assert!(
        dir.join("expected.tsv").exists(),
        "the corpus is missing at {} (set LATTICE_PORCUPINE_DATA)",
        dir.display()
    );
    dir
}

struct Expected {
    file: String,
    is_linearizable: bool,
    invokes: usize,
    ok: usize,
    fail: usize,
    info: usize,
    processes: usize,
}

fn expected() -> Vec<Expected> {
    let text = std::fs::read_to_string(corpus().join("expected.tsv")).expect("expected.tsv");
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 7, "expected.tsv line {line:?}");
            let n = |i: usize| f[i].parse::<usize>().expect("a count");
            Expected {
                file: f[0].to_string(),
                is_linearizable: f[1] == "true",
                invokes: n(2),
                ok: n(3),
                fail: n(4),
                info: n(5),
                processes: n(6),
            }
        })
        .collect()
}

fn parse(file: &str) -> History {
    let text = std::fs::read_to_string(corpus().join(file)).expect("history file");
    let parsed = if file.starts_with("jepsen/") {
        jepsen::parse_etcd(&text)
    } else {
        jepsen::parse_kv(&text)
    };
    parsed.unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn every_history_parses_to_the_listed_counts_and_gets_the_listed_verdict() {
    let all = expected();
    assert_eq!(all.len(), 108, "108 histories are listed");
    let (mut linearizable, mut not) = (0, 0);
    for e in &all {
        let history = parse(&e.file);
        assert_eq!(history.invokes, e.invokes, "{}: invokes", e.file);
        assert_eq!(history.oks, e.ok, "{}: ok", e.file);
        assert_eq!(history.fails, e.fail, "{}: fail", e.file);
        assert_eq!(history.infos, e.info, "{}: info", e.file);
        assert_eq!(history.processes, e.processes, "{}: processes", e.file);
        assert_eq!(
            history.events,
            e.invokes + e.ok + e.fail + e.info,
            "{}: every line is an event",
            e.file
        );
        assert_eq!(
            history.operations.len(),
            e.invokes,
            "{}: one operation per invocation",
            e.file
        );
        let model = if e.file.starts_with("jepsen/") {
            KvModel::register()
        } else {
            KvModel::empty_string_kv()
        };
        let verdict = check(&model, &history.operations, &CheckOptions::default());
        let expected = if e.is_linearizable {
            Outcome::Linearizable
        } else {
            Outcome::NotLinearizable
        };
        assert_eq!(verdict.outcome, expected, "{}", e.file);
        if e.is_linearizable {
            linearizable += 1;
        } else {
            not += 1;
            let failure = verdict
                .failure()
                .and_then(|p| p.failure.as_ref())
                .expect("a failure is explained");
            assert!(
                !failure.window.is_empty(),
                "{}: the window names operations",
                e.file
            );
            assert_eq!(failure.window.len(), failure.reasons.len());
        }
    }
    assert_eq!((linearizable, not), (26, 82));
}

#[test]
fn a_register_check_without_partitions_reports_unknown_when_out_of_time() {
    // The 50-client KV history checked as one register is far too hard for
    // 50 ms: the verdict must be unknown, never "linearizable".
    let history = parse("kv/c50-ok.txt");
    let model = KvModel {
        initial: Some(String::new()),
        by_key: false,
    };
    let options = CheckOptions {
        timeout: Some(std::time::Duration::from_millis(50)),
        ..CheckOptions::default()
    };
    let verdict = check(&model, &history.operations, &options);
    assert_eq!(verdict.outcome, Outcome::Unknown);
}
