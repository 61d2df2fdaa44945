//! The `lattice` binary as an operator uses it: a one-node cluster started
//! with its stderr in a file, values piped into `lattice kv put`, and the
//! node's logs read back (plain text without colour codes, or JSON lines).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

const LATTICE: &str = env!("CARGO_BIN_EXE_lattice");

fn free_addr() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

fn start_node(raft: &str, kv: &str, data: &Path, log: &Path, format: &str) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(LATTICE)
        .args(["--log-format", format, "node", "--id", "1"])
        .args(["--raft-addr", raft, "--kv-addr", kv, "--tick-ms", "10"])
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting lattice node")
}

/// SIGTERM, then wait: the node stops gracefully.
fn stop_node(mut node: Child) -> Result<()> {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
    ensure!(rc == 0, "kill failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = node.try_wait()? {
            ensure!(status.success(), "the node exited with {status}");
            return Ok(());
        }
        if Instant::now() > deadline {
            node.kill()?;
            bail!("the node did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kv(kv_addr: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
    let mut child = Command::new(LATTICE)
        .args(["kv", "--endpoints", kv_addr, "--timeout-secs", "20"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().expect("piped");
    if let Some(bytes) = stdin {
        input.write_all(bytes)?;
    }
    drop(input);
    Ok(child.wait_with_output()?)
}

fn ok_stdout(output: Output) -> Result<Vec<u8>> {
    ensure!(
        output.status.success(),
        "lattice kv failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

#[test]
fn values_come_from_stdin_and_logs_are_plain_text_or_json() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("node-1");
    let (raft, kv_addr) = (free_addr()?, free_addr()?);

    let text_log = dir.path().join("text.log");
    let node = start_node(&raft, &kv_addr, &data, &text_log, "text")?;
    // The largest value a node takes, piped in: every byte kept.
    let big: Vec<u8> = (0..lattice::kv::VALUE_BYTES_MAX)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let put = ok_stdout(kv(&kv_addr, &["put", "big"], Some(&big))?)?;
    assert_eq!(put, b"OK\n");
    let got = ok_stdout(kv(&kv_addr, &["get", "big"], None)?)?;
    assert_eq!(got.len(), big.len() + 1, "the value and a newline");
    assert!(got[..big.len()] == big[..]);
    // Bytes that are not text, and a trailing newline, kept as they are.
    ok_stdout(kv(
        &kv_addr,
        &["put", "raw"],
        Some(b"line one\nline two\n"),
    )?)?;
    let got = ok_stdout(kv(&kv_addr, &["get", "raw"], None)?)?;
    assert_eq!(got, b"line one\nline two\n\n");
    // One byte too many: refused before anything is sent; the old value stays.
    let mut too_big = big.clone();
    too_big.push(b'!');
    let refused = kv(&kv_addr, &["put", "big"], Some(&too_big))?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("larger than 1048576 bytes"), "{stderr}");
    let got = ok_stdout(kv(&kv_addr, &["get", "big"], None)?)?;
    assert_eq!(got.len(), big.len() + 1);
    // A value given on the command line still wins over stdin.
    ok_stdout(kv(&kv_addr, &["put", "small", "v1"], Some(b"ignored"))?)?;
    assert_eq!(ok_stdout(kv(&kv_addr, &["get", "small"], None)?)?, b"v1\n");
    stop_node(node)?;

    let text = std::fs::read_to_string(&text_log)?;
    assert!(text.contains("node started"), "{text}");
    assert!(text.contains("stopped"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file:\n{text}"
    );

    // Restarted with JSON logs: every line is one JSON object with a level
    // and a message, and the data survived.
    let json_log = dir.path().join("json.log");
    let node = start_node(&raft, &kv_addr, &data, &json_log, "json")?;
    assert_eq!(ok_stdout(kv(&kv_addr, &["get", "small"], None)?)?, b"v1\n");
    stop_node(node)?;
    let json = std::fs::read_to_string(&json_log)?;
    let mut messages = Vec::new();
    for line in json.lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
        assert!(object["level"].is_string(), "{line}");
        messages.push(
            object["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    assert!(messages.len() >= 3, "{json}");
    assert!(
        messages.iter().any(|m| m.contains("node started")),
        "{json}"
    );
    assert!(messages.iter().any(|m| m == "stopped"), "{json}");
    Ok(())
}

#[test]
fn wrong_flags_get_clear_errors() -> Result<()> {
    let run = |args: &[&str]| Command::new(LATTICE).args(args).output();
    let bad_format = run(&["--log-format", "xml", "kv", "leader"])?;
    assert_eq!(bad_format.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_format.stderr);
    assert!(stderr.contains("invalid value 'xml'"), "{stderr}");
    assert!(stderr.contains("json"), "the choices are listed: {stderr}");
    let no_key = run(&["kv", "put"])?;
    assert_eq!(no_key.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&no_key.stderr);
    assert!(stderr.contains("<KEY>"), "{stderr}");
    Ok(())
}

fn lattice(args: &[&str]) -> Result<Output> {
    Ok(Command::new(LATTICE)
        .args(args)
        .env_remove("LATTICE_CACERT")
        .env_remove("LATTICE_CERT")
        .env_remove("LATTICE_KEY")
        .stdin(Stdio::null())
        .output()?)
}

/// `lattice cert` makes a CA once (and refuses to replace it), then node and
/// client certificates; a node refuses plaintext beyond loopback without
/// `--insecure`, and a certificate that does not match its key, naming the
/// files.
#[test]
fn certificates_and_the_refusal_of_plaintext_beyond_loopback() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let certs = certs.to_str().context("utf-8 path")?;
    let made = lattice(&["cert", "ca", "--dir", certs])?;
    ensure!(made.status.success(), "{made:?}");
    let again = lattice(&["cert", "ca", "--dir", certs])?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure!(
        !again.status.success() && stderr.contains("--force"),
        "a second CA replaced the first: {stderr}"
    );
    for args in [
        &[
            "cert", "node", "--dir", certs, "--id", "1", "--host", "10.0.0.1",
        ][..],
        &["cert", "node", "--dir", certs, "--id", "2"][..],
        &["cert", "client", "--dir", certs, "--name", "alice"][..],
    ] {
        let made = lattice(args)?;
        ensure!(made.status.success(), "{args:?}: {made:?}");
    }
    for file in ["ca.pem", "node-1.pem", "node-1-key.pem", "client-alice.pem"] {
        ensure!(Path::new(certs).join(file).is_file(), "{file} missing");
    }

    let data = dir.path().join("data");
    let data = data.to_str().context("utf-8 path")?;
    let node = |extra: &[&str]| -> Result<Output> {
        let mut args = vec!["node", "--id", "1", "--data-dir", data];
        args.extend_from_slice(extra);
        lattice(&args)
    };
    let refused = node(&["--raft-addr", "0.0.0.0:0", "--kv-addr", "0.0.0.0:0"])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success()
            && stderr.contains("refusing to listen in plaintext on 0.0.0.0:0")
            && stderr.contains("--insecure"),
        "plaintext on 0.0.0.0 was not refused: {stderr}"
    );
    let node_1 = format!("{certs}/node-1.pem");
    let node_2_key = format!("{certs}/node-2-key.pem");
    let mismatched = node(&[
        "--raft-addr",
        "127.0.0.1:0",
        "--kv-addr",
        "127.0.0.1:0",
        "--cert",
        &node_1,
        "--key",
        &node_2_key,
    ])?;
    let stderr = String::from_utf8_lossy(&mismatched.stderr);
    ensure!(
        !mismatched.status.success()
            && stderr.contains("node-1.pem")
            && stderr.contains("node-2-key.pem"),
        "a certificate with another's key was not refused by name: {stderr}"
    );
    let only_cert = node(&[
        "--raft-addr",
        "127.0.0.1:0",
        "--kv-addr",
        "127.0.0.1:0",
        "--peer-cert",
        &node_1,
    ])?;
    ensure!(
        !only_cert.status.success(),
        "--peer-cert alone was accepted"
    );
    Ok(())
}
