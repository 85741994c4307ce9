//! Renders a session's normalized events as readable terminal text: streamed assistant
//! text as it arrives, tool calls and results folded to a few lines, approvals with the
//! command that answers them.

use std::fmt::Write as _;

use kraal_core::{AgentEvent, FileChangeKind, SessionEvent, SessionState};

/// Lines of tool output shown before folding.
const TOOL_LINES: usize = 6;

#[derive(Debug, Default)]
pub struct Renderer {
    color: bool,
    /// Deltas seen since the last complete text block, and how much of that was printed.
    streamed: String,
    printed: String,
    /// Whether the cursor is in the middle of a line of streamed text.
    mid_line: bool,
    session: String,
}

/// Agent output is untrusted: control characters (terminal escape sequences included) are
/// shown as `�` instead of being interpreted by the user's terminal.
/// `45 s`, `30 min`, `1 h 30 min`, `2 d`: a duration for people.
pub fn duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 if s % 3600 >= 60 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ if s % 86_400 >= 3600 => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let mut t: String = flat.chars().take(max).collect();
        t.push('…');
        t
    }
}

impl Renderer {
    pub fn new(session: &str, color: bool) -> Self {
        Renderer {
            color,
            session: session.to_owned(),
            ..Default::default()
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    /// Text to print for `e`. `live` is false while replaying history, where streamed
    /// fragments are skipped in favour of the complete blocks that follow them.
    pub fn render(&mut self, e: &SessionEvent, live: bool) -> String {
        let cleaned = SessionEvent {
            seq: e.seq,
            at_ms: e.at_ms,
            event: match &e.event {
                AgentEvent::AssistantDelta { text } => {
                    AgentEvent::AssistantDelta { text: clean(text) }
                }
                AgentEvent::AssistantText { text } => {
                    AgentEvent::AssistantText { text: clean(text) }
                }
                AgentEvent::UserMessage { text, attachments } => AgentEvent::UserMessage {
                    text: clean(text),
                    attachments: attachments.clone(),
                },
                AgentEvent::Thinking { text } => AgentEvent::Thinking { text: clean(text) },
                AgentEvent::ToolResult {
                    id,
                    output,
                    is_error,
                } => AgentEvent::ToolResult {
                    id: id.clone(),
                    output: clean(output),
                    is_error: *is_error,
                },
                AgentEvent::Error { message } => AgentEvent::Error {
                    message: clean(message),
                },
                other => other.clone(),
            },
        };
        let e = &cleaned;
        let mut out = String::new();
        let line = |this: &mut Self, out: &mut String, s: String| {
            if this.mid_line {
                out.push('\n');
                this.mid_line = false;
            }
            out.push_str(&s);
            out.push('\n');
        };
        match &e.event {
            AgentEvent::AssistantDelta { text } => {
                self.streamed.push_str(text);
                if live {
                    self.printed.push_str(text);
                    out.push_str(text);
                    self.mid_line = !text.ends_with('\n');
                }
            }
            AgentEvent::AssistantText { text } => {
                let complete = !self.printed.is_empty() && self.printed.trim() == text.trim();
                if complete {
                    if self.mid_line {
                        out.push('\n');
                        self.mid_line = false;
                    }
                } else {
                    line(self, &mut out, text.trim_end().to_owned());
                }
                self.streamed.clear();
                self.printed.clear();
            }
            AgentEvent::UserMessage { text, .. } => {
                let s = format!("{} {}", self.paint("1;36", "›"), text.trim_end());
                line(self, &mut out, s);
            }
            AgentEvent::Thinking { text } => {
                let s = self.paint("2", &format!("(thinking) {}", one_line(text, 200)));
                line(self, &mut out, s);
            }
            AgentEvent::ToolCall { name, input, .. } => {
                let detail = input
                    .get("command")
                    .or_else(|| input.get("file_path"))
                    .or_else(|| input.get("path"))
                    .or_else(|| input.get("pattern"))
                    .or_else(|| input.get("url"))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| input.to_string());
                let s = format!(
                    "{} {} {}",
                    self.paint("33", "⚙"),
                    clean(name),
                    clean(&one_line(&detail, 160))
                );
                line(self, &mut out, s);
            }
            AgentEvent::ToolResult {
                output, is_error, ..
            } => {
                let lines: Vec<&str> = output.lines().collect();
                let mut s = String::new();
                for (i, l) in lines.iter().take(TOOL_LINES).enumerate() {
                    let lead = if i == 0 { "  ⎿ " } else { "    " };
                    let _ = writeln!(s, "{lead}{}", one_line(l, 200));
                }
                if lines.len() > TOOL_LINES {
                    let _ = writeln!(s, "    … {} more lines", lines.len() - TOOL_LINES);
                }
                if lines.is_empty() {
                    s.push_str("  ⎿ (no output)\n");
                }
                let s = s.trim_end().to_owned();
                let s = if *is_error {
                    self.paint("31", &s)
                } else {
                    self.paint("2", &s)
                };
                line(self, &mut out, s);
            }
            AgentEvent::FileChange { path, kind, .. } => {
                let verb = match kind {
                    FileChangeKind::Created => "created",
                    FileChangeKind::Modified => "modified",
                    FileChangeKind::Deleted => "deleted",
                };
                let s = format!("{} {verb} {}", self.paint("32", "✎"), clean(path));
                line(self, &mut out, s);
            }
            AgentEvent::CommandRun { .. } => {
                // The tool call above already shows the command.
            }
            AgentEvent::ApprovalRequest {
                request_id,
                tool,
                input,
                description,
            } => {
                let what = clean(
                    &description
                        .clone()
                        .unwrap_or_else(|| one_line(&input.to_string(), 200)),
                );
                let (tool, request_id) = (clean(tool), clean(request_id));
                let s = format!(
                    "{} {tool} asks for approval: {what}\n  approve: /approve {request_id}  (kraal approve {} {request_id})\n  deny:    /deny {request_id}  (kraal deny {} {request_id})",
                    self.paint("1;35", "?"),
                    self.session,
                    self.session
                );
                line(self, &mut out, s);
            }
            AgentEvent::ApprovalDecision {
                request_id, allow, ..
            } => {
                let s = self.paint(
                    "2",
                    &format!(
                        "  {} {request_id}",
                        if *allow { "approved" } else { "denied" }
                    ),
                );
                line(self, &mut out, s);
            }
            AgentEvent::Usage {
                input_tokens,
                output_tokens,
                cost_usd,
                ..
            } => {
                let cost = cost_usd.map(|c| format!(", ${c:.4}")).unwrap_or_default();
                let s = self.paint(
                    "2",
                    &format!("· {input_tokens} in / {output_tokens} out tokens{cost}"),
                );
                line(self, &mut out, s);
            }
            AgentEvent::AgentSession { .. } => {}
            AgentEvent::Error { message } => {
                let s = self.paint("31", &format!("✗ {message}"));
                line(self, &mut out, s);
            }
            AgentEvent::State { state, reason } => {
                let label = match state {
                    SessionState::Starting => return out,
                    SessionState::Working => return out,
                    SessionState::WaitingForInput => "waiting for input",
                    SessionState::NeedsApproval => "needs approval",
                    SessionState::Done => "done",
                    SessionState::Failed => "failed",
                };
                let r = reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let code = if *state == SessionState::Failed {
                    "31"
                } else {
                    "2"
                };
                let s = self.paint(code, &format!("[{label}{r}]"));
                line(self, &mut out, s);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, event: AgentEvent) -> SessionEvent {
        SessionEvent {
            seq,
            at_ms: 0,
            event,
        }
    }

    #[test]
    fn streamed_text_is_printed_once_live_and_whole_in_replay() {
        let events = [
            ev(1, AgentEvent::user("hi")),
            ev(2, AgentEvent::AssistantDelta { text: "Hel".into() }),
            ev(3, AgentEvent::AssistantDelta { text: "lo!".into() }),
            ev(
                4,
                AgentEvent::AssistantText {
                    text: "Hello!".into(),
                },
            ),
            ev(
                5,
                AgentEvent::State {
                    state: SessionState::WaitingForInput,
                    reason: None,
                },
            ),
        ];
        let mut live = Renderer::new("se-1", false);
        let text: String = events.iter().map(|e| live.render(e, true)).collect();
        assert_eq!(text, "› hi\nHello!\n[waiting for input]\n");
        let mut replay = Renderer::new("se-1", false);
        let text: String = events.iter().map(|e| replay.render(e, false)).collect();
        assert_eq!(text, "› hi\nHello!\n[waiting for input]\n");
        // Joining mid-block: the part streamed before we were live is not lost.
        let mut late = Renderer::new("se-1", false);
        let mut text = late.render(&events[1], false);
        text += &late.render(&events[2], true);
        text += &late.render(&events[3], true);
        assert_eq!(text, "lo!\nHello!\n");
    }

    #[test]
    fn tools_fold_and_approvals_name_the_answering_command() {
        let mut r = Renderer::new("se-abc", false);
        let call = r.render(
            &ev(
                1,
                AgentEvent::ToolCall {
                    id: "t".into(),
                    name: "Bash".into(),
                    input: serde_json::json!({"command": "ls -la"}),
                },
            ),
            true,
        );
        assert_eq!(call, "⚙ Bash ls -la\n");
        let out = (1..=10)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let res = r.render(
            &ev(
                2,
                AgentEvent::ToolResult {
                    id: "t".into(),
                    output: out,
                    is_error: false,
                },
            ),
            true,
        );
        assert!(res.starts_with("  ⎿ line 1\n    line 2\n"), "{res}");
        assert!(res.ends_with("… 4 more lines\n"), "{res}");
        let ask = r.render(
            &ev(
                3,
                AgentEvent::ApprovalRequest {
                    request_id: "req-1".into(),
                    tool: "Bash".into(),
                    input: serde_json::json!({"command": "rm x"}),
                    description: None,
                },
            ),
            true,
        );
        assert!(ask.contains("kraal approve se-abc req-1"), "{ask}");
        assert!(ask.contains("/deny req-1"), "{ask}");
    }

    #[test]
    fn agent_output_cannot_send_escape_sequences_to_the_terminal() {
        let mut r = Renderer::new("s", true);
        let s = r.render(
            &ev(
                1,
                AgentEvent::AssistantText {
                    text: "ok\x1b]0;pwned\x07\x1b[2J done".into(),
                },
            ),
            true,
        );
        assert_eq!(s, "ok\u{fffd}]0;pwned\u{fffd}\u{fffd}[2J done\n");
        let s = r.render(
            &ev(
                2,
                AgentEvent::Error {
                    message: "x".into(),
                },
            ),
            true,
        );
        assert_eq!(s, "\x1b[31m✗ x\x1b[0m\n", "our own colors still work");
    }
}
