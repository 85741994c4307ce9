//! Agent adapter tests: live runs of the real Claude Code CLI (from `agent-clis/`,
//! installed by `scripts/setup.sh`) against the scripted model server, and replays of
//! transcripts captured from real sessions of every agent (`tests/fixtures/<agent>/`, made by
//! the `kraal` end-to-end tests with `KRAAL_CAPTURE_FIXTURES=1`). `KRAAL_UPDATE_GOLDEN=1`
//! rewrites the expected events.

mod attachments;
mod fixtures;
mod live;
