//! Agent sessions: create one in a running workspace, send it messages, interrupts and
//! approval answers, stop it; and the mirror. The guest agent journals every session's
//! events on the workspace volume; for each session the daemon runs a follower that
//! subscribes from the last event it stored and appends what arrives, so a daemon restart
//! or a dropped link loses nothing and clients read one ordered, gap-free log.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kraal_core::{
    AgentSpec, ModelGateway, SessionEvent, SessionId, SessionInput, SessionState, WorkspaceId,
};
use kraal_protocol::Launch;
use kraal_sandbox::{GuestClient, GuestClientError};
use kraal_store::{SessionRecord, StoreError, WorkspaceRecord};
use tokio::sync::watch;

use crate::{Engine, EngineError, LiveEvent, chain};

/// Host services a running workspace gets on its private link (the model and git
/// gateway, the egress proxy). The daemon binary provides them; the engine only says when
/// a workspace comes and goes and when its policy changes.
#[async_trait]
pub trait LinkServices: Send + Sync + 'static {
    /// Starts (idempotently) the services of workspace `ws`, whose link has the host
    /// address `host`; returns where its agents reach the model APIs. The record carries
    /// the workspace's secret (for deriving its gateway key), its egress allowlist and its
    /// git credentials.
    async fn attach(&self, ws: &WorkspaceRecord, host: IpAddr) -> Result<ModelGateway, String>;

    /// The workspace's allowlist or git credentials changed (it may be running).
    fn update(&self, ws: &WorkspaceRecord);

    /// Stops them (the link is going away).
    fn detach(&self, ws: &WorkspaceId);
}

/// A new session: which agent, how, and optionally the first message.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub spec: AgentSpec,
    pub message: Option<String>,
}

/// Largest message accepted for an agent.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// Events the mirror writes in one transaction at most.
const BATCH: usize = 512;

fn title_of(message: Option<&str>, spec: &AgentSpec) -> String {
    let first = message
        .and_then(|m| m.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("");
    if first.is_empty() {
        return format!("{} session", spec.agent);
    }
    let mut t: String = first.chars().take(80).collect();
    if first.chars().count() > 80 {
        t.push('…');
    }
    t
}

/// Checks an agent spec before anything is started with it.
pub fn check_spec(spec: &AgentSpec) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::Invalid(m));
    if let Some(b) = &spec.binary
        && (b.trim().is_empty() || b.contains('\0'))
    {
        return bad(format!("agent binary {b:?} is empty or contains NUL"));
    }
    for (k, v) in &spec.env {
        if kraal_core::parse_env_entry(&format!("{k}={v}")).is_err() || v.contains('\0') {
            return bad(format!(
                "environment variable {k:?} is not a valid NAME=VALUE entry"
            ));
        }
    }
    if spec.args.iter().any(|a| a.contains('\0')) {
        return bad("agent arguments must not contain NUL".into());
    }
    if let Some(m) = &spec.model
        && (m.trim().is_empty() || m.chars().any(char::is_control))
    {
        return bad(format!(
            "model name {m:?} is empty or has control characters"
        ));
    }
    if let Some(c) = &spec.cwd
        && !c.starts_with('/')
    {
        return bad(format!("working directory {c:?} must be an absolute path"));
    }
    let w = &spec.watchdog;
    if w.turn_silence_secs < 5 || w.exit_grace_secs == 0 || w.stdin_write_secs == 0 {
        return bad(
            "watchdog limits are too small (turn silence at least 5 s, grace and stdin at least 1 s)"
                .into(),
        );
    }
    Ok(())
}

fn check_input(input: &SessionInput) -> Result<(), EngineError> {
    match input {
        SessionInput::Message { text, attachments }
            if text.trim().is_empty() && attachments.is_empty() =>
        {
            Err(EngineError::Invalid("message is empty".into()))
        }
        SessionInput::Message { text, .. } if text.len() > MAX_MESSAGE => {
            Err(EngineError::Invalid(format!(
                "message is {} bytes; the limit is {MAX_MESSAGE}",
                text.len()
            )))
        }
        SessionInput::Message { attachments, .. } if !attachments.is_empty() => {
            for a in attachments {
                a.validate().map_err(EngineError::Invalid)?;
            }
            Ok(())
        }
        SessionInput::Approval { request_id, .. } if request_id.trim().is_empty() => {
            Err(EngineError::Invalid("approval request id is empty".into()))
        }
        _ => Ok(()),
    }
}

impl Engine {
    /// A session by full id, or by a unique prefix of it (`se-` and at least 4 digits).
    pub fn session(&self, reference: &str) -> Result<SessionRecord, EngineError> {
        let missing = || EngineError::NoSession {
            reference: reference.to_owned(),
        };
        if let Ok(id) = SessionId::parse(reference) {
            return self.store.get_session(&id)?.ok_or_else(missing);
        }
        if !reference.starts_with(SessionId::PREFIX)
            || reference.len() < SessionId::PREFIX.len() + 4
        {
            return Err(missing());
        }
        let mut found = self.store.sessions_with_prefix(reference, 2)?;
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(missing()),
            _ => Err(EngineError::Invalid(format!(
                "session prefix {reference} is ambiguous; give more of the id"
            ))),
        }
    }

    /// Sessions of one workspace, or of all.
    pub fn sessions(&self, workspace: Option<&str>) -> Result<Vec<SessionRecord>, EngineError> {
        let ws = workspace.map(|w| self.resolve(w)).transpose()?;
        Ok(self.store.list_sessions(ws.as_ref().map(|w| &w.id))?)
    }

    /// Starts an agent session in a running workspace.
    pub async fn create_session(
        self: &Arc<Self>,
        workspace: &str,
        req: NewSession,
    ) -> Result<SessionRecord, EngineError> {
        check_spec(&req.spec)?;
        if let Some(m) = &req.message {
            check_input(&SessionInput::message(m.clone()))?;
        }
        let (ws, client) = self.guest(workspace).await?;
        let launch = self.launch(&ws).await?;
        let rec = SessionRecord::new(
            SessionId::random(),
            ws.id.clone(),
            req.spec.clone(),
            title_of(req.message.as_deref(), &req.spec),
            SessionState::Starting,
            kraal_store::now(),
        );
        self.store.insert_session(&rec)?;
        if let Err(source) = client
            .session_start(rec.id.as_str(), req.spec, req.message, launch)
            .await
        {
            let e = EngineError::guest(ws.name.as_str())(source);
            let _ = self
                .store
                .set_session_state(&rec.id, SessionState::Failed, Some(&chain(&e)));
            return Err(e);
        }
        self.event(
            &ws.id,
            "info",
            &format!("session {} started ({})", rec.id, rec.agent),
        );
        self.follow(client, rec.id.clone());
        Ok(self.store.get_session(&rec.id)?.unwrap_or(rec))
    }

    /// Delivers a message (queued or steered in while the agent works; relaunching the
    /// agent with its own resume mechanism if it is not running), an interrupt or an
    /// approval answer.
    pub async fn send_input(
        self: &Arc<Self>,
        session: &str,
        input: SessionInput,
    ) -> Result<SessionRecord, EngineError> {
        check_input(&input)?;
        let s = self.session(session)?;
        let (ws, client) = self.guest(s.workspace_id.as_str()).await?;
        let launch = self.launch(&ws).await?;
        client
            .session_input(s.id.as_str(), input, launch)
            .await
            .map_err(EngineError::guest(ws.name.as_str()))?;
        // A relaunch after a workspace restart needs a follower again.
        self.follow(client, s.id.clone());
        Ok(s)
    }

    /// Closes the agent's input so it finishes and exits; the log is kept.
    pub async fn stop_session(
        self: &Arc<Self>,
        session: &str,
    ) -> Result<SessionRecord, EngineError> {
        let s = self.session(session)?;
        let (ws, client) = self.guest(s.workspace_id.as_str()).await?;
        client
            .session_stop(s.id.as_str())
            .await
            .map_err(EngineError::guest(ws.name.as_str()))?;
        Ok(s)
    }

    /// Mirrored events of a session with `seq > after`.
    pub fn session_events(
        &self,
        id: &SessionId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SessionEvent>, EngineError> {
        Ok(self.store.session_events(id, after, limit)?)
    }

    /// Tells the newest mirrored sequence number of a session whenever it changes.
    pub fn watch_session(&self, id: &SessionId) -> watch::Receiver<u64> {
        self.feeds.watch(id, || {
            self.store
                .get_session(id)
                .ok()
                .flatten()
                .map(|s| s.last_seq)
                .unwrap_or(0)
        })
    }

    /// Mirrored events of a session with `seq > after`, at most `limit`, for live
    /// readers: from memory while they keep up, from SQLite when they fell behind.
    pub fn live_events(
        &self,
        id: &SessionId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<LiveEvent>>, EngineError> {
        if let Some(v) = self.feeds.read(id, after, limit) {
            return Ok(v);
        }
        Ok(self
            .store
            .session_events(id, after, limit)?
            .into_iter()
            .map(|e| Arc::new(LiveEvent::new(e)))
            .collect())
    }

    /// What an agent launched in `ws` gets: where to reach the model APIs.
    async fn launch(self: &Arc<Self>, ws: &WorkspaceRecord) -> Result<Launch, EngineError> {
        let known = self.gateways.lock().unwrap().get(&ws.id).cloned();
        let gateway = match known {
            Some(g) => Some(g),
            None => {
                let ep = self.backend.endpoint(&ws.id).await?;
                self.attach_link(ws, &ep).await
            }
        };
        Ok(Launch {
            env: Vec::new(),
            gateway,
        })
    }

    /// Starts the workspace's link services; a failure is logged (agents then cannot reach
    /// a model) but does not fail the workspace.
    pub(crate) async fn attach_link(
        self: &Arc<Self>,
        ws: &WorkspaceRecord,
        ep: &kraal_sandbox::GuestEndpoint,
    ) -> Option<ModelGateway> {
        let (svc, host) = (self.services.as_ref()?, ep.host?);
        match svc.attach(ws, host).await {
            Ok(g) => {
                self.gateways
                    .lock()
                    .unwrap()
                    .insert(ws.id.clone(), g.clone());
                if ep.tunnel {
                    self.start_tunnels(ws, host);
                }
                Some(g)
            }
            Err(e) => {
                self.event(&ws.id, "warn", &format!("model gateway unavailable: {e}"));
                None
            }
        }
    }

    pub(crate) fn detach_link(&self, id: &WorkspaceId) {
        self.gateways.lock().unwrap().remove(id);
        self.tunnels.lock().unwrap().remove(id);
        if let Some(svc) = &self.services {
            svc.detach(id);
        }
    }

    /// Follows every session the guest knows; sessions the daemon never recorded (e.g. a
    /// volume restored elsewhere) are adopted under the guest's id.
    pub(crate) async fn sync_sessions(
        self: &Arc<Self>,
        ws: &WorkspaceRecord,
        client: &GuestClient,
    ) {
        let guest = match client.sessions().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(workspace = %ws.id, "listing sessions: {e}");
                return;
            }
        };
        for info in guest {
            let Ok(id) = SessionId::parse(&info.id) else {
                continue;
            };
            match self.store.get_session(&id) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let rec = SessionRecord::new(
                        id.clone(),
                        ws.id.clone(),
                        AgentSpec::new(info.agent),
                        format!("{} session", info.agent),
                        info.state,
                        time_of_ms(info.created_ms),
                    );
                    if self.store.insert_session(&rec).is_err() {
                        continue;
                    }
                    self.event(
                        &ws.id,
                        "info",
                        &format!("adopted session {id} from the workspace"),
                    );
                }
                Err(_) => continue,
            }
            self.follow(client.clone(), id);
        }
    }

    /// Makes sure a follower mirrors `id` over `client`.
    fn follow(self: &Arc<Self>, client: GuestClient, id: SessionId) {
        let mut map = self.followers.lock().unwrap();
        if map.get(&id).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let me = self.clone();
        let key = id.clone();
        map.insert(
            key,
            tokio::spawn(async move { me.run_follower(client, id).await }),
        );
    }

    async fn run_follower(self: Arc<Self>, client: GuestClient, id: SessionId) {
        let after = match self.store.get_session(&id) {
            Ok(Some(s)) => s.last_seq,
            _ => return,
        };
        // The newest stored event: a re-subscription may replay some, which are not stored
        // (nor counted) twice.
        let mut stored = after;
        let mut events = match client.session_events(id.as_str(), after).await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(session = %id, "subscribing: {e}");
                return;
            }
        };
        loop {
            let first = match events.next().await {
                Ok(e) => e,
                Err(GuestClientError::Closed) => return,
                Err(e) => {
                    tracing::warn!(session = %id, "event stream: {e}");
                    return;
                }
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match events.try_next() {
                    Some(Ok(e)) => batch.push(e),
                    _ => break,
                }
            }
            // The state before the batch tells whether a turn ends in it.
            let before = batch
                .iter()
                .any(|e| matches!(e.event, kraal_core::AgentEvent::State { .. }))
                .then(|| self.store.get_session(&id).ok().flatten().map(|s| s.state))
                .flatten();
            // Encoded once here, off the writer, for every live reader.
            let live: Vec<Arc<LiveEvent>> = batch
                .iter()
                .cloned()
                .map(|e| Arc::new(LiveEvent::new(e)))
                .collect();
            loop {
                match self.writer.append(&id, batch.clone()).await {
                    Ok(last) => {
                        self.metrics.events_ingested(last.saturating_sub(stored));
                        stored = last;
                        self.feeds.publish(&id, live, last);
                        self.announce(&id, &batch, before);
                        break;
                    }
                    Err(e @ StoreError::Gap { .. }) => {
                        // Never store out of order: drop the subscription; the reconciler
                        // subscribes again from the last stored event.
                        tracing::error!(session = %id, "{e}");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(session = %id, "storing events: {}", chain(&e));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}

impl Engine {
    /// Tells subscribers the last state a batch of events reached, if it has one.
    fn announce(&self, id: &SessionId, batch: &[SessionEvent], before: Option<SessionState>) {
        let last_state = batch.iter().rev().find_map(|e| match &e.event {
            kraal_core::AgentEvent::State { state, reason } => Some((*state, reason.clone())),
            _ => None,
        });
        let approvals = batch.iter().any(|e| {
            matches!(
                e.event,
                kraal_core::AgentEvent::ApprovalRequest { .. }
                    | kraal_core::AgentEvent::ApprovalDecision { .. }
            )
        });
        if last_state.is_none() && !approvals {
            return;
        }
        let Ok(Some(s)) = self.store.get_session(id) else {
            return;
        };
        self.announce_approvals(id, &s.workspace_id, batch);
        if let Some((state, reason)) = last_state {
            let busy = |st: SessionState| {
                matches!(st, SessionState::Working | SessionState::NeedsApproval)
            };
            let worked = before.is_some_and(busy)
                || batch.iter().any(|e| {
                    matches!(&e.event, kraal_core::AgentEvent::State { state, .. } if busy(*state))
                });
            let change = crate::SessionChange {
                session: id.clone(),
                workspace: s.workspace_id,
                state,
                reason,
                turn_ended: worked
                    && matches!(state, SessionState::WaitingForInput | SessionState::Done),
            };
            let _ = self.notices.send(crate::Notice::State(change.clone()));
            let _ = self.changes.send(change);
        }
    }
}

fn time_of_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(kraal_store::now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraal_core::AgentKind;

    #[test]
    fn titles_come_from_the_first_line_of_the_message() {
        let spec = AgentSpec::new(AgentKind::Codex);
        assert_eq!(title_of(None, &spec), "codex session");
        assert_eq!(
            title_of(Some("\n  fix the build \nthen x"), &spec),
            "fix the build"
        );
        let long = "x".repeat(100);
        assert_eq!(title_of(Some(&long), &spec).chars().count(), 81);
    }

    #[test]
    fn bad_specs_and_inputs_are_refused_with_the_reason() {
        let mut spec = AgentSpec::new(AgentKind::Claude);
        assert!(check_spec(&spec).is_ok());
        spec.env = vec![("1BAD".into(), "x".into())];
        assert!(check_spec(&spec).unwrap_err().to_string().contains("1BAD"));
        spec.env.clear();
        spec.cwd = Some("relative/dir".into());
        assert!(
            check_spec(&spec)
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        spec.cwd = None;
        spec.watchdog.turn_silence_secs = 1;
        assert!(
            check_spec(&spec)
                .unwrap_err()
                .to_string()
                .contains("watchdog")
        );
        assert!(check_input(&SessionInput::message("  ")).is_err());
        assert!(check_input(&SessionInput::message("x".repeat(MAX_MESSAGE + 1))).is_err());
        assert!(check_input(&SessionInput::Interrupt).is_ok());
    }
}
