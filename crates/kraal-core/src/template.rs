//! Templates: named, versioned launch configurations ("python bot v3": which repositories,
//! which agent with which system prompt, how much CPU and memory, which image). Launching
//! one creates a workspace from its first repository and starts a session in it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AgentKind, Resources, Source};

/// Why a template was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "template name {name:?} is invalid: use 1 to 64 letters, digits, spaces, '-', '_' or '.'"
    )]
    BadName { name: String },
    #[error("repository {repo:?} is neither a git URL nor an absolute directory path")]
    BadRepo { repo: String },
    #[error("{field} is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error(transparent)]
    Resources(#[from] crate::ResourcesError),
    #[error(transparent)]
    Policy(#[from] crate::PolicyError),
}

/// One version of a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Git URLs or absolute paths; the first is the workspace's checkout, the others are
    /// cloned next to it under `/workspace`.
    #[serde(default)]
    pub repos: Vec<String>,
    pub agent: AgentKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// The first message sent when launched (optional: the session then waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_message: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    /// Image name (the default image when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Idle stop and backup interval of the workspaces it launches.
    #[serde(default)]
    pub policy: crate::Policy,
}

impl TemplateSpec {
    pub fn validate(&self) -> Result<(), TemplateError> {
        let n = self.name.trim();
        let ok = !n.is_empty()
            && n.chars().count() <= 64
            && n.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'));
        if !ok {
            return Err(TemplateError::BadName {
                name: self.name.clone(),
            });
        }
        for r in &self.repos {
            let valid = if Source::looks_like_git_url(r) {
                Source::git(r, None).is_ok()
            } else {
                r.starts_with('/')
            };
            if !valid {
                return Err(TemplateError::BadRepo { repo: r.clone() });
            }
        }
        for (field, value, max) in [
            ("description", self.description.as_str(), 4000),
            (
                "system prompt",
                self.system_prompt.as_deref().unwrap_or(""),
                100_000,
            ),
            (
                "first message",
                self.first_message.as_deref().unwrap_or(""),
                100_000,
            ),
        ] {
            if value.chars().count() > max {
                return Err(TemplateError::TooLong { field, max });
            }
        }
        self.resources.validate()?;
        self.policy.validate()?;
        Ok(())
    }

    /// The workspace source: the first repository (an empty volume without one).
    pub fn source(&self) -> Result<Source, TemplateError> {
        match self.repos.first() {
            None => Ok(Source::Empty),
            Some(r) if Source::looks_like_git_url(r) => {
                Source::git(r, None).map_err(|_| TemplateError::BadRepo { repo: r.clone() })
            }
            Some(r) => Source::local(std::path::PathBuf::from(r))
                .map_err(|_| TemplateError::BadRepo { repo: r.clone() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TemplateSpec {
        TemplateSpec {
            name: "Python bot".into(),
            description: String::new(),
            repos: vec!["https://example.com/a.git".into(), "/srv/b".into()],
            agent: AgentKind::Claude,
            model: None,
            system_prompt: Some("be brief".into()),
            first_message: None,
            resources: Resources::default(),
            image: None,
            policy: crate::Policy::default(),
        }
    }

    #[test]
    fn templates_validate_names_repos_and_limits() {
        assert!(spec().validate().is_ok());
        assert!(matches!(spec().source(), Ok(Source::Git { .. })));
        let mut s = spec();
        s.policy.idle_stop_secs = Some(1);
        assert!(matches!(s.validate(), Err(TemplateError::Policy(_))));
        let mut s = spec();
        s.name = "<script>".into();
        assert!(matches!(s.validate(), Err(TemplateError::BadName { .. })));
        let mut s = spec();
        s.repos = vec!["relative/dir".into()];
        assert!(matches!(s.validate(), Err(TemplateError::BadRepo { .. })));
        let mut s = spec();
        s.repos = vec!["ext::sh -c evil".into()];
        assert!(s.validate().is_err());
        let mut s = spec();
        s.resources.cpus = 0.0;
        assert!(s.validate().unwrap_err().to_string().contains("cpus"));
        let mut s = spec();
        s.repos.clear();
        assert_eq!(s.source().unwrap(), Source::Empty);
    }
}
