//! The command line: settings precedence, unknown keys named, and `dlq` on a data dir.

use std::process::Command;

fn nurture(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_nurture"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        output.status.success(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[test]
fn environment_variables_override_the_file_with_double_underscores() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("n.toml");
    std::fs::write(&file, "[worker]\nconcurrency = 3\nmax_attempts = 9\n").unwrap();

    let (ok, out, err) = nurture(
        &["config", "show", "--config", file.to_str().unwrap()],
        &[("NURTURE__WORKER__CONCURRENCY", "7")],
    );

    assert!(ok, "{err}");
    assert!(out.contains("concurrency = 7"), "{out}");
    assert!(out.contains("max_attempts = 9"), "{out}");
}

#[test]
fn an_unknown_key_is_an_error_that_names_it() {
    let (ok, _, err) = nurture(&["config", "show"], &[("NURTURE__WORKER__CONCURENCY", "7")]);

    assert!(!ok);
    assert!(err.contains("concurency"), "{err}");
}

#[test]
fn a_missing_config_file_is_named() {
    let (ok, _, err) = nurture(&["config", "show", "--config", "/nonexistent/n.toml"], &[]);

    assert!(!ok);
    assert!(err.contains("/nonexistent/n.toml"), "{err}");
}

#[test]
fn dlq_names_a_data_dir_without_a_queue_instead_of_creating_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("typo");

    let (ok, _, err) = nurture(&["dlq", "list", "--data-dir", data.to_str().unwrap()], &[]);

    assert!(!ok);
    assert!(err.contains("no queue.db"), "{err}");
    assert!(!data.exists());
}

#[test]
fn dlq_replay_needs_an_event_id_or_all() {
    let (ok, _, err) = nurture(&["dlq", "replay"], &[]);

    assert!(!ok);
    assert!(err.contains("--all"), "{err}");
}
