//! `/v1/budget`: spend through the model gateway today and per workspace, and the caps
//! (per UTC day, per workspace or task) at which the gateway holds requests.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use kraal_api::{ApiError, Budget, BudgetReport, BudgetScope, SetBudget, Spend, WorkspaceSpend};
use kraal_store::{BudgetRecord, SpendTotal};

use crate::AppState;
use crate::error::HttpError;
use crate::security::{Actor, actor_of, audit};

fn spend(t: SpendTotal) -> Spend {
    Spend {
        requests: t.requests,
        input_tokens: t.input_tokens,
        output_tokens: t.output_tokens,
        usd: t.usd,
    }
}

fn store_err(e: kraal_store::StoreError) -> HttpError {
    kraal_engine::EngineError::from(e).into()
}

/// The store scope a request names: `day`, or `workspace:<id>` of a workspace or of a
/// task's workspace.
pub(crate) fn scope_of(
    s: &AppState,
    scope: &str,
    workspace: Option<&str>,
    task: Option<&str>,
) -> Result<String, HttpError> {
    match (scope, workspace, task) {
        ("day", None, None) => Ok("day".into()),
        ("day", _, _) => Err(HttpError::bad_request(
            "scope `day` caps the whole daemon; it takes no workspace or task",
        )),
        ("workspace", Some(w), None) => Ok(format!("workspace:{}", s.engine.resolve(w)?.id)),
        ("workspace", None, Some(t)) | ("task", None, Some(t)) => {
            let sched = crate::tasks::scheduler(s)?;
            let task = sched.get(t)?;
            let ws = task.workspace_id.ok_or_else(|| {
                HttpError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "task {} has no workspace yet (it is {}); set its budget once it runs",
                        task.id, task.state
                    ),
                )
            })?;
            Ok(format!("workspace:{ws}"))
        }
        ("workspace", _, _) => Err(HttpError::bad_request(
            "scope `workspace` needs exactly one of `workspace` or `task`",
        )),
        (other, _, _) => Err(HttpError::bad_request(format!(
            "unknown budget scope {other:?}; one of day, workspace, task"
        ))),
    }
}

fn to_api(s: &AppState, b: &BudgetRecord, names: &HashMap<String, String>) -> Budget {
    let store = s.engine.store();
    let ws = b.scope.strip_prefix("workspace:");
    let spent = match ws {
        Some(id) => store.workspace_spend(id),
        None => store.day_spend(&kraal_store::utc_day()),
    }
    .unwrap_or_default();
    let reached = b.reached(&spent);
    Budget {
        scope: if ws.is_some() { "workspace" } else { "day" }.into(),
        workspace: ws.map(|id| names.get(id).cloned().unwrap_or_else(|| id.to_owned())),
        workspace_id: ws.map(str::to_owned),
        usd: b.usd,
        tokens: b.tokens,
        spent: spend(spent),
        reached,
        updated_at: b.updated_at.clone(),
    }
}

fn names(s: &AppState) -> HashMap<String, String> {
    s.engine
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|w| (w.id.to_string(), w.name.to_string()))
        .collect()
}

pub(crate) fn report(s: &AppState) -> Result<BudgetReport, HttpError> {
    let store = s.engine.store();
    let day = kraal_store::utc_day();
    let names = names(s);
    let budgets = store
        .budgets()
        .map_err(store_err)?
        .iter()
        .map(|b| to_api(s, b, &names))
        .collect();
    let workspaces = store
        .spend_by_workspace()
        .map_err(store_err)?
        .into_iter()
        .map(|(id, t)| WorkspaceSpend {
            workspace: names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("{id} (removed)")),
            workspace_id: id,
            spent: spend(t),
        })
        .collect();
    Ok(BudgetReport {
        today: spend(store.day_spend(&day).map_err(store_err)?),
        day,
        budgets,
        workspaces,
        limits: s.rate_limits.as_ref().map(|f| f()).unwrap_or_default(),
    })
}

#[utoipa::path(get, path = "/v1/budget", responses((status = 200, body = BudgetReport)))]
pub async fn get_budget(State(s): State<AppState>) -> Result<Json<BudgetReport>, HttpError> {
    Ok(Json(report(&s)?))
}

#[utoipa::path(put, path = "/v1/budget", request_body = SetBudget,
    responses((status = 200, body = Budget), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn set_budget(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    body: Result<Json<SetBudget>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Budget>, HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let scope = scope_of(
        &s,
        &req.scope,
        req.workspace.as_deref(),
        req.task.as_deref(),
    )?;
    Ok(Json(apply(
        &s,
        &actor_of(actor),
        &scope,
        req.usd,
        req.tokens,
    )?))
}

/// Checks and stores a cap on a store scope (the API's and the web UI's way in).
pub(crate) fn apply(
    s: &AppState,
    actor: &str,
    scope: &str,
    usd: Option<f64>,
    tokens: Option<u64>,
) -> Result<Budget, HttpError> {
    if let Some(u) = usd
        && (!u.is_finite() || u < 0.0)
    {
        return Err(HttpError::bad_request(format!(
            "a budget cannot be below zero or not a number (got {u} USD)"
        )));
    }
    if usd.is_none() && tokens.is_none() {
        return Err(HttpError::bad_request(
            "a budget needs a limit: `usd`, `tokens` or both",
        ));
    }
    let rec = s
        .engine
        .store()
        .set_budget(scope, usd, tokens)
        .map_err(store_err)?;
    audit(
        s,
        actor,
        "budget.set",
        scope,
        &format!("usd={usd:?} tokens={tokens:?}"),
    );
    Ok(to_api(s, &rec, &names(s)))
}

#[utoipa::path(delete, path = "/v1/budget", params(("scope" = String, Query), ("workspace" = Option<String>, Query), ("task" = Option<String>, Query)),
    responses((status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn remove_budget(
    State(s): State<AppState>,
    actor: Option<axum::Extension<Actor>>,
    Query(q): Query<BudgetScope>,
) -> Result<StatusCode, HttpError> {
    let scope = scope_of(&s, &q.scope, q.workspace.as_deref(), q.task.as_deref())?;
    if !s.engine.store().remove_budget(&scope).map_err(store_err)? {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no budget for {scope}"),
        ));
    }
    audit(&s, &actor_of(actor), "budget.remove", &scope, "");
    Ok(StatusCode::NO_CONTENT)
}
