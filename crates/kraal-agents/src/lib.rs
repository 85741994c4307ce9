//! Agent adapters. Each one is pure: it builds the command line for an agent CLI, encodes
//! what the user sends into the CLI's input protocol, and parses the CLI's output into
//! [`kraal_core::AgentEvent`]s. Running the process is someone else's job (the guest
//! agent), so adapters are tested from transcripts without spawning anything.

pub mod claude;

/// A command to start an agent: program, arguments and extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// A line of agent output that could not be understood. Callers log it and go on.
#[derive(Debug, thiserror::Error)]
#[error("unparseable {agent} output line ({reason}): {excerpt}")]
pub struct ParseError {
    pub agent: &'static str,
    pub reason: String,
    pub excerpt: String,
}

impl ParseError {
    fn new(agent: &'static str, line: &str, reason: impl ToString) -> Self {
        let excerpt: String = line.chars().take(200).collect();
        ParseError {
            agent,
            reason: reason.to_string(),
            excerpt,
        }
    }
}
