//! What a task's attempt came to when its turn ended: how much it changed (from the same
//! diff the review page shows) and whether the project's check command passes.

use std::time::Duration;

use kraal_core::ChecklistItem;
use kraal_engine::{Engine, LineKind, chain};

/// How long a check command may run.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Output of a check kept for the comparison (its end, where failures are).
const CHECK_KEEP: usize = 4096;

/// What [`inspect`] found.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Files changed, lines added, lines removed.
    pub diff: Option<(u32, u32, u32)>,
    /// Exit code and the end of the output.
    pub check: Option<(i32, String)>,
    /// Why something could not be looked at.
    pub note: Option<String>,
}

pub(crate) async fn inspect(
    engine: &Engine,
    ws: &str,
    check: Option<&str>,
    item: Option<&ChecklistItem>,
) -> Outcome {
    let mut out = Outcome::default();
    match engine.review_diff(ws).await {
        Ok(Ok(files)) => {
            let (mut added, mut removed) = (0u32, 0u32);
            for l in files.iter().flat_map(|f| &f.hunks).flat_map(|h| &h.lines) {
                match l.kind {
                    LineKind::Added => added += 1,
                    LineKind::Removed => removed += 1,
                    LineKind::Context => {}
                }
            }
            out.diff = Some((files.len() as u32, added, removed));
        }
        // Not a git checkout: nothing to count.
        Ok(Err(_)) => {}
        Err(e) => out.note = Some(format!("reading its diff failed: {}", chain(&e))),
    }
    if let Some(cmd) = check {
        let script = format!("cd /workspace 2>/dev/null; {cmd}");
        match engine
            .capture(ws, &["sh", "-c", &script], CHECK_TIMEOUT, 256 * 1024)
            .await
        {
            Ok(c) => {
                let mut text = c.stdout;
                text.push_str(&c.stderr);
                out.check = Some((c.code, tail(&text, CHECK_KEEP)));
            }
            Err(e) => {
                out.check = Some((-1, format!("the check could not run: {}", chain(&e))));
            }
        }
    }
    if let Some(item) = item
        && let Err(e) = tick(engine, ws, item).await
    {
        out.note = Some(format!(
            "ticking \"{}\" in {} failed: {e}",
            item.text, item.file
        ));
    }
    out
}

/// Ticks a checklist item's box in the task's checkout and commits that one file (with
/// kraal as the author where the checkout has no identity of its own).
async fn tick(engine: &Engine, ws: &str, item: &ChecklistItem) -> Result<(), String> {
    let (_, client) = engine.guest(ws).await.map_err(|e| chain(&e))?;
    let data = client
        .read_file(&item.file, 1024 * 1024)
        .await
        .map_err(|e| chain(&e))?;
    let text = String::from_utf8(data).map_err(|_| "the file is not UTF-8".to_owned())?;
    let mut found = false;
    let ticked: String = text
        .split_inclusive('\n')
        .map(|l| {
            if !found && l.trim_end_matches(['\n', '\r']) == item.line {
                found = true;
                l.replacen("[ ]", "[x]", 1)
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !found {
        return Err("the item is no longer in the file (changed or ticked already)".into());
    }
    client
        .write_file(&item.file, ticked.as_bytes(), None, false)
        .await
        .map_err(|e| chain(&e))?;
    let script = "cd /workspace && if ! git config user.email >/dev/null; then \
        export GIT_AUTHOR_NAME=kraal GIT_AUTHOR_EMAIL=kraal@localhost \
        GIT_COMMITTER_NAME=kraal GIT_COMMITTER_EMAIL=kraal@localhost; fi; \
        exec git commit -q -m \"$1\" -- \"$2\"";
    let msg = format!("Tick {}: {}", item.file, item.text);
    let c = engine
        .capture(
            ws,
            &["sh", "-c", script, "sh", &msg, &item.file],
            Duration::from_secs(60),
            16 * 1024,
        )
        .await
        .map_err(|e| chain(&e))?;
    if c.code != 0 {
        return Err(format!("git commit: {}", c.stderr.trim()));
    }
    Ok(())
}

/// The last `max` bytes of `s`, cut at a character boundary.
pub(crate) fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_keeps_the_end_at_a_character_boundary() {
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("abcdef", 3), "…def");
        let s = "ééé"; // two bytes each
        assert_eq!(tail(s, 3), "…é");
    }
}
