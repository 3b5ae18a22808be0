//! Loading, overriding, validating and dumping settings: every problem names its key.

use super::*;
use std::io::Write;

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load_from(Some(f.path()), env)
}

#[test]
fn defaults_load_with_simulator_backend() {
    let s = load("", &[]).unwrap();
    assert_eq!(s.default_backend, "sim");
    assert_eq!(s.amqp.prefetch, 64);
    assert_eq!(s.rotation.link_ttl, Duration::from_secs(7 * 86400));
    let sim = &s.backends["sim"];
    assert!(
        !sim.read_before_reset,
        "one request per revoke of a tracked group"
    );
    let s = load(
        "[backends.x]\nkind = \"waha\"\nbase_url = \"http://h\"\ntoken = \"t\"\n",
        &[],
    );
    assert!(!s.unwrap().backends["x"].read_before_reset);
}

#[test]
fn durations_and_env_overrides_apply() {
    let s = load(
        "[rotation]\nlead = \"500ms\"\n[amqp]\nprefetch = 8\n",
        &[
            ("INVITE_WORKER__AMQP__PREFETCH", "16"),
            ("INVITE_WORKER__ROTATION__LINK_TTL", "2d"),
        ],
    )
    .unwrap();
    assert_eq!(s.rotation.lead, Duration::from_millis(500));
    assert_eq!(s.amqp.prefetch, 16);
    assert_eq!(s.rotation.link_ttl, Duration::from_secs(2 * 86400));
}

#[test]
fn unknown_key_is_named() {
    let e = load("[amqp]\nprefech = 8\n", &[]).unwrap_err().to_string();
    assert!(e.contains("prefech"), "{e}");
}

#[test]
fn bad_duration_is_named() {
    let e = load("[retry]\ninitial_delay = \"soon\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("retry.initial_delay"), "{e}");
}

#[test]
fn values_the_worker_could_not_use_are_named() {
    let long = "n".repeat(65);
    for (toml, key) in [
        ("[http]\nlisten = \"notanaddr\"\n", "http.listen"),
        ("[http]\nlisten = \"127.0.0.1:99999\"\n", "http.listen"),
        ("[rotation]\nlead = \"7d\"\n", "rotation.lead"),
        (
            "[rotation]\nlead = \"2d\"\nlink_ttl = \"1d\"\n",
            "rotation.lead",
        ),
        (
            &format!("[worker]\ninstance_id = \"{}\"\n", "i".repeat(129)),
            "worker.instance_id",
        ),
        (
            &format!("[amqp]\nname_prefix = \"{}\"\n", "p".repeat(129)),
            "amqp.name_prefix",
        ),
        (
            &format!("[backends.{long}]\nkind = \"simulator\"\n"),
            &format!("backends.{long}"),
        ),
    ] {
        let e = load(toml, &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{toml}: {e}");
    }
    let ok = "[http]\nlisten = \"\"\n[rotation]\nlead = \"1d\"\nlink_ttl = \"2d\"\n";
    assert!(load(ok, &[]).is_ok());
    let name = "n".repeat(64);
    assert!(load(&format!("[backends.{name}]\nkind = \"simulator\"\n"), &[]).is_ok());
}

#[test]
fn retention_keeps_commands_30_days_and_history_400_and_at_least_a_day() {
    let s = load("", &[]).unwrap();
    assert_eq!(s.retention.commands, Duration::from_secs(30 * 86400));
    assert_eq!(s.retention.history, Duration::from_secs(400 * 86400));
    let s = load(
        "[retention]\ncommands = \"90d\"\n",
        &[("INVITE_WORKER__RETENTION__HISTORY", "2y")],
    )
    .unwrap();
    assert_eq!(s.retention.commands, Duration::from_secs(90 * 86400));
    assert!(s.retention.history > Duration::from_secs(700 * 86400));
    for (toml, key) in [
        ("[retention]\ncommands = \"12h\"\n", "retention.commands"),
        ("[retention]\nhistory = \"1h\"\n", "retention.history"),
        ("[retention]\nhistory = \"forever\"\n", "retention.history"),
    ] {
        let e = load(toml, &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{toml}: {e}");
    }
}

#[test]
fn an_otlp_endpoint_is_off_by_default_and_must_be_an_http_url() {
    let s = load("", &[]).unwrap();
    assert_eq!(s.telemetry.traces_url(), None);
    for bad in ["localhost:4318", "ftp://h", "http://", "grpc://h:4317"] {
        let toml = format!("[telemetry]\notlp_endpoint = \"{bad}\"\n");
        let e = load(&toml, &[]).unwrap_err().to_string();
        assert!(e.contains("telemetry.otlp_endpoint"), "{bad}: {e}");
    }
    let env = [(
        "INVITE_WORKER__TELEMETRY__OTLP_ENDPOINT",
        "http://127.0.0.1:4318/",
    )];
    let s = load("", &env).unwrap();
    let url = s.telemetry.traces_url();
    assert_eq!(url.as_deref(), Some("http://127.0.0.1:4318/v1/traces"));
}

#[test]
fn unknown_kind_is_named() {
    let e = load("[backends.x]\nkind = \"telegram\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("backends.x.kind"), "{e}");
}

#[test]
fn missing_secret_is_named() {
    let e = load(
        "[backends.acme]\nkind = \"wasend\"\nbase_url = \"https://a.example\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("backends.acme.token"), "{e}");
    let e = load(
        "[backends.acme]\nkind = \"wasend\"\nbase_url = \"https://a.example\"\ntoken_env = \"NOPE_TOKEN\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("backends.acme.token_env") && e.contains("NOPE_TOKEN"),
        "{e}"
    );
}

#[test]
fn token_from_env_var_and_override() {
    let s = load(
        "[backends.acme]\nkind = \"waha\"\nbase_url = \"http://h\"\ntoken_env = \"ACME_T\"\n",
        &[("ACME_T", "s3cret")],
    )
    .unwrap();
    assert_eq!(s.backends["acme"].secret().unwrap().expose(), "s3cret");
    let s = load(
        "[backends.acme]\nkind = \"waha\"\nbase_url = \"http://h\"\n",
        &[("INVITE_WORKER__BACKENDS__ACME__TOKEN", "t0k")],
    )
    .unwrap();
    assert_eq!(s.backends["acme"].secret().unwrap().expose(), "t0k");
}

#[test]
fn secrets_are_redacted_in_debug_and_dump() {
    let s = load(
        "[backends.acme]\nkind = \"waha\"\nbase_url = \"http://h\"\ntoken = \"hunter2\"\n",
        &[],
    )
    .unwrap();
    assert!(!format!("{s:?}").contains("hunter2"));
    let dump = s.redacted_toml();
    assert!(!dump.contains("hunter2"), "{dump}");
    assert!(dump.contains("token = \"[redacted]\""), "{dump}");
    // The dump is real TOML that reads back as settings.
    let back: Settings = toml::from_str(&dump).expect(&dump);
    assert_eq!(back.backends["acme"].kind(), BackendKind::Waha);
    assert_eq!(back.rotation.lead, s.rotation.lead);
    assert_eq!(
        back.amqp.url.expose(),
        ["amqp://guest:[redacted]@127.0.0.1:5672/%2f"]
    );
}

#[test]
fn amqp_url_may_list_the_nodes_of_a_cluster() {
    let s = load(
        "[amqp]\nurl = [\"amqp://u:p1@a:5672/%2f\", \"amqps://u:p2@b:5671/%2f\"]\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        s.amqp.url.expose(),
        ["amqp://u:p1@a:5672/%2f", "amqps://u:p2@b:5671/%2f"]
    );
    let dump = s.redacted_toml();
    assert!(!dump.contains("p1") && !dump.contains("p2"), "{dump}");
    let back: Settings = toml::from_str(&dump).expect(&dump);
    assert_eq!(back.amqp.url.len(), 2);

    let s = load(
        "",
        &[(
            "INVITE_WORKER__AMQP__URL",
            "amqp://a:5672/%2f,amqp://b:5672/%2f,amqp://c:5672/%2f",
        )],
    )
    .unwrap();
    assert_eq!(s.amqp.url.len(), 3);
    assert_eq!(s.amqp.url.expose()[2], "amqp://c:5672/%2f");
}

#[test]
fn an_empty_or_bad_url_list_is_named() {
    let e = load("[amqp]\nurl = []\n", &[]).unwrap_err().to_string();
    assert!(e.contains("amqp.url") && e.contains("at least one"), "{e}");
    let e = load("[amqp]\nurl = [\"amqp://a/%2f\", \"http://b/\"]\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("amqp.url[1]"), "{e}");
    let e = load("[amqp]\nurl = \"nats://a\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("amqp.url:"), "{e}");
}

#[test]
fn the_delivery_limit_defaults_to_20_and_0_turns_it_off() {
    assert_eq!(load("", &[]).unwrap().amqp.delivery_limit, 20);
    let s = load("", &[("INVITE_WORKER__AMQP__DELIVERY_LIMIT", "0")]).unwrap();
    assert_eq!(s.amqp.delivery_limit, 0);
}

#[test]
fn connection_urls_lose_only_their_password() {
    for (url, shown) in [
        (
            "postgres://u:p4ss@db:5432/iw",
            "postgres://u:[redacted]@db:5432/iw",
        ),
        (
            "postgres://u@db/iw?sslmode=require",
            "postgres://u@db/iw?sslmode=require",
        ),
        (
            "postgres://db/iw?user=u&password=p4ss",
            "postgres://db/iw?[redacted]",
        ),
        ("amqps://u:p:4ss@mq/%2f", "amqps://u:[redacted]@mq/%2f"),
        (
            "sqlite://invite-worker.db?mode=rwc",
            "sqlite://invite-worker.db?mode=rwc",
        ),
    ] {
        assert_eq!(redact_url(url), shown);
    }
}

#[test]
fn rate_limits_parse() {
    assert_eq!(RateLimit::parse("5/s").unwrap().count, 5);
    assert_eq!(
        RateLimit::parse("300/m").unwrap().period,
        Duration::from_secs(60)
    );
    assert!(RateLimit::parse("5/h").is_err());
    assert!(RateLimit::parse("0/s").is_err());
}

#[test]
fn each_kind_takes_only_its_own_keys() {
    let waha = "kind = \"waha\"\nbase_url = \"http://h\"\ntoken = \"t\"\n";
    for (block, key) in [
        (
            format!("{waha}api_version = \"v23.0\"\n"),
            "backends.x.api_version",
        ),
        (
            format!("{waha}endpoints = \"invite-code\"\n"),
            "backends.x.endpoints",
        ),
        (format!("{waha}latency = \"5ms\"\n"), "backends.x.latency"),
        (
            "kind = \"wasend\"\nbase_url = \"http://h\"\ntoken = \"t\"\nendpoints = \"x\"\n".into(),
            "backends.x.endpoints",
        ),
        (
            "kind = \"meta_cloud\"\ntoken = \"t\"\napi_version = \"23\"\n".into(),
            "backends.x.api_version",
        ),
        (
            "kind = \"simulator\"\ntoken = \"t\"\n".into(),
            "backends.x.token",
        ),
        (
            "kind = \"simulator\"\nbase_url = \"http://h\"\n".into(),
            "backends.x.base_url",
        ),
        (
            "kind = \"simulator\"\ntoken_env = \"T\"\n".into(),
            "backends.x.token_env",
        ),
        (
            "kind = \"simulator\"\nconnect_timeout = \"1s\"\n".into(),
            "backends.x.connect_timeout",
        ),
    ] {
        let e = load(&format!("[backends.x]\n{block}"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{block}: {e}");
    }
    let s = load(
        "[backends.m]\nkind = \"meta_cloud\"\ntoken = \"t\"\napi_version = \"v21.0\"\n\
         [backends.w]\nkind = \"wasend\"\nbase_url = \"http://h\"\ntoken = \"t\"\n\
         endpoints = \"invite-code\"\n\
         [backends.s]\nkind = \"simulator\"\nlatency = \"5ms\"\ntimeout = \"1s\"\n",
        &[],
    )
    .unwrap();
    assert!(matches!(
        &s.backends["m"].provider,
        Provider::MetaCloud { api_version: Some(v), .. } if v == "v21.0"
    ));
    assert!(matches!(
        s.backends["w"].provider,
        Provider::Wasend {
            endpoints: Some(WasendEndpoints::InviteCode),
            ..
        }
    ));
    assert_eq!(s.backends["s"].latency(), Some(Duration::from_millis(5)));
    assert_eq!(s.backends["s"].timeout, Duration::from_secs(1));
}

#[test]
fn an_unknown_or_misplaced_key_is_named_from_the_file_or_the_environment() {
    let waha = "[backends.acme]\nkind = \"waha\"\nbase_url = \"http://h\"\ntoken = \"t\"\n";
    let e = load(&format!("{waha}colour = \"red\"\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("backends.acme") && e.contains("colour"), "{e}");
    let e = load(waha, &[("INVITE_WORKER__BACKENDS__ACME__LATENCY", "5ms")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("backends.acme.latency"), "{e}");
}

#[test]
fn the_dump_of_every_kind_reads_back_as_the_same_settings() {
    let s = load(
        "[backends.m]\nkind = \"meta_cloud\"\ntoken = \"t\"\napi_version = \"v21.0\"\n\
         [backends.w]\nkind = \"wasend\"\nbase_url = \"http://h\"\ntoken = \"t\"\n\
         endpoints = \"invite-code\"\nconnect_timeout = \"2s\"\n\
         [backends.s]\nkind = \"simulator\"\nlatency = \"5ms\"\n",
        &[],
    )
    .unwrap();
    let dump = s.redacted_toml();
    let back: Settings = toml::from_str(&dump).expect(&dump);
    for name in ["m", "w", "s", "sim"] {
        let (a, b) = (&s.backends[name], &back.backends[name]);
        assert_eq!(a.kind(), b.kind(), "{name}");
        assert_eq!(a.timeout, b.timeout, "{name}");
        assert_eq!(
            a.http().map(|h| (&h.base_url, h.connect_timeout)),
            b.http().map(|h| (&h.base_url, h.connect_timeout)),
            "{name}"
        );
    }
    assert!(matches!(
        back.backends["w"].provider,
        Provider::Wasend {
            endpoints: Some(WasendEndpoints::InviteCode),
            ..
        }
    ));
    assert_eq!(back.backends["s"].latency(), Some(Duration::from_millis(5)));
    assert!(
        !dump.contains("connect_timeout = \"5s\"\nlatency"),
        "the simulator has no connect_timeout: {dump}"
    );
}

#[test]
fn the_admin_listener_is_off_by_default_and_its_tokens_are_checked() {
    let s = load("", &[]).unwrap();
    assert!(s.admin.listen.is_empty() && s.admin.tokens.is_empty());
    let token = |name: &str, value: &str| {
        format!("[[admin.tokens]]\nname = \"{name}\"\nrole = \"viewer\"\ntoken = \"{value}\"\n")
    };
    let on = "[admin]\nlisten = \"127.0.0.1:9465\"\n";
    let long = "t".repeat(16);
    for (toml, key) in [
        (on.to_owned(), "admin.tokens"),
        ("[admin]\nlisten = \"nowhere\"\n".to_owned(), "admin.listen"),
        (
            format!("{on}{}", token("on call", &long)),
            "admin.tokens[0].name",
        ),
        (
            format!("{on}{}", token("oncall", "short")),
            "admin.tokens[0].token",
        ),
        (
            format!("{on}{}{}", token("a", &long), token("a", &"u".repeat(16))),
            "admin.tokens[1].name",
        ),
        (
            format!("{on}{}{}", token("a", &long), token("b", &long)),
            "admin.tokens[1].token",
        ),
        (
            format!("{on}[[admin.tokens]]\nname = \"a\"\nrole = \"root\"\ntoken = \"{long}\"\n"),
            "admin.tokens",
        ),
        (
            format!(
                "{on}[[admin.tokens]]\nname = \"a\"\nrole = \"viewer\"\ntoken_env = \"NOPE\"\n"
            ),
            "admin.tokens[0].token_env",
        ),
    ] {
        let e = load(&toml, &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{toml}: {e}");
    }
    let toml = format!(
        "{on}[[admin.tokens]]\nname = \"oncall\"\nrole = \"operator\"\ntoken_env = \"ADMIN_T\"\n"
    );
    let s = load(&toml, &[("ADMIN_T", "a-token-of-24-characters")]).unwrap();
    let t = &s.admin.tokens[0];
    assert_eq!((t.name.as_str(), t.role), ("oncall", Role::Operator));
    assert_eq!(
        t.token.as_ref().map(Secret::expose),
        Some("a-token-of-24-characters")
    );
    assert!(!s.redacted_toml().contains("a-token-of-24-characters"));
}
