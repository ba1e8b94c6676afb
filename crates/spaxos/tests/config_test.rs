//! Config parsing and validation: every mistake gives its own one-line error.

use spaxos::config::{Config, ConfigError, ConfigWarning};

const SEED: &str = r#"{ "selfid": 1,
  "groups": [ {"id": 1, "ip": "127.0.0.1", "port": 10001},
              {"id": 2, "ip": "127.0.0.1", "port": 10002},
              {"id": 3, "ip": "127.0.0.1", "port": 10003} ],
  "path": "./data",
  "stimeout": {"heartbeat": 100, "instimeoutbase": 200, "instimeoutrange": 30} }"#;

fn seed() -> Config {
    Config::from_json(SEED).expect("seed config parses")
}

/// The error lines of `config.validate()`, which must fail.
fn errors(config: &Config) -> Vec<String> {
    match config.validate() {
        Ok(warnings) => panic!("expected errors, got Ok({warnings:?})"),
        Err(errors) => {
            let lines = errors.lines();
            for line in &lines {
                assert!(!line.contains('\n'), "multi-line error: {line:?}");
            }
            assert_eq!(errors.to_string(), lines.join("\n"));
            lines
        }
    }
}

fn parse_error(json: &str) -> String {
    let error = Config::from_json(json).expect_err("parse must fail");
    assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
    let line = error.to_string();
    assert!(!line.contains('\n'), "multi-line error: {line:?}");
    line
}

#[test]
fn seed_format_parses_with_defaults() {
    let config = seed();
    assert_eq!(config.validate().unwrap(), vec![]);
    assert_eq!(config.selfid, 1);
    assert_eq!(config.member_ids(), vec![1, 2, 3]);
    assert_eq!(config.path.to_str(), Some("./data"));
    assert_eq!(config.cluster_id, 0);
    assert_eq!(config.tick_ms, 10);
    assert_eq!(config.frame_bytes_max, 64 << 20);
    assert!(config.send_accepts_before_persist);
    assert_eq!(config.propose_gather_us, 200);
    assert_eq!(config.addr_of(2), Some("127.0.0.1:10002".parse().unwrap()));
}

#[test]
fn optional_fields_override_defaults() {
    let json = SEED.replacen(
        "\"path\"",
        r#""cluster_id": 9, "tick_ms": 5, "inflight_max": 10, "batch_bytes_max": 1000,
           "value_bytes_max": 2000, "frame_bytes_max": 100000, "proposal_queue_max": 7,
           "peer_queue_max": 11, "retry_lost": false, "send_accepts_before_persist": false, "dedup_window": 5,
           "reconnect_backoff_min_ms": 1, "reconnect_backoff_max_ms": 3, "rng_seed": 42,
           "propose_gather_us": 0, "path""#,
        1,
    );
    let config = Config::from_json(&json).unwrap();
    assert_eq!(config.validate().unwrap(), vec![]);
    assert_eq!(config.cluster_id, 9);
    assert!(!config.send_accepts_before_persist);
    assert_eq!(config.propose_gather_us, 0);
    let core = config.core_config();
    assert_eq!(core.dedup_window, 5);
    assert_eq!(core.heartbeat_ticks, 20);
    assert_eq!(core.election_timeout_ticks, 40);
    assert_eq!(core.election_timeout_range_ticks, 6);
    assert_eq!(core.inflight_max, 10);
    assert_eq!(core.batch_bytes_max, 1000);
    assert_eq!(core.value_bytes_max, 2000);
    assert_eq!(core.proposal_queue_max, 7);
    assert!(!core.retry_lost);
    assert_eq!(core.rng_seed, 42);
}

#[test]
fn core_config_converts_ms_to_ticks() {
    let core = seed().core_config();
    assert_eq!(core.id, 1);
    assert_eq!(core.members, vec![1, 2, 3]);
    assert_eq!(core.heartbeat_ticks, 10);
    assert_eq!(core.election_timeout_ticks, 20);
    assert_eq!(core.election_timeout_range_ticks, 3);
    core.validate().expect("derived core config is valid");
}

#[test]
fn tiny_timeouts_round_up_to_one_tick() {
    let mut config = seed();
    config.stimeout.heartbeat = 5;
    config.stimeout.instimeoutbase = 40;
    config.stimeout.instimeoutrange = 3;
    let warnings = config.validate().unwrap();
    assert_eq!(
        warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec![
            "stimeout.heartbeat (5 ms) is not a multiple of tick_ms (10 ms); it is rounded to 10 ms",
            "stimeout.instimeoutrange (3 ms) is not a multiple of tick_ms (10 ms); it is rounded to 10 ms",
        ]
    );
    let core = config.core_config();
    assert_eq!(core.heartbeat_ticks, 1);
    assert_eq!(core.election_timeout_range_ticks, 1);
    core.validate().unwrap();
}

#[test]
fn duplicate_ids() {
    let mut config = seed();
    config.groups[2].id = 2;
    assert_eq!(errors(&config), vec!["groups: id 2 appears more than once"]);
}

#[test]
fn duplicate_addresses() {
    let mut config = seed();
    config.groups[2].port = 10002;
    assert_eq!(
        errors(&config),
        vec!["groups: address 127.0.0.1:10002 is used by both id 2 and id 3"]
    );
}

#[test]
fn selfid_not_in_groups() {
    let mut config = seed();
    config.selfid = 4;
    assert_eq!(
        errors(&config),
        vec!["selfid 4 is not one of the ids in groups"]
    );
}

#[test]
fn zero_ids() {
    let mut config = seed();
    config.selfid = 0;
    config.groups[1].id = 0;
    assert_eq!(
        errors(&config),
        vec!["selfid must be non-zero", "groups[1]: id must be non-zero"]
    );
}

#[test]
fn unparsable_ip() {
    let mut config = seed();
    config.groups[0].ip = "localhost".into();
    config.groups[1].ip = "10.0.0.300".into();
    assert_eq!(
        errors(&config),
        vec![
            "groups: id 1: ip \"localhost\" is not an IP address",
            "groups: id 2: ip \"10.0.0.300\" is not an IP address"
        ]
    );
}

#[test]
fn ipv6_is_fine() {
    let mut config = seed();
    config.groups[0].ip = "::1".into();
    assert_eq!(config.validate().unwrap(), vec![]);
    assert_eq!(config.addr_of(1), Some("[::1]:10001".parse().unwrap()));
}

#[test]
fn zero_port() {
    let mut config = seed();
    config.groups[2].port = 0;
    assert_eq!(errors(&config), vec!["groups: id 3: port must be non-zero"]);
}

#[test]
fn empty_groups() {
    let mut config = seed();
    config.groups.clear();
    assert_eq!(errors(&config), vec!["groups is empty"]);
}

#[test]
fn zero_and_negative_timeouts() {
    let mut config = seed();
    config.stimeout.heartbeat = 0;
    config.stimeout.instimeoutbase = -5;
    config.stimeout.instimeoutrange = 0;
    assert_eq!(
        errors(&config),
        vec![
            "stimeout.heartbeat must be greater than zero, got 0",
            "stimeout.instimeoutbase must be greater than zero, got -5",
            "stimeout.instimeoutrange must be greater than zero, got 0",
        ]
    );
}

#[test]
fn election_timeout_not_above_heartbeat() {
    let mut config = seed();
    config.stimeout.instimeoutbase = 100;
    assert_eq!(
        errors(&config),
        vec!["stimeout.instimeoutbase (100 ms) must be greater than stimeout.heartbeat (100 ms)"]
    );
    // Greater in ms, equal in ticks.
    config.stimeout.instimeoutbase = 105;
    assert_eq!(
        errors(&config),
        vec!["stimeout.instimeoutbase (105 ms) must be at least one tick_ms (10 ms) more than stimeout.heartbeat (100 ms)"]
    );
}

#[test]
fn zero_tick_and_limits() {
    let mut config = seed();
    config.tick_ms = 0;
    config.inflight_max = 0;
    config.peer_queue_max = 0;
    assert_eq!(
        errors(&config),
        vec![
            "tick_ms must be greater than zero",
            "inflight_max must be greater than zero",
            "peer_queue_max must be greater than zero",
        ]
    );
}

#[test]
fn frame_limits() {
    let mut config = seed();
    config.frame_bytes_max = 1 << 20;
    assert_eq!(
        errors(&config),
        vec!["frame_bytes_max (1048576) must be at least batch_bytes_max + value_bytes_max + 64 KiB (2162688)"]
    );
    config.frame_bytes_max = 2 << 30;
    assert_eq!(
        errors(&config),
        vec!["frame_bytes_max (2147483648) must be at most 1 GiB"]
    );
}

#[test]
fn dedup_window_limit() {
    let mut config = seed();
    config.dedup_window = spaxos_core::DEDUP_WINDOW_MAX;
    assert!(config.validate().is_ok());
    config.dedup_window = spaxos_core::DEDUP_WINDOW_MAX + 1;
    assert_eq!(
        errors(&config),
        vec!["dedup_window (16777217) must be at most 16777216"]
    );
}

#[test]
fn propose_gather_is_capped() {
    let mut config = seed();
    config.propose_gather_us = 10_000;
    assert_eq!(config.validate().unwrap(), vec![]);
    config.propose_gather_us = 10_001;
    assert_eq!(
        errors(&config),
        vec!["propose_gather_us (10001) must be at most 10000"]
    );
}

#[test]
fn backoff_range() {
    let mut config = seed();
    config.reconnect_backoff_min_ms = 500;
    config.reconnect_backoff_max_ms = 100;
    assert_eq!(
        errors(&config),
        vec!["reconnect_backoff_max_ms (100) must be at least reconnect_backoff_min_ms (500)"]
    );
}

#[test]
fn every_mistake_is_reported() {
    let mut config = seed();
    config.selfid = 9;
    config.groups[1].id = 1;
    config.groups[2].ip = "nope".into();
    config.stimeout.heartbeat = -1;
    config.tick_ms = 0;
    let lines = errors(&config);
    assert_eq!(lines.len(), 5, "{lines:#?}");
}

#[test]
fn even_group_size_is_a_warning() {
    let mut config = seed();
    config.groups.pop();
    assert_eq!(
        config.validate().unwrap(),
        vec![ConfigWarning::EvenGroupSize(2)]
    );
    assert_eq!(
        ConfigWarning::EvenGroupSize(2).to_string(),
        "groups has 2 members: an even group tolerates no more failures than one member fewer"
    );
}

#[test]
fn unknown_fields_are_errors() {
    let top = parse_error(&SEED.replacen("\"path\"", "\"paht\": 1, \"path\"", 1));
    assert!(top.starts_with("<json>: unknown field `paht`"), "{top}");
    let nested = parse_error(&SEED.replacen("\"heartbeat\"", "\"hearbeat\": 1, \"heartbeat\"", 1));
    assert!(nested.contains("unknown field `hearbeat`"), "{nested}");
    let member =
        parse_error(&SEED.replacen("\"port\": 10002", "\"port\": 10002, \"host\": \"x\"", 1));
    assert!(member.contains("unknown field `host`"), "{member}");
}

#[test]
fn missing_and_mistyped_fields_are_errors() {
    let missing = parse_error(&SEED.replacen("\"selfid\": 1,", "", 1));
    assert!(missing.contains("missing field `selfid`"), "{missing}");
    let port = parse_error(&SEED.replacen("10003", "70000", 1));
    assert!(port.contains("70000"), "{port}");
    let garbage = parse_error("{ not json");
    assert!(garbage.starts_with("<json>: "), "{garbage}");
}

#[test]
fn missing_file_names_the_path() {
    let error = Config::from_file("/nonexistent/spaxos.json").unwrap_err();
    let line = error.to_string();
    assert!(
        line.starts_with("cannot read config file /nonexistent/spaxos.json: "),
        "{line}"
    );
    let errors = Config::load("/nonexistent/spaxos.json").unwrap_err();
    assert_eq!(errors.lines().len(), 1);
}

#[test]
fn file_round_trip_and_parse_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, SEED).unwrap();
    let (config, warnings) = Config::load(&good).unwrap();
    assert_eq!(config, seed());
    assert!(warnings.is_empty());

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"selfid\": 1, \"bogus\": true}").unwrap();
    let line = Config::from_file(&bad).unwrap_err().to_string();
    assert!(line.starts_with(&format!("{}: ", bad.display())), "{line}");
    assert!(line.contains("bogus"), "{line}");
}
