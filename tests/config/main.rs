//! Every `config/examples/<kind>.toml` loads and validates, with its token taken from the
//! environment variable it names; `config check` prints it as TOML with secrets redacted.

use std::{path::PathBuf, process::Command};

use invite_worker::{config::Settings, domain::BackendKind};

const TOKEN: &str = "example-token-7f3c2b";

fn example(kind: BackendKind) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples")
        .join(format!("{}.toml", kind.as_str()))
}

/// The `token_env` variables an example refers to, each set to [`TOKEN`].
fn token_env(path: &PathBuf) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).expect("example exists");
    let doc: toml::Table = text.parse().expect("example is TOML");
    let backends = doc.get("backends").and_then(|b| b.as_table());
    backends
        .into_iter()
        .flat_map(|b| b.values())
        .filter_map(|b| b.get("token_env").and_then(|v| v.as_str()))
        .map(|var| (var.to_owned(), TOKEN.to_owned()))
        .collect()
}

#[test]
fn every_backend_kind_has_an_example_that_loads_and_validates() {
    for kind in BackendKind::ALL {
        let path = example(kind);
        let env = token_env(&path);
        let settings = Settings::load_from(Some(&path), env.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let default = &settings.backends[&settings.default_backend];
        assert_eq!(
            default.kind(),
            kind,
            "{}: default backend's kind",
            path.display()
        );
        for (name, b) in &settings.backends {
            if b.kind().needs_token() {
                let token = b.secret().map(|s| s.expose());
                assert_eq!(token, Some(TOKEN), "{}: backends.{name}", path.display());
            }
        }
        if kind.needs_token() {
            assert!(!env.is_empty(), "{}: uses token_env", path.display());
            let e = Settings::load_from(Some(&path), Vec::new())
                .expect_err("a missing token is an error")
                .to_string();
            assert!(e.contains("token_env"), "{}: {e}", path.display());
        }
    }
}

#[test]
fn config_check_prints_the_effective_settings_as_toml_without_secrets() {
    let path = example(BackendKind::Wawp);
    let out = Command::new(env!("CARGO_BIN_EXE_invite-worker"))
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("WAWP_ACCESS_TOKEN", TOKEN)
        .env(
            "INVITE_WORKER__AMQP__URL",
            "amqp://user:amqp-pass-91@mq:5672/%2f",
        )
        .output()
        .expect("run config check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains(TOKEN) && !stdout.contains("amqp-pass-91"),
        "{stdout}"
    );
    let doc: toml::Table = stdout.parse().unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    assert_eq!(
        doc["backends"]["wawp"]["token"].as_str(),
        Some("[redacted]")
    );
    assert_eq!(doc["backends"]["wawp"]["kind"].as_str(), Some("wawp"));
    assert_eq!(
        doc["amqp"]["url"].as_str(),
        Some("amqp://user:[redacted]@mq:5672/%2f")
    );
    assert_eq!(doc["default_backend"].as_str(), Some("wawp"));
}

#[test]
fn config_check_names_the_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[retry]\nmax_attempts = 0\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_invite-worker"))
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .expect("run config check");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("retry.max_attempts"), "{stderr}");
}

#[test]
fn a_config_path_that_cannot_be_read_is_named_on_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_invite-worker"))
        .args(["config", "check", "--config"])
        .arg(dir.path())
        .output()
        .expect("run config check");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
}
