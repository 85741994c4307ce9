//! Golden tests over captured Claude Code transcripts (`tests/fixtures/claude/*.jsonl`):
//! parsing them must give exactly the committed events, and every line must parse.

use std::path::Path;

#[test]
fn transcripts_parse_to_the_committed_events() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/claude");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "jsonl") {
            continue;
        }
        let lines: Vec<String> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let events = crate::live::parse_all(&lines);
        let got = serde_json::to_string_pretty(&events).unwrap() + "\n";
        let golden = p.with_extension("events.json");
        if std::env::var_os("KRAAL_UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} missing (KRAAL_UPDATE_GOLDEN=1)", golden.display()));
        assert!(
            got == want,
            "{} parses differently than {}",
            p.display(),
            golden.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "expected the captured transcripts, found {checked}"
    );
}

#[test]
fn malformed_lines_inside_a_transcript_are_reported_and_skipped() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/claude");
    let text = std::fs::read_to_string(dir.join("write-file.jsonl")).unwrap();
    let mut p = kraal_agents::claude::ClaudeParser::new();
    let (mut events, mut errors) = (0, 0);
    for (i, l) in text.lines().enumerate() {
        // Corrupt every fifth line: truncated JSON, as from a killed process.
        let l = if i % 5 == 2 { &l[..l.len() / 2] } else { l };
        match p.parse_line(l) {
            Ok(ev) => events += ev.len(),
            Err(_) => errors += 1,
        }
    }
    assert!(errors > 0 && events > 0, "errors={errors} events={events}");
}
