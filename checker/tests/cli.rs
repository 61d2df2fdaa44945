//! The `checker` binary: exit status by verdict, reports, bad input.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_checker"))
        .args(args)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().expect("exit code"), text)
}

fn corpus(file: &str) -> String {
    format!("{}/tests/data/porcupine/{file}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn exit_status_follows_the_verdict() {
    let dir = tempfile_dir();
    let html = dir.join("report.html");
    let (code, text) = run(&[
        "--format",
        "jepsen-kv",
        "--html",
        html.to_str().expect("utf8"),
        &corpus("kv/c10-bad.txt"),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("NOT LINEARIZABLE") && text.contains("events 810"),
        "{text}"
    );
    let page = std::fs::read_to_string(&html).expect("report written");
    assert!(page.contains("<svg") && page.contains("class=\"explain\"") && page.contains("window"));

    let (code, text) = run(&["--format", "jepsen-etcd", &corpus("jepsen/etcd_002.log")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("verdict: LINEARIZABLE"));

    let good = dir.join("good.jsonl");
    std::fs::write(&good, "{\"process\":0,\"type\":\"invoke\",\"f\":\"put\",\"key\":\"a\",\"value\":\"1\"}\n{\"process\":0,\"type\":\"ok\",\"f\":\"put\",\"key\":\"a\",\"value\":\"1\"}\n").expect("write");
    assert_eq!(run(&[good.to_str().expect("utf8")]).0, 0);

    // Unknown outcomes: one `info` line and one invocation never completed.
    let unknown = dir.join("unknown.jsonl");
    std::fs::write(
        &unknown,
        "{\"process\":0,\"type\":\"invoke\",\"f\":\"put\",\"key\":\"a\",\"value\":\"1\"}\n\
         {\"process\":0,\"type\":\"info\",\"f\":\"put\",\"key\":\"a\"}\n\
         {\"process\":1,\"type\":\"invoke\",\"f\":\"get\",\"key\":\"a\"}\n",
    )
    .expect("write");
    let (code, text) = run(&[unknown.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("info 1, never completed 1"), "{text}");

    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"process\":0,\"type\":\"invoke\"}\n").expect("write");
    let (code, text) = run(&[bad.to_str().expect("utf8")]);
    assert_eq!(code, 3);
    assert!(text.contains("line 1"), "{text}");
    assert_eq!(
        run(&["--format", "yaml", good.to_str().expect("utf8")]).0,
        3
    );
    assert_eq!(run(&["/nonexistent/history"]).0, 3);
    let (code, text) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(text.contains("EXIT STATUS"));
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("checker-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
