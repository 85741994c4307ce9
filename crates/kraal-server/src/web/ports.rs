//! The live ports of a workspace on its page: every port something listens on in the
//! sandbox (and those its image declares), each with its preview link — the path form,
//! and its own origin with `serve --preview-domain` — and a QR code of the link, to open
//! a dev server on a phone while looking at it on a laptop.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, PreEscaped, html};

use super::WebState;
use super::pages::Page;

/// A QR code of `text` as an `<img>` (an SVG data URI: the page's policy allows `data:`
/// images and nothing in it can run).
pub fn qr(text: &str, label: &str) -> Markup {
    use base64::Engine as _;
    let Ok(code) = qrcode::QrCode::new(text.as_bytes()) else {
        return html! {};
    };
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(160, 160)
        .dark_color(qrcode::render::svg::Color("#000000"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .build();
    let uri = format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    );
    html! { img.qr src=(PreEscaped(uri)) alt={ "QR code of " (label) } width="160" height="160"; }
}

/// The web UI's own origin as the browser sees it.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// `GET /w/{ws}/ports`: the ports fragment.
pub async fn fragment(
    State(w): State<WebState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ports = match w.app.engine.live_ports(&ws).await {
        Ok(p) => p,
        Err(e) => {
            let e: crate::HttpError = e.into();
            return Page(
                e.status,
                html! { div #ports { p.muted { (e.body.message) } } },
            )
            .into_response();
        }
    };
    let name = w
        .app
        .engine
        .resolve(&ws)
        .map(|r| r.name.to_string())
        .unwrap_or(ws);
    let base = origin(&headers);
    Page(
        StatusCode::OK,
        html! {
            div #ports hx-get={ "/w/" (name) "/ports" } hx-trigger="every 10s" hx-swap="outerHTML" {
                @if ports.is_empty() {
                    p.muted { "Nothing listens in the workspace. Start a dev server (e.g. " code { "python3 -m http.server 8000" } ") and it shows up here." }
                }
                ul.ports {
                    @for p in &ports {
                        @let path = format!("/p/{name}/{}/", p.port);
                        @let own = w.app.preview_domain.as_ref().map(|_| format!("/w/{name}/open/{}", p.port));
                        li data-port=(p.port) {
                            div.port-head {
                                strong { (p.port) }
                                @if let Some(proc_) = &p.process { span.muted { " " (proc_) } }
                                @if !p.listening { " " span.badge { "declared, not listening" } }
                                @else { " " span.muted { "on " (p.addresses.join(", ")) } }
                            }
                            @if p.listening {
                                div.actions {
                                    a role="button" .small href=(path) target="_blank" rel="noopener" { "Open" }
                                    @if let Some(o) = &own { a role="button" .small.secondary href=(o) target="_blank" rel="noopener" { "Open on its own origin" } }
                                }
                                details.qr-box {
                                    summary { "QR code" }
                                    @let target = own.clone().unwrap_or(path.clone());
                                    (qr(&format!("{base}{target}"), &format!("port {}", p.port)))
                                    div.muted { code { (base) (target) } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}
