//! Start on demand: a workspace that idle stop stopped comes back when it is used.
//! `kraal new-chat` runs its turn there (real Claude Code, scripted model) and says it
//! started it; `send`, `exec` and the web UI's new-session form do the same; `--no-start`
//! keeps the old refusal and leaves the workspace stopped.

use std::time::Duration;

use crate::harness::*;
use crate::housekeeping::{state, up, wait_stopped};
use crate::sessions::with_model_on;

#[test]
fn a_stopped_workspace_starts_when_a_command_or_the_web_ui_needs_it() {
    let (model, d) = with_model_on(
        r##"{"turns": [
            {"respond": [{"tool_use": {"name": "Bash", "input": {"command": "echo back > /workspace/back.txt", "description": "Write"}}}]},
            {"respond": [{"text": "Wrote it."}]},
            {"respond": [{"text": "Second answer."}]},
            {"respond": [{"text": "From the phone."}]}
        ]}"##,
        &[("KRAAL_IDLE_STOP", "5s"), ("KRAAL_HOUSEKEEPING_SECS", "1")],
    );
    up(&d, "napper", &[]);
    wait_stopped(&d, "napper", Duration::from_secs(30));

    // --no-start: the old refusal, and the workspace stays stopped.
    for args in [
        &["new-chat", "napper", "--no-start", "-m", "hi"][..],
        &["exec", "napper", "--no-start", "--", "true"][..],
    ] {
        let o = d.run(args);
        assert_ne!(o.code, Some(0), "{args:?}: {o:?}");
        assert!(
            o.stderr
                .contains("workspace napper is stopped and --no-start was given; start it with `kraal up napper`"),
            "{args:?}: {}",
            o.stderr
        );
    }
    assert_eq!(state(&d, "napper").0, "stopped");
    assert_eq!(model.requests().len(), 0, "nothing reached the agent");

    // new-chat starts it, says so, and the agent's turn runs in it.
    let o = d.run(&["new-chat", "napper", "-m", "write the file"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stderr.contains("kraal: started workspace napper in "),
        "{}",
        o.stderr
    );
    let back = d.exec("napper", "cat /workspace/back.txt");
    assert_eq!(back.stdout, "back\n", "{back:?}");
    let sessions: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["sessions", "napper", "--json"])).unwrap();
    let sid = sessions[0]["id"].as_str().unwrap().to_owned();

    // send: stopped again, the message starts it and the agent answers in the same session.
    wait_stopped(&d, "napper", Duration::from_secs(30));
    let o = d.run(&["send", &sid, "--wait", "once more"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stderr.contains("kraal: started workspace napper in "),
        "{}",
        o.stderr
    );
    wait_until(Duration::from_secs(30), "the second answer", || {
        d.session_events(&sid)
            .iter()
            .any(|e| e["type"] == "assistant_text" && e["text"].as_str() == Some("Second answer."))
    });

    // exec: the same, and the command's own output is untouched.
    wait_stopped(&d, "napper", Duration::from_secs(30));
    let o = d.run(&["exec", "napper", "--", "cat", "/workspace/back.txt"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(o.stdout, "back\n");
    assert!(
        o.stderr.contains("kraal: started workspace napper in "),
        "{}",
        o.stderr
    );

    // The web UI: a new session from the phone starts the stopped workspace.
    wait_stopped(&d, "napper", Duration::from_secs(30));
    let base = crate::web::web_url(&d);
    let token = d
        .ok(&["token", "create", "--name", "phone"])
        .trim()
        .to_owned();
    let (cookie, csrf) = crate::web::login(&base, &token);
    let (status, hs, body) = crate::web::http(
        &base,
        "POST",
        "/w/napper/sessions",
        &[
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={csrf}&agent=claude&message=hello+from+the+phone"),
    );
    assert_eq!(status, 303, "{body}");
    let to = crate::web::header(&hs, "location")
        .unwrap_or_default()
        .to_owned();
    assert!(to.starts_with("/s/se-"), "{to}");
    assert_eq!(state(&d, "napper").0, "running");
    let phone = to.trim_start_matches("/s/").to_owned();
    wait_until(Duration::from_secs(60), "the phone's answer", || {
        d.session_events(&phone)
            .iter()
            .any(|e| e["type"] == "assistant_text" && e["text"].as_str() == Some("From the phone."))
    });
    let log = d.ok(&["logs", "napper", "--events-only"]);
    assert!(log.contains("starting on demand"), "{log}");
}
