//! Attachments reach each agent in its own protocol: Claude Code gets images as base64
//! image blocks, Codex as `localImage` items it reads from the workspace, ACP agents as
//! image blocks when they say they take images and as resource links otherwise; files
//! that are not images are named by path in the text.

use kraal_agents::{Adapter, Step};
use kraal_core::{AgentKind, AgentSpec, Attachment, SessionInput};
use serde_json::{Value, json};

fn png() -> Attachment {
    Attachment {
        path: ".kraal/attachments/a1-shot.png".into(),
        media_type: "image/png".into(),
        name: "shot.png".into(),
        size: 4,
        data: Some(vec![0x89, b'P', b'N', b'G']),
    }
}

fn pdf() -> Attachment {
    Attachment {
        path: ".kraal/attachments/a2-spec.pdf".into(),
        media_type: "application/pdf".into(),
        name: "spec.pdf".into(),
        size: 1234,
        data: None,
    }
}

fn message() -> SessionInput {
    SessionInput::Message {
        text: "look at these".into(),
        attachments: vec![png(), pdf()],
    }
}

/// Answers every JSON-RPC request the adapter writes with `result_for(method)` until it
/// stops asking; returns every line written.
fn handshake(a: &mut dyn Adapter, result_for: impl Fn(&str) -> Value) -> Vec<Value> {
    let mut written = Vec::new();
    let mut todo: Vec<String> = a.start().writes;
    while let Some(line) = todo.pop() {
        let v: Value = serde_json::from_str(&line).unwrap();
        if let (Some(id), Some(m)) = (v.get("id"), v["method"].as_str()) {
            let reply = json!({"jsonrpc": "2.0", "id": id, "result": result_for(m)});
            let step: Step = a.on_line(&reply.to_string());
            todo.extend(step.writes);
        }
        written.push(v);
    }
    written
}

fn written(step: &Step) -> Value {
    assert_eq!(step.writes.len(), 1, "{:?}", step.writes);
    serde_json::from_str(&step.writes[0]).unwrap()
}

#[test]
fn claude_gets_images_as_base64_blocks_and_other_files_by_path() {
    let mut a = kraal_agents::adapter(&AgentSpec::new(AgentKind::Claude), None);
    let step = a.on_input(message());
    let v = written(&step);
    let content = v["message"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 2, "{content:?}");
    let text = content[0]["text"].as_str().unwrap();
    assert!(text.starts_with("look at these"));
    assert!(
        text.contains("/workspace/.kraal/attachments/a2-spec.pdf"),
        "{text}"
    );
    assert!(
        !text.contains("a1-shot.png"),
        "the image is sent inline, not named"
    );
    assert_eq!(content[1]["type"], "image");
    assert_eq!(content[1]["source"]["media_type"], "image/png");
    assert_eq!(content[1]["source"]["data"], "iVBORw==");
    // The log keeps the user's text and the attachments, without their bytes.
    match &step.events[0] {
        kraal_core::AgentEvent::UserMessage { text, attachments } => {
            assert_eq!(text, "look at these");
            assert_eq!(attachments.len(), 2);
            assert!(attachments.iter().all(|a| a.data.is_none()));
        }
        e => panic!("{e:?}"),
    }
    // Without attachments the message is the plain string it always was.
    let plain = written(&a.on_input(SessionInput::message("again")));
    assert_eq!(plain["message"]["content"], "again");
}

#[test]
fn codex_reads_images_from_the_workspace() {
    let mut a = kraal_agents::adapter(&AgentSpec::new(AgentKind::Codex), None);
    handshake(a.as_mut(), |m| match m {
        "thread/start" => json!({"thread": {"id": "th-1"}}),
        _ => json!({}),
    });
    let v = written(&a.on_input(message()));
    assert_eq!(v["method"], "turn/start");
    let input = v["params"]["input"].as_array().unwrap();
    assert_eq!(
        input[1],
        json!({"type": "localImage", "path": "/workspace/.kraal/attachments/a1-shot.png"})
    );
    assert!(input[0]["text"].as_str().unwrap().contains("a2-spec.pdf"));
}

fn acp(images: bool) -> Value {
    let mut a = kraal_agents::adapter(&AgentSpec::new(AgentKind::Gemini), None);
    handshake(a.as_mut(), |m| match m {
        "initialize" => {
            json!({"protocolVersion": 1, "agentCapabilities": {"promptCapabilities": {"image": images}}, "authMethods": []})
        }
        "session/new" => json!({"sessionId": "s-1"}),
        _ => json!({}),
    });
    written(&a.on_input(message()))
}

#[test]
fn acp_agents_get_image_blocks_only_when_they_take_them() {
    let v = acp(true);
    assert_eq!(v["method"], "session/prompt");
    let p = v["params"]["prompt"].as_array().unwrap();
    assert_eq!(p[1]["type"], "image");
    assert_eq!(p[1]["data"], "iVBORw==");
    assert_eq!(p[2]["type"], "resource_link");
    assert_eq!(
        p[2]["uri"],
        "file:///workspace/.kraal/attachments/a2-spec.pdf"
    );

    let v = acp(false);
    let p = v["params"]["prompt"].as_array().unwrap();
    assert_eq!(p[1]["type"], "resource_link", "{p:?}");
    assert_eq!(
        p[1]["uri"],
        "file:///workspace/.kraal/attachments/a1-shot.png"
    );
}
