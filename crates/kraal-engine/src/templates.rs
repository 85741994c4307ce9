//! Launching a template: a workspace from its first repository (the others cloned next to
//! it), then a session with its agent, model, system prompt and first message. The
//! workspace is returned at once; the rest happens in the background and is recorded in
//! the workspace's log.

use std::sync::Arc;
use std::time::Duration;

use kraal_core::{AgentSpec, TemplateSpec};
use kraal_store::WorkspaceRecord;

use crate::{CreateRequest, Engine, EngineError, NewSession, chain};

impl Engine {
    pub fn launch_template(
        self: &Arc<Self>,
        spec: &TemplateSpec,
        name: Option<String>,
    ) -> Result<WorkspaceRecord, EngineError> {
        spec.validate()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let source = spec
            .source()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let pending = self.create(CreateRequest {
            name,
            source,
            resources: Some(spec.resources),
            image: spec.image.clone().filter(|i| !i.is_empty()),
            persistent: false,
            mounts: Vec::new(),
            egress: None,
            git: Vec::new(),
            restoring: None,
            policy: spec.policy,
        })?;
        let rec = pending.record.clone();
        let me = self.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            let ws = rec.id.to_string();
            match pending.done.await {
                Ok(Ok(_)) => {}
                _ => return, // The failure is already in the workspace's log.
            }
            for repo in spec.repos.iter().skip(1) {
                let dir = repo
                    .trim_end_matches('/')
                    .trim_end_matches(".git")
                    .rsplit(['/', ':'])
                    .next()
                    .unwrap_or("repo")
                    .to_owned();
                let r = me
                    .capture(
                        &ws,
                        &["git", "clone", "--", repo, &format!("/workspace/{dir}")],
                        Duration::from_secs(600),
                        16 * 1024,
                    )
                    .await;
                let msg = match r {
                    Ok(c) if c.code == 0 => format!("cloned {repo} into /workspace/{dir}"),
                    Ok(c) => format!("cloning {repo} failed: {}", c.stderr.trim()),
                    Err(e) => format!("cloning {repo} failed: {}", chain(&e)),
                };
                me.event(&rec.id, "info", &msg);
            }
            let mut agent = AgentSpec::new(spec.agent);
            agent.model = spec.model.clone();
            agent.system_prompt = spec.system_prompt.clone();
            match me
                .create_session(
                    &ws,
                    NewSession {
                        spec: agent,
                        message: spec.first_message.clone(),
                    },
                )
                .await
            {
                Ok(s) => me.event(
                    &rec.id,
                    "info",
                    &format!("template {} launched session {}", spec.name, s.id),
                ),
                Err(e) => me.event(
                    &rec.id,
                    "error",
                    &format!(
                        "template {}: starting the session failed: {}",
                        spec.name,
                        chain(&e)
                    ),
                ),
            }
        });
        Ok(pending.record)
    }
}
