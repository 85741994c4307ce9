//! `kraal review`, `kraal ports` and `kraal push`: a workspace's changes as an
//! editor-friendly listing (`path:line:` on every line, so quickfix lists and terminals
//! jump to it) with its comments, comments added from flags or written in `$EDITOR`, and
//! sent to an agent; the live ports and their preview links; the devices that get push
//! notifications. Speaks only the HTTP API.

use std::fmt::Write as _;
use std::io::IsTerminal;

use anyhow::{Context, bail};
use hyper::Method;
use kraal_api::*;

use crate::cli::{PushCommand, ReviewArgs};
use crate::client::{Client, enc};

/// A `--comment FILE:LINE=TEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentArg {
    pub path: String,
    pub line: u32,
    pub body: String,
}

/// Parses `FILE:LINE=TEXT` (the file may contain colons; the text may contain `=`).
pub fn parse_comment(s: &str) -> Result<CommentArg, String> {
    let (place, body) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not FILE:LINE=TEXT"))?;
    let (path, line) = place
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not FILE:LINE=TEXT (no line number)"))?;
    let line: u32 = line
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{line:?} in {s:?} is not a line number"))?;
    if path.trim().is_empty() || body.trim().is_empty() {
        return Err(format!("{s:?} needs a file and a comment text"));
    }
    Ok(CommentArg {
        path: path.trim().to_owned(),
        line,
        body: body.trim().to_owned(),
    })
}

/// Where a listed line is: path, side, number.
type Place = (String, String, u32);

/// The review as text: every diff line prefixed with `path:line:` (removed lines with
/// `path:~line:`, HEAD's numbering), comments under their lines as `#>` lines.
pub fn render(r: &Review) -> (String, Vec<Place>) {
    let mut out = String::new();
    let mut places = Vec::new();
    let mut shown = Vec::new();
    for f in &r.files {
        let _ = writeln!(
            out,
            "== {} ({}{})",
            f.path,
            f.status,
            f.old_path
                .as_ref()
                .map(|o| format!(" from {o}"))
                .unwrap_or_default()
        );
        if f.binary {
            let _ = writeln!(out, "   (binary)");
        }
        for h in &f.hunks {
            let _ = writeln!(out, "{}", h.header);
            for l in &h.lines {
                let (side, n, mark) = match l.kind.as_str() {
                    "removed" => ("old", l.old.unwrap_or(0), '-'),
                    "added" => ("new", l.new.unwrap_or(0), '+'),
                    _ => ("new", l.new.unwrap_or(0), ' '),
                };
                let pos = if side == "old" {
                    format!("{}:~{n}:", f.path)
                } else {
                    format!("{}:{n}:", f.path)
                };
                let _ = writeln!(out, "{pos}{mark}{}", crate::render::clean(&l.text));
                places.push((f.path.clone(), side.to_owned(), n));
                for c in r
                    .comments
                    .iter()
                    .filter(|c| c.path == f.path && c.side == side && c.line == n)
                {
                    shown.push(c.id.clone());
                    let _ = writeln!(out, "{}", comment_line(c));
                }
            }
        }
        out.push('\n');
    }
    let rest: Vec<&ReviewComment> = r
        .comments
        .iter()
        .filter(|c| !shown.contains(&c.id))
        .collect();
    if !rest.is_empty() {
        let _ = writeln!(out, "== comments on lines not in the diff now");
        for c in rest {
            let _ = writeln!(
                out,
                "{}:{}{}:\n{}",
                c.path,
                if c.side == "old" { "~" } else { "" },
                c.line,
                comment_line(c)
            );
        }
    }
    (out, places)
}

fn comment_line(c: &ReviewComment) -> String {
    let state = if c.resolved {
        "resolved"
    } else if c.sent_to.is_some() {
        "sent"
    } else {
        "open"
    };
    let body = crate::render::clean(&c.body).replace('\n', "\n#>   ");
    format!("#> [{} {state}] {}: {body}", c.id, c.author)
}

/// Comments written in an edited listing: `>>` lines under a diff line of it.
pub fn parse_edited(text: &str, places: &[Place], listing: &str) -> Vec<(Place, String)> {
    // The listing's diff lines, in order, each with its place: an edited file is read by
    // finding them again (the user adds lines, and does not change these).
    let listed: Vec<&str> = listing
        .lines()
        .filter(|l| {
            let meta = ["==", "@@", "#>", "   ("].iter().any(|m| l.starts_with(m));
            !meta && !l.trim().is_empty()
        })
        .collect();
    let mut out: Vec<(Place, String)> = Vec::new();
    let mut current: Option<Place> = None;
    // The comment being written (consecutive `>>` lines are one comment).
    let mut open = false;
    let mut next = 0usize;
    for line in text.lines() {
        if let Some(body) = line.trim_start().strip_prefix(">>") {
            let Some(p) = current.clone() else { continue };
            match out.last_mut() {
                Some((_, b)) if open => {
                    b.push('\n');
                    b.push_str(body.trim());
                }
                _ => out.push((p, body.trim().to_owned())),
            }
            open = true;
            continue;
        }
        open = false;
        if let Some(i) = listed
            .get(next..)
            .and_then(|rest| rest.iter().position(|l| *l == line))
        {
            let idx = next + i;
            current = places.get(idx).cloned();
            next = idx + 1;
        }
    }
    out.retain(|(_, b)| !b.trim().is_empty());
    out
}

async fn fetch(c: &Client, ws: &str) -> anyhow::Result<Review> {
    Ok(c.get(&format!("/v1/workspaces/{}/review", enc(ws))).await?)
}

async fn add(
    c: &Client,
    ws: &str,
    path: &str,
    line: u32,
    side: &str,
    body: &str,
) -> anyhow::Result<ReviewComment> {
    Ok(c.send(
        Method::POST,
        &format!("/v1/workspaces/{}/comments", enc(ws)),
        Some(&CreateComment {
            path: path.to_owned(),
            line,
            side: Some(side.to_owned()),
            body: body.to_owned(),
        }),
    )
    .await?)
}

/// Opens `text` in the user's editor and returns what they saved.
fn edit(text: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let f = dir.path().join("review.diff");
    std::fs::write(&f, text)?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // The editor may carry arguments (`code --wait`).
    let status = kraal_sandbox::process::Cmd::new("sh")
        .args(["-c", &format!("{editor} \"$1\""), "kraal-review"])
        .arg(f.as_os_str())
        .interactive()
        .with_context(|| format!("cannot run the editor {editor:?} (set $EDITOR)"))?;
    if !status.success() {
        bail!("the editor {editor:?} exited with {status}; no comments added");
    }
    Ok(std::fs::read_to_string(&f)?)
}

pub async fn run(c: &Client, a: ReviewArgs) -> anyhow::Result<i32> {
    let ws = a.workspace.clone();
    let side = if a.removed { "old" } else { "new" };
    for id in &a.resolve {
        let _: ReviewComment = c
            .send(
                Method::PATCH,
                &format!("/v1/workspaces/{}/comments/{}", enc(&ws), enc(id)),
                Some(&UpdateComment { resolved: true }),
            )
            .await?;
        eprintln!("resolved {id}");
    }
    for id in &a.reopen {
        let _: ReviewComment = c
            .send(
                Method::PATCH,
                &format!("/v1/workspaces/{}/comments/{}", enc(&ws), enc(id)),
                Some(&UpdateComment { resolved: false }),
            )
            .await?;
        eprintln!("reopened {id}");
    }
    for id in &a.delete {
        c.raw(
            Method::DELETE,
            &format!("/v1/workspaces/{}/comments/{}", enc(&ws), enc(id)),
            None,
        )
        .await?;
        eprintln!("deleted {id}");
    }
    let mut added = Vec::new();
    for cm in &a.comment {
        let r = add(c, &ws, &cm.path, cm.line, side, &cm.body).await?;
        eprintln!("{} on {}:{}", r.id, r.path, r.line);
        added.push(r.id);
    }
    if a.edit {
        let review = fetch(c, &ws).await?;
        let (listing, places) = render(&review);
        let header = "# Write comments as lines starting with >> under the line they are about.\n# Save and quit to add them; lines starting with # are ignored.\n\n";
        let edited = edit(&format!("{header}{listing}"))?;
        let comments = parse_edited(&edited, &places, &listing);
        if comments.is_empty() {
            eprintln!("no new comments");
        }
        for ((path, side, line), body) in comments {
            let r = add(c, &ws, &path, line, &side, &body).await?;
            eprintln!("{} on {}:{}", r.id, r.path, r.line);
            added.push(r.id);
        }
    }
    if let Some(target) = &a.send {
        let req = SendReview {
            comments: if a.comment.is_empty() && !a.edit {
                Vec::new()
            } else {
                added.clone()
            },
            session: (target != "new").then(|| target.clone()),
            agent: a.agent,
        };
        let sent: SentReview = c
            .send(
                Method::POST,
                &format!("/v1/workspaces/{}/review/send", enc(&ws)),
                Some(&req),
            )
            .await?;
        eprintln!(
            "sent {} comment(s) to {}",
            sent.comments.len(),
            sent.session
        );
        println!("{}", sent.session);
        return Ok(0);
    }
    let changed = !a.comment.is_empty()
        || a.edit
        || !a.resolve.is_empty()
        || !a.reopen.is_empty()
        || !a.delete.is_empty();
    if changed && !a.json {
        return Ok(0);
    }
    let review = fetch(c, &ws).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&review)?);
        return Ok(0);
    }
    if let Some(e) = &review.error {
        bail!("{ws} has no git history to compare with: {e}");
    }
    let (listing, _) = render(&review);
    if review.files.is_empty() && review.comments.is_empty() {
        eprintln!("no uncommitted changes in {ws}");
    }
    print!("{listing}");
    if std::io::stdout().is_terminal() && !review.files.is_empty() {
        eprintln!(
            "comment with: kraal review {ws} --comment FILE:LINE=TEXT (or --edit), then --send SESSION|new"
        );
    }
    Ok(0)
}

pub async fn ports(c: &Client, ws: &str, json: bool) -> anyhow::Result<i32> {
    let list: LivePortList = c.get(&format!("/v1/workspaces/{}/ports", enc(ws))).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if list.ports.is_empty() {
        eprintln!("nothing listens in {ws}");
        return Ok(0);
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["PORT", "PROCESS", "LISTENING ON", "PREVIEW"]);
    for p in &list.ports {
        t.add_row([
            p.port.to_string(),
            p.process.clone().unwrap_or_default(),
            if p.listening {
                p.addresses.join(", ")
            } else {
                "(declared, not listening)".into()
            },
            p.preview_origin
                .clone()
                .unwrap_or_else(|| p.preview_path.clone()),
        ]);
    }
    println!("{t}");
    Ok(0)
}

pub async fn push(c: &Client, cmd: PushCommand) -> anyhow::Result<i32> {
    match cmd {
        PushCommand::Ls { json } => {
            let l: PushSubscriptionList = c.get("/v1/push/subscriptions").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
                return Ok(0);
            }
            if l.subscriptions.is_empty() {
                eprintln!(
                    "no device gets notifications; turn them on in the web UI (Notifications)"
                );
                return Ok(0);
            }
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::NOTHING);
            t.set_header([
                "ID",
                "DEVICE",
                "LOGIN",
                "SERVICE",
                "KINDS",
                "WORKSPACES",
                "LAST SENT",
            ]);
            for s in &l.subscriptions {
                t.add_row([
                    s.id.clone(),
                    s.label.clone(),
                    s.token.clone().unwrap_or_else(|| "local".into()),
                    s.service.clone(),
                    s.kinds
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    if s.workspaces.is_empty() {
                        "all".into()
                    } else {
                        s.workspaces.join(",")
                    },
                    s.last_error
                        .as_ref()
                        .map(|e| format!("failed: {e}"))
                        .or_else(|| s.last_sent_at.clone())
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            println!("{t}");
        }
        PushCommand::Rm { id } => {
            c.raw(
                Method::DELETE,
                &format!("/v1/push/subscriptions/{}", enc(&id)),
                None,
            )
            .await?;
            eprintln!("removed {id}");
        }
        PushCommand::Test { id } => {
            c.raw(
                Method::POST,
                &format!("/v1/push/subscriptions/{}/test", enc(&id)),
                None,
            )
            .await?;
            eprintln!("test notification queued for {id}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_flags_are_parsed_strictly() {
        assert_eq!(
            parse_comment("src/a:b.rs:12=use x = 1 here").unwrap(),
            CommentArg {
                path: "src/a:b.rs".into(),
                line: 12,
                body: "use x = 1 here".into()
            }
        );
        for bad in [
            "src/a.rs=text",
            "src/a.rs:0=x",
            "src/a.rs:x=y",
            ":3=x",
            "a.rs:3=  ",
            "nothing",
        ] {
            assert!(parse_comment(bad).is_err(), "{bad}");
        }
    }

    fn review() -> Review {
        Review {
            workspace: "w".into(),
            files: vec![ReviewFile {
                path: "a.rs".into(),
                old_path: None,
                status: "modified".into(),
                binary: false,
                hunks: vec![ReviewHunk {
                    header: "@@ -1,2 +1,2 @@".into(),
                    lines: vec![
                        ReviewLine {
                            kind: "context".into(),
                            old: Some(1),
                            new: Some(1),
                            text: "fn main() {".into(),
                        },
                        ReviewLine {
                            kind: "removed".into(),
                            old: Some(2),
                            new: None,
                            text: "  old();".into(),
                        },
                        ReviewLine {
                            kind: "added".into(),
                            old: None,
                            new: Some(2),
                            text: "  new();".into(),
                        },
                    ],
                }],
            }],
            comments: vec![ReviewComment {
                id: "rc-1".into(),
                path: "a.rs".into(),
                line: 2,
                side: "new".into(),
                body: "why?".into(),
                excerpt: String::new(),
                author: "me".into(),
                created_at: String::new(),
                resolved: false,
                sent_to: None,
                sent_at: None,
            }],
            error: None,
        }
    }

    #[test]
    fn the_listing_names_every_line_and_shows_comments_under_theirs() {
        let (text, places) = render(&review());
        assert!(text.contains("a.rs:1: fn main() {\n"), "{text}");
        assert!(text.contains("a.rs:~2:-  old();\n"), "{text}");
        assert!(
            text.contains("a.rs:2:+  new();\n#> [rc-1 open] me: why?\n"),
            "{text}"
        );
        assert_eq!(places.len(), 3);
        assert_eq!(places[1], ("a.rs".into(), "old".into(), 2));
    }

    #[test]
    fn comments_written_in_the_editor_land_on_the_line_above_them() {
        let (listing, places) = render(&review());
        let edited = listing
            .replace(
                "a.rs:~2:-  old();\n",
                "a.rs:~2:-  old();\n>> keep the old call\n>> for now\n",
            )
            .replace(
                "a.rs:1: fn main() {\n",
                "a.rs:1: fn main() {\n  >> name it run\n",
            );
        let got = parse_edited(&edited, &places, &listing);
        assert_eq!(
            got,
            vec![
                (("a.rs".into(), "new".into(), 1), "name it run".into()),
                (
                    ("a.rs".into(), "old".into(), 2),
                    "keep the old call\nfor now".into()
                ),
            ]
        );
        assert!(parse_edited(&listing, &places, &listing).is_empty());
    }
}
