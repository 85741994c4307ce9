//! The browser terminal: xterm.js speaking the same exec WebSocket as `kraal shell`
//! (a PTY in the workspace), with a row of keys phones lack (Esc, Tab, Ctrl, arrows).

use axum::Extension;
use axum::extract::{Path, State};
use maud::html;

use super::WebState;
use super::auth::Auth;
use super::pages::{Page, error_page, layout};

pub async fn page(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(ws): Path<String>,
) -> Result<Page, Page> {
    let rec = w
        .app
        .engine
        .resolve(&ws)
        .map_err(|x| error_page(&auth, x.into()))?;
    // A stopped workspace starts; the terminal's exec connection waits for it.
    w.app
        .engine
        .start_if_stopped(rec.id.as_str())
        .map_err(|x| error_page(&auth, x.into()))?;
    let name = rec.name.to_string();
    Ok(layout(
        &format!("{name} terminal"),
        &auth,
        html! {
            link rel="stylesheet" href="/static/xterm.css";
            div.row-head { h2 { a href={ "/w/" (name) } { (name) } " terminal" } span #term-status.muted { "connecting…" } }
            div #terminal data-workspace=(name) {}
            div.keys role="toolbar" aria-label="Extra keys" {
                button type="button" data-key="\u{1b}" { "Esc" }
                button type="button" data-key="\t" { "Tab" }
                button type="button" data-ctrl="1" aria-pressed="false" { "Ctrl" }
                button type="button" data-key="\u{1b}[A" aria-label="Up" { "↑" }
                button type="button" data-key="\u{1b}[B" aria-label="Down" { "↓" }
                button type="button" data-key="\u{1b}[D" aria-label="Left" { "←" }
                button type="button" data-key="\u{1b}[C" aria-label="Right" { "→" }
                button type="button" data-key="|" { "|" }
                button type="button" data-key="~" { "~" }
                button type="button" data-key="/" { "/" }
            }
            script src="/static/xterm.js" {}
            script src="/static/addon-fit.js" {}
            script src="/static/terminal.js" {}
        },
    ))
}
