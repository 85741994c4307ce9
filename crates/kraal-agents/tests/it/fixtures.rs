//! Golden tests over transcripts captured from real sessions (`tests/fixtures/<agent>/
//! <scenario>.jsonl`: every launch, user input, line kraal wrote and line the agent printed).
//! Replaying a transcript through the adapter must write exactly what was written then and
//! give exactly the committed events (`<scenario>.events.json`); damaged lines are reported
//! and skipped, never a panic.

use std::path::{Path, PathBuf};

use kraal_core::{AgentEvent, AgentSpec, SessionInput};
use serde_json::Value;

/// Agents that must have at least one captured transcript. Goose is not among them: it is
/// not distributed through any registry this project installs from, so no real transcript
/// could be captured (it speaks the same ACP as Gemini CLI, Qwen Code and OpenCode).
const AGENTS: [&str; 5] = ["claude", "codex", "gemini", "qwen", "opencode"];

#[derive(Debug, Default)]
struct Replay {
    events: Vec<AgentEvent>,
    produced: Vec<String>,
    recorded: Vec<String>,
    problems: usize,
}

fn replay(lines: &[String]) -> Replay {
    let mut r = Replay::default();
    let mut adapter: Option<Box<dyn kraal_agents::Adapter>> = None;
    let absorb = |r: &mut Replay, step: kraal_agents::Step| {
        r.events.extend(step.events);
        r.produced.extend(
            step.writes
                .into_iter()
                .map(|w| w.strip_suffix('\n').unwrap_or(&w).to_owned()),
        );
        r.problems += step.problems.len();
    };
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            panic!("the transcript itself is not JSON lines: {line}");
        };
        if let Some(l) = v.get("launch") {
            let spec: AgentSpec = serde_json::from_value(l["spec"].clone()).unwrap();
            let resume = l["resume"].as_str().map(str::to_owned);
            let mut a = kraal_agents::adapter(&spec, resume);
            let step = a.start();
            absorb(&mut r, step);
            adapter = Some(a);
        } else if let Some(i) = v.get("input") {
            let input: SessionInput = serde_json::from_value(i.clone()).unwrap();
            let step = adapter.as_mut().expect("launched").on_input(input);
            absorb(&mut r, step);
        } else if let Some(l) = v.get("read") {
            let step = adapter
                .as_mut()
                .expect("launched")
                .on_line(l.as_str().unwrap());
            absorb(&mut r, step);
        } else if let Some(w) = v.get("write") {
            r.recorded.push(w.as_str().unwrap().to_owned());
        }
    }
    r
}

fn transcripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v = Vec::new();
    for agent in std::fs::read_dir(&dir).unwrap().flatten() {
        for f in std::fs::read_dir(agent.path()).unwrap().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|x| x == "jsonl") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn transcripts_replay_to_the_same_writes_and_the_committed_events() {
    let all = transcripts();
    for agent in AGENTS {
        assert!(
            all.iter().any(|p| p.parent().unwrap().ends_with(agent)),
            "no captured transcript for {agent}"
        );
    }
    for p in &all {
        let r = replay(&lines(p));
        assert_eq!(
            r.problems,
            0,
            "{}: a clean transcript has no unparseable lines",
            p.display()
        );
        assert_eq!(
            r.produced,
            r.recorded,
            "{}: the adapter no longer writes what it wrote when captured",
            p.display()
        );
        assert!(!r.events.is_empty(), "{}", p.display());
        let got = serde_json::to_string_pretty(&r.events).unwrap() + "\n";
        let golden = p.with_extension("events.json");
        if std::env::var_os("KRAAL_UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} missing (KRAAL_UPDATE_GOLDEN=1)", golden.display()));
        assert!(
            got == want,
            "{} replays to different events than {}",
            p.display(),
            golden.display()
        );
    }
}

/// Every transcript, damaged the ways a dying process or a confused agent damages output:
/// truncated JSON, plain text, JSON that is not an object, an unknown message type, an
/// empty line. The adapter reports the bad lines and keeps going.
#[test]
fn damaged_lines_are_reported_and_skipped() {
    for p in transcripts() {
        let mut damaged = Vec::new();
        let mut reads = 0;
        for l in lines(&p) {
            let v: Value = serde_json::from_str(&l).unwrap();
            if let Some(text) = v.get("read").and_then(Value::as_str) {
                reads += 1;
                let bad = match reads % 5 {
                    2 => Some(text[..text.len() / 2].to_owned()),
                    4 => Some("npm WARN deprecated: not JSON at all".to_owned()),
                    _ => None,
                };
                if let Some(b) = bad {
                    damaged.push(serde_json::json!({ "read": b }).to_string());
                }
            }
            damaged.push(l);
        }
        damaged.push(r#"{"read":"[1,2,3]"}"#.to_owned());
        damaged.push(r#"{"read":""}"#.to_owned());
        let r = replay(&damaged);
        let clean = replay(&lines(&p));
        assert!(r.problems > 0, "{}: damage went unnoticed", p.display());
        assert_eq!(
            r.events,
            clean.events,
            "{}: bad lines changed what the good lines mean",
            p.display()
        );
    }
}
