//! The scripted model server against the real agent CLIs it stands in for (installed in
//! `agent-clis/` by `scripts/setup.sh`): Codex over the Responses API. Claude Code over the
//! Messages API is exercised by `kraal-agents`' live tests.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use kraal_testkit::{Scenario, ScriptedModel};

fn codex_bin() -> PathBuf {
    kraal_testkit::agent_cli("codex", "KRAAL_CODEX_BIN")
}

#[test]
fn real_codex_completes_a_turn_against_the_responses_api() {
    let scenario = Scenario::from_json(
        r#"{"turns": [{"respond": [{"text": "Hello from the scripted Responses API.", "chunk": 6}]}]}"#,
    )
    .unwrap();
    let model = ScriptedModel::start(scenario).unwrap();
    let home = tempfile::tempdir().unwrap();
    let codex_home = home.path().join(".codex");
    std::fs::create_dir_all(&codex_home).unwrap();
    let work = tempfile::tempdir().unwrap();
    // Codex ignores OPENAI_BASE_URL for its default provider in this version; a custom
    // provider pointing at the scripted server is what a proxy setup uses too.
    let provider = format!(
        r#"model_providers.kraal={{name="kraal",base_url="{}",env_key="OPENAI_API_KEY",wire_api="responses"}}"#,
        model.openai_base_url()
    );
    #[allow(clippy::disallowed_methods)]
    let mut child = Command::new(codex_bin())
        .args([
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-c",
            &provider,
            "-c",
            "model_provider=kraal",
            "say hello",
        ])
        .env("HOME", home.path())
        .env("CODEX_HOME", &codex_home)
        .env("OPENAI_API_KEY", "sk-scripted-placeholder")
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("codex did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{out}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let message = events
        .iter()
        .find(|e| e["type"] == "item.completed" && e["item"]["type"] == "agent_message")
        .unwrap_or_else(|| panic!("no agent message in {out}"));
    assert_eq!(
        message["item"]["text"],
        "Hello from the scripted Responses API."
    );
    assert!(
        events.iter().any(
            |e| e["type"] == "turn.completed" && e["usage"]["output_tokens"].as_u64() > Some(0)
        ),
        "{out}"
    );
    let reqs = model.requests();
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].to_string().contains("say hello"),
        "the prompt reached the model: {}",
        reqs[0]
    );
}
