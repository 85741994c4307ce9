//! Claude Code adapter tests: live runs of the real CLI (from `agent-clis/`, installed by
//! `scripts/setup.sh`) against the scripted model server, and golden tests over captured
//! transcripts. `KRAAL_CAPTURE_FIXTURES=1` re-captures the transcripts from live runs;
//! `KRAAL_UPDATE_GOLDEN=1` rewrites the expected events.

mod fixtures;
mod live;
