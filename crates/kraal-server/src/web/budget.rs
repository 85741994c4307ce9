//! The web UI's spend page: today's spend through the model gateway, each cap and whether
//! it holds requests now, spend per workspace, and a form to set or raise a cap (where a
//! "budget reached" notification leads).

use axum::Extension;
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::WebState;
use super::actions::done;
use super::auth::Auth;
use super::pages::{Page, error_page, layout};
use crate::error::HttpError;

fn money(u: f64) -> String {
    format!("${:.4}", u.max(0.0))
}

pub async fn page(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
) -> Result<Page, Page> {
    let r = crate::spend::report(&w.app).map_err(|e| error_page(&auth, e))?;
    Ok(layout(
        "Spend",
        &auth,
        html! {
            h2 { "Spend" }
            p { "Today (" (r.day) " UTC): " strong { (money(r.today.usd)) } " · " (r.today.requests) " requests · "
                (r.today.input_tokens) " in / " (r.today.output_tokens) " out tokens" }
            h3 { "Caps" }
            @if r.budgets.is_empty() { p.muted { "No caps: model requests are never held." } }
            ul.budgets {
                @for b in &r.budgets {
                    li data-scope=(b.workspace.as_deref().unwrap_or("day")) data-reached=(b.reached) {
                        strong { @if let Some(ws) = &b.workspace { "Workspace " (ws) } @else { "Per day" } }
                        " · " (money(b.spent.usd))
                        @if let Some(u) = b.usd { " of " (money(u)) }
                        @if let Some(t) = b.tokens { " · " (b.spent.input_tokens + b.spent.output_tokens) " of " (t) " tokens" }
                        @if b.reached { " " span.error { "reached — its agents wait" } }
                    }
                }
            }
            details open[r.budgets.iter().any(|b| b.reached)] {
                summary { "Set or raise a cap" }
                form method="post" action="/budget" {
                    input type="hidden" name="csrf" value=(auth.csrf);
                    label { "Workspace (empty: per day, the whole daemon)"
                        input name="workspace" value=(r.budgets.iter().find(|b| b.reached).and_then(|b| b.workspace.clone()).unwrap_or_default()); }
                    label { "Limit in USD" input name="usd" inputmode="decimal" placeholder="5.00"; }
                    button type="submit" { "Save" }
                }
            }
            h3 { "By workspace" }
            @if r.workspaces.is_empty() { p.muted { "Nothing spent yet." } }
            table {
                tbody {
                    @for ws in &r.workspaces {
                        tr { td { (ws.workspace) } td { (money(ws.spent.usd)) } td.muted { (ws.spent.requests) " requests" } }
                    }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
pub struct CapForm {
    #[serde(default)]
    workspace: String,
    usd: String,
}

pub async fn set(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
    Form(f): Form<CapForm>,
) -> Response {
    let r = (|| {
        let usd: f64 =
            f.usd.trim().trim_start_matches('$').parse().map_err(|_| {
                HttpError::bad_request(format!("{:?} is not an amount in USD", f.usd))
            })?;
        let ws = f.workspace.trim();
        let scope = if ws.is_empty() {
            crate::spend::scope_of(&w.app, "day", None, None)?
        } else {
            crate::spend::scope_of(&w.app, "workspace", Some(ws), None)?
        };
        // The form sets the USD limit; a token limit set elsewhere stays.
        let tokens = w
            .app
            .engine
            .store()
            .budget(&scope)
            .ok()
            .flatten()
            .and_then(|b| b.tokens);
        let actor = format!("web:{}", auth.token_name);
        crate::spend::apply(&w.app, &actor, &scope, Some(usd), tokens)?;
        Ok::<_, HttpError>("/budget".to_owned())
    })();
    done(&headers, &auth, r)
}
