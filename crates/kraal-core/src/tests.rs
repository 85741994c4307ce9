//! Unit tests for names, sources and resources.

use super::*;

#[test]
fn names_follow_dns_label_rules() {
    assert!(WorkspaceName::parse("api-server-2").is_ok());
    assert_eq!(WorkspaceName::parse(""), Err(NameError::Empty));
    for bad in ["Api", "-a", "a-", "a_b", "a b", "ü", "a/b", "../x"] {
        assert!(
            matches!(
                WorkspaceName::parse(bad),
                Err(NameError::BadCharacters { .. })
            ),
            "{bad:?} must be rejected"
        );
    }
    assert!(matches!(
        WorkspaceName::parse(&"a".repeat(64)),
        Err(NameError::TooLong { .. })
    ));
    assert!(matches!(
        WorkspaceName::parse("ws-0123456789"),
        Err(NameError::LooksLikeId { .. })
    ));
}

#[test]
fn ids_round_trip_and_reject_garbage() {
    let id = WorkspaceId::random();
    assert_eq!(WorkspaceId::parse(id.as_str()).unwrap(), id);
    assert_eq!(id.short().len(), 10);
    for bad in ["ws-", "ws-xyz", "ws-0123456789a", "foo", "WS-0123456789"] {
        assert!(WorkspaceId::parse(bad).is_err(), "{bad:?}");
    }
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(serde_json::from_str::<WorkspaceId>(&json).unwrap(), id);
    assert!(serde_json::from_str::<WorkspaceId>("\"nope\"").is_err());
}

#[test]
fn derived_names_are_valid() {
    assert_eq!(derive_name("My_Project.v2").as_str(), "my-project-v2");
    assert_eq!(derive_name("___").as_str(), "workspace");
    assert_eq!(derive_name(&"x".repeat(100)).as_str().len(), 63);
}

#[test]
fn git_sources_refuse_command_transports() {
    assert!(Source::git("https://example.com/a/b.git", None).is_ok());
    assert!(Source::git("git@example.com:a/b.git", None).is_ok());
    assert!(Source::git("file:///srv/repo", None).is_ok());
    assert!(matches!(
        Source::git("ext::sh -c touch% /tmp/pwned", None),
        Err(SourceError::Transport { .. })
    ));
    assert!(matches!(
        Source::git("fd::17", None),
        Err(SourceError::Transport { .. })
    ));
    assert!(Source::looks_like_git_url("https://x/y"));
    assert!(Source::looks_like_git_url("git@github.com:o/r"));
    assert!(!Source::looks_like_git_url("./some/dir"));
    assert!(!Source::looks_like_git_url("/abs/dir"));
}

#[test]
fn source_basenames() {
    let g = Source::git("https://example.com/org/repo.git/", None).unwrap();
    assert_eq!(g.basename().as_deref(), Some("repo"));
    let s = Source::git("git@h:org/thing.git", None).unwrap();
    assert_eq!(s.basename().as_deref(), Some("thing"));
    let l = Source::local("/home/u/proj".into()).unwrap();
    assert_eq!(l.basename().as_deref(), Some("proj"));
    assert!(Source::local("rel".into()).is_err());
}

#[test]
fn memory_sizes_parse() {
    assert_eq!(parse_memory_mib("512").unwrap(), 512);
    assert_eq!(parse_memory_mib("2G").unwrap(), 2048);
    assert_eq!(parse_memory_mib("2gib").unwrap(), 2048);
    assert!(parse_memory_mib("2T").is_err());
    assert!(parse_memory_mib("lots").is_err());
    assert!(
        Resources {
            cpus: 0.0,
            ..Default::default()
        }
        .validate()
        .is_err()
    );
    assert!(
        Resources {
            memory_mib: 1,
            ..Default::default()
        }
        .validate()
        .is_err()
    );
    assert!(Resources::default().validate().is_ok());
}

#[test]
fn events_have_stable_json() {
    let e = SessionEvent {
        seq: 3,
        at_ms: 10,
        event: AgentEvent::State {
            state: SessionState::NeedsApproval,
            reason: None,
        },
    };
    let j = serde_json::to_string(&e).unwrap();
    assert_eq!(
        j,
        r#"{"seq":3,"at_ms":10,"type":"state","state":"needs_approval"}"#
    );
    assert_eq!(serde_json::from_str::<SessionEvent>(&j).unwrap(), e);
    let t = AgentEvent::ToolCall {
        id: "t1".into(),
        name: "Bash".into(),
        input: serde_json::json!({"command": "ls"}),
    };
    assert_eq!(
        serde_json::to_string(&t).unwrap(),
        r#"{"type":"tool_call","id":"t1","name":"Bash","input":{"command":"ls"}}"#
    );
}

#[test]
fn session_state_names_match_their_json() {
    for s in SessionState::ALL {
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{}\"", s.as_str())
        );
        assert_eq!(SessionState::parse(s.as_str()), Some(s));
    }
    assert_eq!(SessionState::parse("sleeping"), None);
    assert!(SessionState::Failed.is_final() && !SessionState::WaitingForInput.is_final());
}

mod policy {
    use crate::{Policy, PolicyError, parse_duration_secs};

    #[test]
    fn durations_parse_in_the_usual_units_and_bad_ones_are_named() {
        assert_eq!(parse_duration_secs("idle stop", "90s").unwrap(), 90);
        assert_eq!(parse_duration_secs("idle stop", "30m").unwrap(), 1800);
        assert_eq!(parse_duration_secs("idle stop", "1h30m").unwrap(), 5400);
        assert_eq!(parse_duration_secs("idle stop", "2d").unwrap(), 172_800);
        assert_eq!(parse_duration_secs("idle stop", "45").unwrap(), 45);
        assert_eq!(parse_duration_secs("idle stop", "never").unwrap(), 0);
        for bad in ["", "m", "10x", "5m3", "-1m", "99999999999999999999d"] {
            let e = parse_duration_secs("idle stop", bad).unwrap_err();
            assert!(
                matches!(&e, PolicyError::Format { field: "idle stop", input } if input == bad),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_policy_falls_back_to_the_defaults_and_rejects_tiny_intervals() {
        let defaults = Policy {
            idle_stop_secs: Some(1800),
            backup_every_secs: Some(3600),
            idle_pause_secs: None,
        };
        let own = Policy {
            idle_stop_secs: Some(0),
            backup_every_secs: None,
            idle_pause_secs: None,
        };
        let p = own.or(defaults);
        assert_eq!(p.idle_stop(), None, "0 means never, not the default");
        assert_eq!(p.backup_every(), Some(std::time::Duration::from_secs(3600)));
        assert!(own.validate().is_ok());
        let e = Policy {
            idle_stop_secs: None,
            backup_every_secs: Some(5),
            idle_pause_secs: None,
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("backup interval must be 0 (never) or at least 10 s"),
            "{e}"
        );
    }
}
