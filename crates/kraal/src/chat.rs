//! Session commands: `new-chat`, `chat`, `send`, `sessions`, `interrupt`, `approve`, `deny`,
//! `events`, `end-chat`. Events come from the daemon's server-sent-event stream, which
//! this client follows across daemon restarts by resuming after the last event it saw.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use hyper::Method;
use kraal_api::*;
use kraal_core::{AgentEvent, AgentKind, SessionEvent, SessionInput, SessionState};
use tokio::sync::mpsc;

use crate::client::{Client, ClientError, enc};
use crate::render::Renderer;

/// Exit code of `--wait` when the agent stopped to ask for approval.
pub const EXIT_NEEDS_APPROVAL: i32 = 3;

/// Splits a server-sent-event byte stream into events (`id` and joined `data` lines).
#[derive(Default)]
struct SseParser {
    buf: String,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Vec<(Option<u64>, String)> {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
        let mut out = Vec::new();
        loop {
            let normalized = self.buf.replace("\r\n", "\n");
            let Some(end) = normalized.find("\n\n") else {
                self.buf = normalized;
                return out;
            };
            let block = normalized[..end].to_owned();
            self.buf = normalized[end + 2..].to_owned();
            let mut id = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            if !data.is_empty() {
                out.push((id, data.join("\n")));
            }
        }
    }
}

/// Follows a session's events after `after`, reconnecting (and resuming after the last
/// event received) when the daemon goes away. Ends with an error only for answers that a
/// retry cannot change (unknown session, refused token).
fn follow(
    client: Client,
    session: String,
    after: u64,
) -> mpsc::Receiver<Result<SessionEvent, ClientError>> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut last = after;
        let mut warned = false;
        loop {
            let path = format!("/v1/sessions/{}/stream?after={last}", enc(&session));
            match client.open_stream(&path).await {
                Ok(mut body) => {
                    if warned {
                        eprintln!("kraal: reconnected to the daemon; resuming after event {last}");
                        warned = false;
                    }
                    let mut parser = SseParser::default();
                    while let Some(frame) = body.frame().await {
                        let Ok(frame) = frame else { break };
                        let Some(data) = frame.data_ref() else {
                            continue;
                        };
                        for (_, json) in parser.push(data) {
                            match serde_json::from_str::<SessionEvent>(&json) {
                                Ok(e) if e.seq > last => {
                                    last = e.seq;
                                    if tx.send(Ok(e)).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    let _ = tx
                                        .send(Err(ClientError::Protocol(format!(
                                            "bad event from the daemon: {e}"
                                        ))))
                                        .await;
                                    return;
                                }
                            }
                        }
                    }
                }
                Err(e @ ClientError::Api { .. }) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(_) => {}
            }
            if tx.is_closed() {
                return;
            }
            if !warned {
                eprintln!("kraal: lost the daemon; reconnecting…");
                warned = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    rx
}

fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn print(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// Prints events from `after` until the turn that handles a message sent after `after`
/// ends; returns the exit code for that outcome.
async fn wait_turn(client: &Client, session: &Session, after: u64) -> anyhow::Result<i32> {
    let mut rx = follow(client.clone(), session.id.clone(), after);
    let mut r = Renderer::new(&session.id, color());
    let mut seen_message = false;
    while let Some(e) = rx.recv().await {
        let e = e?;
        print(&r.render(&e, true));
        match &e.event {
            AgentEvent::UserMessage { .. } => seen_message = true,
            AgentEvent::State { state, .. } if seen_message => match state {
                SessionState::WaitingForInput | SessionState::Done => return Ok(0),
                SessionState::Failed => return Ok(1),
                SessionState::NeedsApproval => return Ok(EXIT_NEEDS_APPROVAL),
                _ => {}
            },
            AgentEvent::State {
                state: SessionState::Failed,
                ..
            } => return Ok(1),
            _ => {}
        }
    }
    bail!("the event stream ended")
}

pub struct NewChat {
    pub workspace: String,
    pub agent: AgentKind,
    pub message: Option<String>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    pub ask: bool,
    pub binary: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub detach: bool,
    pub transcript: bool,
}

pub async fn new_chat(c: &Client, a: NewChat) -> anyhow::Result<i32> {
    let body = CreateSession {
        agent: Some(a.agent),
        message: a.message.clone(),
        model: a.model,
        system_prompt: a.system_prompt,
        permissions: a.ask.then_some(kraal_core::PermissionMode::Ask),
        binary: a.binary,
        args: a.args,
        env: a.env.into_iter().collect(),
        cwd: a.cwd,
        watchdog: None,
        transcript: a.transcript,
    };
    let s: Session = c
        .send(
            Method::POST,
            &format!("/v1/workspaces/{}/sessions", enc(&a.workspace)),
            Some(&body),
        )
        .await?;
    if a.detach {
        println!("{}", s.id);
        return Ok(0);
    }
    eprintln!("session {} ({}) in {}", s.id, s.agent, s.workspace);
    if a.message.is_some() {
        let code = wait_turn(c, &s, 0).await?;
        eprintln!("continue with: kraal chat -c {}", s.id);
        return Ok(code);
    }
    if std::io::stdin().is_terminal() {
        return interactive(c, s).await;
    }
    println!("{}", s.id);
    Ok(0)
}

/// A media type for an attached file, from its name (the daemon recognises images by
/// their bytes whatever this says).
fn media_type_of(path: &std::path::Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "json" => "application/json",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "txt" | "log" => "text/plain",
        _ => "application/octet-stream",
    }
}

pub async fn send(
    c: &Client,
    session: &str,
    text: String,
    attach: &[std::path::PathBuf],
    wait: bool,
    no_start: bool,
) -> anyhow::Result<i32> {
    let before: Session = c.get(&format!("/v1/sessions/{}", enc(session))).await?;
    // Every file is checked and read first, so a missing or oversized one sends nothing.
    if attach.len() > kraal_core::MAX_ATTACHMENT_COUNT {
        bail!(
            "{} attachments; a message takes at most {}",
            attach.len(),
            kraal_core::MAX_ATTACHMENT_COUNT
        );
    }
    let mut total = 0u64;
    for p in attach {
        let len = std::fs::metadata(p)
            .with_context(|| format!("cannot read the attachment {}", p.display()))?
            .len();
        if len > kraal_core::MAX_ATTACHMENT as u64 {
            bail!(
                "attachment {} is {len} bytes, larger than {} MiB (the limit per file)",
                p.display(),
                kraal_core::MAX_ATTACHMENT >> 20
            );
        }
        total += len;
    }
    if total > kraal_core::MAX_ATTACHMENTS_TOTAL as u64 {
        bail!(
            "the attachments are {total} bytes together, more than {} MiB (the limit per message)",
            kraal_core::MAX_ATTACHMENTS_TOTAL >> 20
        );
    }
    crate::autostart::ensure_session_running(c, &before, no_start).await?;
    let mut files = Vec::new();
    for p in attach {
        let data = std::fs::read(p)
            .with_context(|| format!("cannot read the attachment {}", p.display()))?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        files.push((name, media_type_of(p), data));
    }
    let mut attachments = Vec::new();
    for (name, kind, data) in files {
        let (_, body) = c
            .raw(
                Method::POST,
                &format!(
                    "/v1/sessions/{}/attachments?name={}",
                    enc(&before.id),
                    enc(&name)
                ),
                Some((data, kind)),
            )
            .await?;
        let a: kraal_core::Attachment = serde_json::from_slice(&body)
            .context("the daemon's answer to an attachment upload is not an attachment")?;
        attachments.push(a);
    }
    let text = if text.trim().is_empty() && !attachments.is_empty() {
        "(see the attached files)".to_owned()
    } else {
        text
    };
    let s: Session = c
        .send(
            Method::POST,
            &format!("/v1/sessions/{}/input", enc(&before.id)),
            Some(&SessionInput::Message { text, attachments }),
        )
        .await?;
    if wait {
        return wait_turn(c, &s, before.last_seq).await;
    }
    Ok(0)
}

pub async fn input(c: &Client, session: &str, input: SessionInput) -> anyhow::Result<i32> {
    let _: Session = c
        .send(
            Method::POST,
            &format!("/v1/sessions/{}/input", enc(session)),
            Some(&input),
        )
        .await?;
    Ok(0)
}

/// Answers an approval request.
pub async fn decide(
    c: &Client,
    session: &str,
    request_id: String,
    allow: bool,
    message: Option<String>,
) -> anyhow::Result<i32> {
    input(
        c,
        session,
        SessionInput::Approval {
            request_id,
            allow,
            message,
        },
    )
    .await
}

pub async fn end_chat(c: &Client, session: &str) -> anyhow::Result<i32> {
    let s: Session = c
        .send::<(), Session>(
            Method::POST,
            &format!("/v1/sessions/{}/stop", enc(session)),
            None,
        )
        .await?;
    eprintln!(
        "session {} is ending (its log is kept; a new message starts the agent again)",
        s.id
    );
    Ok(0)
}

pub async fn list(c: &Client, workspace: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let path = match workspace {
        Some(w) => format!("/v1/sessions?workspace={}", enc(w)),
        None => "/v1/sessions".to_owned(),
    };
    let l: SessionList = c.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l.sessions)?);
        return Ok(0);
    }
    if l.sessions.is_empty() {
        eprintln!("no sessions; start one with `kraal new-chat <workspace> -m \"task\"`");
        return Ok(0);
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["ID", "WORKSPACE", "AGENT", "STATE", "COST", "TITLE"]);
    for s in &l.sessions {
        t.add_row([
            s.id.clone(),
            s.workspace.clone(),
            s.agent.to_string(),
            s.state.to_string(),
            format!("${:.4}", s.usage.cost_usd),
            s.title.chars().take(60).collect(),
        ]);
    }
    println!("{}", t.trim_fmt());
    Ok(0)
}

pub async fn events(
    c: &Client,
    session: &str,
    after: u64,
    follow_live: bool,
    json: bool,
) -> anyhow::Result<i32> {
    let s: Session = c.get(&format!("/v1/sessions/{}", enc(session))).await?;
    let mut r = Renderer::new(&s.id, color());
    let show = |r: &mut Renderer, e: &SessionEvent, live: bool| {
        if json {
            println!("{}", serde_json::to_string(e).expect("serializes"));
        } else {
            print(&r.render(e, live));
        }
    };
    let last = history(c, &s.id, after, |e| show(&mut r, e, false)).await?;
    if follow_live {
        let mut rx = follow(c.clone(), s.id.clone(), last);
        while let Some(e) = rx.recv().await {
            show(&mut r, &e?, true);
        }
    }
    Ok(0)
}

/// Feeds every stored event after `after` to `each`, page by page; returns the last
/// sequence number seen.
async fn history(
    c: &Client,
    session: &str,
    after: u64,
    mut each: impl FnMut(&SessionEvent),
) -> anyhow::Result<u64> {
    let mut last = after;
    loop {
        let page: EventPage = c
            .get(&format!(
                "/v1/sessions/{}/events?after={last}&limit=1000",
                enc(session)
            ))
            .await?;
        if page.events.is_empty() {
            return Ok(last);
        }
        for e in &page.events {
            last = e.seq;
            each(e);
        }
    }
}

/// Picks a session: `-c` wins; with `-w`, one of that workspace's sessions (a new one if
/// it has none); otherwise the user chooses from all sessions.
pub async fn chat(
    c: &Client,
    workspace: Option<String>,
    session: Option<String>,
    no_start: bool,
) -> anyhow::Result<i32> {
    if let Some(id) = session {
        let s: Session = c.get(&format!("/v1/sessions/{}", enc(&id))).await?;
        crate::autostart::ensure_session_running(c, &s, no_start).await?;
        return interactive(c, s).await;
    }
    let path = match &workspace {
        Some(w) => format!("/v1/sessions?workspace={}", enc(w)),
        None => "/v1/sessions".to_owned(),
    };
    let l: SessionList = c.get(&path).await?;
    let tty = std::io::stdin().is_terminal();
    let chosen = match (l.sessions.len(), &workspace) {
        (0, Some(w)) => {
            crate::autostart::ensure_running(c, w, no_start).await?;
            eprintln!("no sessions in {w} yet; starting a Claude Code session");
            c.send(
                Method::POST,
                &format!("/v1/workspaces/{}/sessions", enc(w)),
                Some(&CreateSession::default()),
            )
            .await?
        }
        (0, None) => bail!("there are no sessions\nhint: `kraal new-chat <workspace>` starts one"),
        (1, _) => l.sessions.into_iter().next().expect("one"),
        _ if !tty => {
            bail!("several sessions match; pick one with -c <session> (see `kraal sessions`)")
        }
        _ => {
            for (i, s) in l.sessions.iter().enumerate() {
                eprintln!(
                    "{:>3}) {}  {:<10} {:<8} {:<18} {}",
                    i + 1,
                    s.id,
                    s.workspace,
                    s.agent,
                    s.state,
                    s.title
                );
            }
            eprint!("session number: ");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let n: usize = line
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=l.sessions.len()).contains(n))
                .with_context(|| format!("{:?} is not one of the numbers above", line.trim()))?;
            l.sessions.into_iter().nth(n - 1).expect("in range")
        }
    };
    crate::autostart::ensure_session_running(c, &chosen, no_start).await?;
    interactive(c, chosen).await
}

const HELP: &str =
    "type a message and press Enter (it is queued or steered in while the agent works)
  /interrupt           stop the current turn (also Ctrl-C while the agent works)
  /approve [id]        approve a request (default: the newest one)
  /deny [id] [reason]  deny a request
  /end                 end the session (the log is kept)
  /quit                leave (the agent keeps working)";

/// History, then live events, with a prompt that takes messages and commands.
async fn interactive(c: &Client, s: Session) -> anyhow::Result<i32> {
    eprintln!(
        "chat with {} in {} ({}); /help for commands",
        s.agent, s.workspace, s.id
    );
    let mut r = Renderer::new(&s.id, color());
    let mut pending_approval: Option<String> = None;
    let mut working = false;
    // History first, rendered compactly.
    let last = history(c, &s.id, 0, |e| {
        track(&e.event, &mut pending_approval, &mut working);
        print(&r.render(e, false));
    })
    .await?;
    let mut events = follow(c.clone(), s.id.clone(), last);
    let (line_tx, mut lines) = mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if line_tx.blocking_send(line.trim_end().to_owned()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    loop {
        tokio::select! {
            e = events.recv() => {
                let Some(e) = e else { bail!("the event stream ended") };
                let e = e?;
                track(&e.event, &mut pending_approval, &mut working);
                print(&r.render(&e, true));
            }
            l = lines.recv() => {
                let Some(l) = l else { return Ok(0) };
                let l = l.trim();
                if l.is_empty() {
                    continue;
                }
                let result = match chat_command(l, pending_approval.as_deref()) {
                    ChatCommand::Quit => return Ok(0),
                    ChatCommand::Help => { eprintln!("{HELP}"); Ok(()) }
                    ChatCommand::Problem(m) => { eprintln!("{m}"); Ok(()) }
                    ChatCommand::End => end_chat(c, &s.id).await.map(|_| ()),
                    ChatCommand::Input(i) => input(c, &s.id, i).await.map(|_| ()),
                };
                if let Err(e) = result {
                    eprintln!("kraal: {e:#}");
                }
            }
            _ = tokio::signal::ctrl_c() => {
                if working {
                    eprintln!("interrupting the turn… (Ctrl-C again when idle leaves)");
                    if let Err(e) = input(c, &s.id, SessionInput::Interrupt).await {
                        eprintln!("kraal: {e:#}");
                    }
                } else {
                    return Ok(0);
                }
            }
        }
    }
}

fn track(e: &AgentEvent, pending: &mut Option<String>, working: &mut bool) {
    match e {
        AgentEvent::ApprovalRequest { request_id, .. } => *pending = Some(request_id.clone()),
        AgentEvent::ApprovalDecision { request_id, .. }
            if pending.as_deref() == Some(request_id) =>
        {
            *pending = None
        }
        AgentEvent::State { state, .. } => {
            *working = matches!(state, SessionState::Working | SessionState::NeedsApproval)
        }
        _ => {}
    }
}

#[derive(Debug, PartialEq)]
enum ChatCommand {
    Input(SessionInput),
    End,
    Quit,
    Help,
    Problem(String),
}

fn chat_command(line: &str, pending: Option<&str>) -> ChatCommand {
    if !line.starts_with('/') {
        return ChatCommand::Input(SessionInput::message(line.to_owned()));
    }
    let mut words = line.splitn(3, char::is_whitespace);
    let cmd = words.next().unwrap_or_default();
    let arg = words.next().map(str::to_owned);
    let rest = words.next().map(str::to_owned);
    let decide = |allow: bool| match arg.clone().or_else(|| pending.map(str::to_owned)) {
        Some(request_id) => ChatCommand::Input(SessionInput::Approval {
            request_id,
            allow,
            message: rest.clone(),
        }),
        None => ChatCommand::Problem("no approval request is pending".into()),
    };
    match cmd {
        "/interrupt" | "/i" => ChatCommand::Input(SessionInput::Interrupt),
        "/approve" | "/a" => decide(true),
        "/deny" | "/d" => decide(false),
        "/end" => ChatCommand::End,
        "/quit" | "/q" | "/exit" => ChatCommand::Quit,
        "/help" | "/h" | "/?" => ChatCommand::Help,
        // `//text` sends a message that starts with a slash.
        _ if line.starts_with("//") => {
            ChatCommand::Input(SessionInput::message(line[1..].to_owned()))
        }
        other => ChatCommand::Problem(format!("unknown command {other}; /help lists them")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_split_across_chunks_and_comments_are_skipped() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nid: 4\ndata: {\"a\"").is_empty());
        let got = p.push(b":1}\n\nid: 5\r\ndata: x\r\ndata: y\r\n\r\n");
        assert_eq!(
            got,
            vec![
                (Some(4), "{\"a\":1}".to_owned()),
                (Some(5), "x\ny".to_owned())
            ]
        );
    }

    #[test]
    fn chat_commands_parse() {
        use ChatCommand::*;
        assert_eq!(
            chat_command("fix it", None),
            Input(SessionInput::message("fix it"))
        );
        assert_eq!(
            chat_command("/approve", Some("r1")),
            Input(SessionInput::Approval {
                request_id: "r1".into(),
                allow: true,
                message: None
            })
        );
        assert_eq!(
            chat_command("/deny r2 not that file", Some("r1")),
            Input(SessionInput::Approval {
                request_id: "r2".into(),
                allow: false,
                message: Some("not that file".into())
            })
        );
        assert!(matches!(chat_command("/approve", None), Problem(_)));
        assert_eq!(
            chat_command("//etc is a dir", None),
            Input(SessionInput::message("/etc is a dir"))
        );
        assert!(matches!(chat_command("/nope", None), Problem(_)));
        assert_eq!(
            chat_command("/interrupt", None),
            Input(SessionInput::Interrupt)
        );
    }
}
