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
            h3 { "Rate limits" }
            @if r.limits.is_empty() { p.muted { "No model answer yet: the providers' limits show up with the first one." } }
            @for l in &r.limits {
                article.limit data-provider=(l.provider) {
                    header { strong { (l.provider) } " · " (l.credential) }
                    @if let Some(st) = &l.subscription_status {
                        p { "Subscription window: " span class=(if st == "allowed" { "ok" } else { "error" }) { (st) }
                            @if let Some(at) = &l.subscription_reset { " · resets " (at) } }
                        @for sw in &l.subscription_windows {
                            p.small { (sw.name) " window " progress value=(format!("{:.2}", sw.utilization.clamp(0.0, 1.0))) max="1" {} " " (format!("{:.0} %", sw.utilization * 100.0)) }
                        }
                    }
                    @if let (Some(rem), Some(lim)) = (l.requests_remaining, l.requests_limit) {
                        p.small { (rem) " of " (lim) " requests left" @if let Some(at) = &l.requests_reset { " · resets " (at) } }
                    }
                    @if let (Some(rem), Some(lim)) = (l.tokens_remaining, l.tokens_limit) {
                        p.small { (rem) " of " (lim) " tokens left" }
                    }
                    p.small.muted { (l.requests) " requests · " (l.paced) " paced · " (l.limited) " hit the limit"
                        @if l.waiting > 0 { " · " span.error { (l.waiting) " waiting now" } } }
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
