//! Reviewing a workspace's changes: its diff against `HEAD` (untracked files included, as
//! added files) parsed into files, hunks and numbered lines; comments on single lines,
//! checked against the file they point into and stored with the code around them; and
//! sending a set of comments to an agent session as one message that quotes each line.

use std::time::Duration;

use kraal_store::{CommentRecord, WorkspaceRecord};
use rand::RngCore;

use crate::{Engine, EngineError};

/// Largest diff read from a workspace.
const MAX_DIFF: usize = 8 * 1024 * 1024;
/// Largest file read to check or quote a comment, and to show an untracked file.
const MAX_FILE: u64 = 2 * 1024 * 1024;
/// Untracked files shown at most.
const MAX_UNTRACKED: usize = 100;
/// Lines of context on each side of a commented line in its excerpt.
const CONTEXT: u32 = 3;
/// Longest comment.
pub const MAX_COMMENT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Context,
    Added,
    Removed,
}

/// One line of a hunk with its numbers in the old (`HEAD`) and new (working tree) file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffLine {
    pub kind: LineKind,
    pub old: Option<u32>,
    pub new: Option<u32>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// The `@@ -a,b +c,d @@ …` line.
    pub header: String,
    pub lines: Vec<DiffLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffFile {
    /// The path in the working tree (the new path of a rename).
    pub path: String,
    /// The path in `HEAD` when it differs (renames).
    pub old_path: Option<String>,
    /// `modified`, `added`, `deleted`, `renamed`, or `untracked`.
    pub status: &'static str,
    pub binary: bool,
    pub hunks: Vec<Hunk>,
}

/// Which file a comment's line number counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The working tree (added and unchanged lines).
    New,
    /// `HEAD` (removed lines).
    Old,
}

impl Side {
    pub fn parse(s: &str) -> Result<Side, EngineError> {
        match s {
            "new" | "" => Ok(Side::New),
            "old" => Ok(Side::Old),
            other => Err(EngineError::Invalid(format!(
                "side {other:?} is neither \"new\" (the working tree) nor \"old\" (HEAD)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::New => "new",
            Side::Old => "old",
        }
    }
}

/// A comment to add.
#[derive(Debug, Clone)]
pub struct NewComment {
    pub path: String,
    pub line: u32,
    pub side: Side,
    pub body: String,
}

/// Where a set of comments goes.
#[derive(Debug, Clone)]
pub enum ReviewTarget {
    /// A session of the workspace (id or unique prefix).
    Session(String),
    /// A new session with this spec.
    New(kraal_core::AgentSpec),
}

/// `git diff` output cut into files, hunks and numbered lines.
pub fn parse_diff(diff: &str) -> Vec<DiffFile> {
    let mut files: Vec<DiffFile> = Vec::new();
    let (mut old_no, mut new_no) = (0u32, 0u32);
    for line in diff.lines() {
        if let Some(rest) = line.strip_prefix("diff --git ") {
            let path = rest
                .rsplit_once(" b/")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_else(|| rest.to_owned());
            files.push(DiffFile {
                path: unquote(&path),
                old_path: None,
                status: "modified",
                binary: false,
                hunks: Vec::new(),
            });
            continue;
        }
        let Some(f) = files.last_mut() else { continue };
        if f.hunks.is_empty()
            || !matches!(line.as_bytes().first(), Some(b' ' | b'+' | b'-' | b'\\'))
        {
            if line.starts_with("new file mode") {
                f.status = "added";
            } else if line.starts_with("deleted file mode") {
                f.status = "deleted";
            } else if let Some(from) = line.strip_prefix("rename from ") {
                f.status = "renamed";
                f.old_path = Some(unquote(from));
            } else if line.starts_with("Binary files ") {
                f.binary = true;
            } else if let Some(h) = line.strip_prefix("@@ ") {
                let (o, n) = hunk_starts(h);
                (old_no, new_no) = (o, n);
                f.hunks.push(Hunk {
                    header: line.to_owned(),
                    lines: Vec::new(),
                });
            }
            continue;
        }
        let Some(h) = f.hunks.last_mut() else {
            continue;
        };
        let (kind, text) = match line.as_bytes()[0] {
            b'+' => (LineKind::Added, &line[1..]),
            b'-' => (LineKind::Removed, &line[1..]),
            b' ' => (LineKind::Context, &line[1..]),
            // "\ No newline at end of file"
            _ => continue,
        };
        let (old, new) = match kind {
            LineKind::Added => {
                new_no += 1;
                (None, Some(new_no))
            }
            LineKind::Removed => {
                old_no += 1;
                (Some(old_no), None)
            }
            LineKind::Context => {
                old_no += 1;
                new_no += 1;
                (Some(old_no), Some(new_no))
            }
        };
        h.lines.push(DiffLine {
            kind,
            old,
            new,
            text: text.to_owned(),
        });
    }
    files
}

/// The line numbers before each hunk's first line (`-a,b +c,d` gives `a-1`, `c-1`).
fn hunk_starts(h: &str) -> (u32, u32) {
    let mut it = h.split_whitespace();
    let num = |s: Option<&str>, sign: char| {
        s.and_then(|s| s.strip_prefix(sign))
            .and_then(|s| s.split(',').next())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(1)
    };
    let o = num(it.next(), '-');
    let n = num(it.next(), '+');
    (o.saturating_sub(1), n.saturating_sub(1))
}

/// A pathspec leaving out kraal's own files in the checkout.
const KRAAL_FILES: &str = ":(exclude).kraal";

/// Git quotes paths with unusual characters (`"a\tb"`); kraal asks it not to escape
/// non-ASCII (`core.quotePath=false`), so only the quotes and simple escapes remain.
fn unquote(p: &str) -> String {
    let Some(inner) = p.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return p.to_owned();
    };
    inner
        .replace("\\t", "\t")
        .replace("\\n", "\n")
        .replace("\\\"", "\"")
        .replace("\\\\", "\\")
}

/// A file that was not in git yet, as an added file.
pub fn untracked_file(path: &str, content: Option<&str>) -> DiffFile {
    let lines: Vec<DiffLine> = content
        .map(|c| {
            c.lines()
                .enumerate()
                .map(|(i, l)| DiffLine {
                    kind: LineKind::Added,
                    old: None,
                    new: Some(i as u32 + 1),
                    text: l.to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    DiffFile {
        path: path.to_owned(),
        old_path: None,
        status: "untracked",
        binary: content.is_none(),
        hunks: if lines.is_empty() {
            Vec::new()
        } else {
            vec![Hunk {
                header: format!("@@ -0,0 +1,{} @@", lines.len()),
                lines,
            }]
        },
    }
}

/// The lines around `line` (1-based) of `content`, numbered, the line itself marked.
pub fn excerpt(content: &str, line: u32) -> Option<String> {
    let lines: Vec<&str> = content.lines().collect();
    if line == 0 || line as usize > lines.len() {
        return None;
    }
    let from = line.saturating_sub(CONTEXT).max(1);
    let to = (line + CONTEXT).min(lines.len() as u32);
    let width = to.to_string().len();
    let mut out = String::new();
    for n in from..=to {
        let mark = if n == line { '>' } else { ' ' };
        out.push_str(&format!("{mark} {n:>width$} | {}\n", lines[n as usize - 1]));
    }
    Some(out)
}

/// The message that carries `comments` to an agent.
pub fn review_message(comments: &[CommentRecord]) -> String {
    let mut m = format!(
        "Review comments on your changes in this workspace ({} comment{}). Please address each one:\n",
        comments.len(),
        if comments.len() == 1 { "" } else { "s" }
    );
    for (i, c) in comments.iter().enumerate() {
        let where_ = if c.side == "old" {
            format!(
                "`{}` line {} (a line you removed; numbered as in HEAD)",
                c.path, c.line
            )
        } else {
            format!("`{}` line {}", c.path, c.line)
        };
        m.push_str(&format!(
            "\n{}. {where_}:\n```\n{}```\n{}\n",
            i + 1,
            c.excerpt,
            c.body.trim()
        ));
    }
    m
}

impl Engine {
    async fn git_out(
        &self,
        ws: &WorkspaceRecord,
        args: &[&str],
        max: usize,
    ) -> Result<crate::Captured, EngineError> {
        let mut argv = vec!["git", "-c", "core.quotePath=false", "-C", "/workspace"];
        argv.extend_from_slice(args);
        self.capture(ws.id.as_str(), &argv, Duration::from_secs(60), max)
            .await
    }

    /// The workspace's uncommitted changes against `HEAD`, untracked files as added ones
    /// (kraal's own files under `.kraal/`, session logs and attachments, are not changes).
    /// `Ok(Err(why))` when the checkout has no git history to compare with.
    pub async fn review_diff(
        &self,
        reference: &str,
    ) -> Result<Result<Vec<DiffFile>, String>, EngineError> {
        let (rec, client) = self.guest(reference).await?;
        let tracked = self
            .git_out(
                &rec,
                &[
                    "diff",
                    "HEAD",
                    "--no-color",
                    "--no-ext-diff",
                    "-M",
                    "--",
                    ".",
                    KRAAL_FILES,
                ],
                MAX_DIFF,
            )
            .await?;
        if tracked.code != 0 {
            return Ok(Err(tracked.stderr.trim().to_owned()));
        }
        let mut files = parse_diff(&tracked.stdout);
        let untracked = self
            .git_out(
                &rec,
                &[
                    "ls-files",
                    "--others",
                    "--exclude-standard",
                    "-z",
                    "--",
                    ".",
                    KRAAL_FILES,
                ],
                256 * 1024,
            )
            .await?;
        for path in untracked
            .stdout
            .split('\0')
            .filter(|s| !s.is_empty())
            .take(MAX_UNTRACKED)
        {
            let content = client.read_file(path, MAX_FILE).await.ok();
            let text = content
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .filter(|t| !t.contains('\0'));
            files.push(untracked_file(path, text));
        }
        Ok(Ok(files))
    }

    /// The text of `path` on one side: the working tree's file, or `HEAD`'s version.
    async fn side_text(
        &self,
        rec: &WorkspaceRecord,
        path: &str,
        side: Side,
    ) -> Result<String, EngineError> {
        let missing =
            |why: String| EngineError::Invalid(format!("cannot comment on {path}: {why}"));
        let bytes = match side {
            Side::New => {
                let (_, client) = self.guest(rec.id.as_str()).await?;
                client
                    .read_file(path, MAX_FILE)
                    .await
                    .map_err(|e| missing(e.to_string()))?
            }
            Side::Old => {
                let spec = format!("HEAD:{path}");
                let c = self
                    .git_out(rec, &["show", &spec], MAX_FILE as usize)
                    .await?;
                if c.code != 0 {
                    return Err(missing(format!("it is not in HEAD ({})", c.stderr.trim())));
                }
                c.stdout.into_bytes()
            }
        };
        String::from_utf8(bytes).map_err(|_| missing("it is not a text file".into()))
    }

    /// Adds a comment on one line; the line must exist in that side's file.
    pub async fn add_comment(
        &self,
        reference: &str,
        c: NewComment,
        author: &str,
    ) -> Result<CommentRecord, EngineError> {
        let body = c.body.trim();
        if body.is_empty() {
            return Err(EngineError::Invalid("the comment is empty".into()));
        }
        if body.len() > MAX_COMMENT {
            return Err(EngineError::Invalid(format!(
                "the comment is {} bytes; the limit is {MAX_COMMENT}",
                body.len()
            )));
        }
        let path = c.path.trim().trim_start_matches("./");
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|p| p == "..") {
            return Err(EngineError::Invalid(format!(
                "{:?} is not a path inside the checkout",
                c.path
            )));
        }
        let rec = self.resolve(reference)?;
        let text = self.side_text(&rec, path, c.side).await?;
        let lines = text.lines().count();
        let excerpt = excerpt(&text, c.line).ok_or_else(|| {
            EngineError::Invalid(format!(
                "{path} has no line {} ({} has {lines} line{})",
                c.line,
                if c.side == Side::Old {
                    "its HEAD version"
                } else {
                    "it"
                },
                if lines == 1 { "" } else { "s" }
            ))
        })?;
        let mut id = [0u8; 6];
        rand::thread_rng().fill_bytes(&mut id);
        let r = CommentRecord {
            id: format!("rc-{}", hex::encode(id)),
            workspace_id: rec.id.to_string(),
            path: path.to_owned(),
            line: c.line,
            side: c.side.as_str().to_owned(),
            body: body.to_owned(),
            excerpt,
            author: author.to_owned(),
            created_at: kraal_store::now(),
            resolved_at: None,
            sent_to: None,
            sent_at: None,
        };
        self.store.insert_comment(&r)?;
        Ok(r)
    }

    pub fn comments(&self, reference: &str) -> Result<Vec<CommentRecord>, EngineError> {
        let rec = self.resolve(reference)?;
        Ok(self.store.comments(rec.id.as_str())?)
    }

    /// One comment of a workspace.
    pub fn comment(&self, reference: &str, id: &str) -> Result<CommentRecord, EngineError> {
        let rec = self.resolve(reference)?;
        self.store
            .comment(id)?
            .filter(|c| c.workspace_id == rec.id.as_str())
            .ok_or_else(|| EngineError::NoComment {
                id: id.to_owned(),
                workspace: rec.name.to_string(),
            })
    }

    pub fn resolve_comment(
        &self,
        reference: &str,
        id: &str,
        resolved: bool,
    ) -> Result<CommentRecord, EngineError> {
        let c = self.comment(reference, id)?;
        self.store.set_comment_resolved(&c.id, resolved)?;
        self.comment(reference, id)
    }

    pub fn delete_comment(&self, reference: &str, id: &str) -> Result<(), EngineError> {
        let c = self.comment(reference, id)?;
        self.store.delete_comment(&c.id)?;
        Ok(())
    }

    /// Sends comments to a session as one message: `ids`, or every unresolved comment
    /// not sent yet. Returns the session and the comments sent.
    pub async fn send_review(
        self: &std::sync::Arc<Self>,
        reference: &str,
        ids: &[String],
        target: ReviewTarget,
    ) -> Result<(kraal_store::SessionRecord, Vec<CommentRecord>), EngineError> {
        let rec = self.resolve(reference)?;
        let all = self.store.comments(rec.id.as_str())?;
        let chosen: Vec<CommentRecord> = if ids.is_empty() {
            all.into_iter()
                .filter(|c| c.resolved_at.is_none() && c.sent_at.is_none())
                .collect()
        } else {
            let mut v = Vec::new();
            for id in ids {
                let c = all.iter().find(|c| &c.id == id).ok_or_else(|| {
                    EngineError::Invalid(format!("workspace {} has no comment {id}", rec.name))
                })?;
                v.push(c.clone());
            }
            v
        };
        if chosen.is_empty() {
            return Err(EngineError::Invalid(format!(
                "workspace {} has no unresolved comments that were not sent yet",
                rec.name
            )));
        }
        let text = review_message(&chosen);
        let session = match target {
            ReviewTarget::Session(s) => {
                let s = self.session(&s)?;
                if s.workspace_id != rec.id {
                    return Err(EngineError::Invalid(format!(
                        "session {} belongs to another workspace",
                        s.id
                    )));
                }
                self.send_input(s.id.as_str(), kraal_core::SessionInput::message(text))
                    .await?
            }
            ReviewTarget::New(spec) => {
                self.create_session(
                    rec.id.as_str(),
                    crate::NewSession {
                        spec,
                        message: Some(text),
                    },
                )
                .await?
            }
        };
        let ids: Vec<String> = chosen.iter().map(|c| c.id.clone()).collect();
        self.store.mark_comments_sent(&ids, session.id.as_str())?;
        self.event(
            &rec.id,
            "info",
            &format!("{} review comment(s) sent to {}", ids.len(), session.id),
        );
        let sent = self
            .store
            .comments(rec.id.as_str())?
            .into_iter()
            .filter(|c| ids.contains(&c.id))
            .collect();
        Ok((session, sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "diff --git a/src/main.rs b/src/main.rs
index 1..2 100644
--- a/src/main.rs
+++ b/src/main.rs
@@ -1,3 +1,4 @@
 fn main() {
-    old();
+    new();
+    more();
 }
\\ No newline at end of file
diff --git a/gone.txt b/gone.txt
deleted file mode 100644
--- a/gone.txt
+++ /dev/null
@@ -1 +0,0 @@
-bye
diff --git a/a.bin b/a.bin
new file mode 100644
Binary files /dev/null and b/a.bin differ
diff --git a/old name.txt b/new name.txt
similarity index 90%
rename from old name.txt
rename to new name.txt
";

    #[test]
    fn diffs_are_parsed_into_numbered_lines() {
        let f = parse_diff(DIFF);
        assert_eq!(f.len(), 4);
        assert_eq!(
            (f[0].path.as_str(), f[0].status),
            ("src/main.rs", "modified")
        );
        let l = &f[0].hunks[0].lines;
        assert_eq!(l.len(), 5);
        assert_eq!(
            (l[0].old, l[0].new, l[0].kind),
            (Some(1), Some(1), LineKind::Context)
        );
        assert_eq!(
            (l[1].old, l[1].new, l[1].kind),
            (Some(2), None, LineKind::Removed)
        );
        assert_eq!(
            (l[2].old, l[2].new, l[2].text.as_str()),
            (None, Some(2), "    new();")
        );
        assert_eq!((l[3].new, l[4].old, l[4].new), (Some(3), Some(3), Some(4)));
        assert_eq!(f[1].status, "deleted");
        assert_eq!(f[1].hunks[0].lines[0].old, Some(1));
        assert!(f[2].binary && f[2].status == "added");
        assert_eq!(f[3].status, "renamed");
        assert_eq!(f[3].path, "new name.txt");
        assert_eq!(f[3].old_path.as_deref(), Some("old name.txt"));
        assert!(parse_diff("").is_empty());
        assert!(parse_diff("garbage\n+++ nothing\n@@ x").is_empty());
    }

    #[test]
    fn excerpts_mark_the_line_and_refuse_lines_that_do_not_exist() {
        let text = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let e = excerpt(text, 5).unwrap();
        assert_eq!(
            e,
            "  2 | b\n  3 | c\n  4 | d\n> 5 | e\n  6 | f\n  7 | g\n  8 | h\n"
        );
        assert!(excerpt(text, 1).unwrap().starts_with("> 1 | a\n"));
        assert!(excerpt(text, 0).is_none());
        assert!(excerpt(text, 9).is_none());
        assert!(excerpt("", 1).is_none());
    }

    #[test]
    fn the_message_quotes_file_line_and_code() {
        let c = CommentRecord {
            id: "rc-1".into(),
            workspace_id: "ws".into(),
            path: "src/main.rs".into(),
            line: 2,
            side: "new".into(),
            body: "  use a constant  ".into(),
            excerpt: "  1 | fn main() {\n> 2 |     new();\n".into(),
            author: "me".into(),
            created_at: String::new(),
            resolved_at: None,
            sent_to: None,
            sent_at: None,
        };
        let m = review_message(std::slice::from_ref(&c));
        assert!(m.contains("1 comment)"), "{m}");
        assert!(m.contains("1. `src/main.rs` line 2:\n```\n  1 | fn main() {\n> 2 |     new();\n```\nuse a constant\n"), "{m}");
        let old = CommentRecord {
            side: "old".into(),
            ..c
        };
        assert!(review_message(&[old]).contains("a line you removed"));
    }
}
