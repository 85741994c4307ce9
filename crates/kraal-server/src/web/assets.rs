//! Static assets, embedded at build time: the npm packages (htmx, xterm.js, Pico CSS)
//! and kraal's own script, styles, service worker, manifest and icons.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

macro_rules! vendor {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/vendor/", $name)).as_slice()
    };
}

macro_rules! own {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../web/src/",
            $name
        ))
        .as_slice()
    };
}

/// Name, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    ("htmx.min.js", "text/javascript", vendor!("htmx.min.js")),
    ("xterm.js", "text/javascript", vendor!("xterm.js")),
    ("xterm.css", "text/css", vendor!("xterm.css")),
    ("addon-fit.js", "text/javascript", vendor!("addon-fit.js")),
    ("pico.min.css", "text/css", vendor!("pico.min.css")),
    ("app.css", "text/css", own!("app.css")),
    ("app.js", "text/javascript", own!("app.js")),
    ("terminal.js", "text/javascript", own!("terminal.js")),
    ("sw.js", "text/javascript", own!("sw.js")),
    (
        "manifest.webmanifest",
        "application/manifest+json",
        own!("manifest.webmanifest"),
    ),
    ("icon.svg", "image/svg+xml", own!("icon.svg")),
    ("icon-192.png", "image/png", own!("icon-192.png")),
    ("icon-512.png", "image/png", own!("icon-512.png")),
];

pub async fn serve(Path(file): Path<String>) -> Response {
    let Some((_, ctype, body)) = FILES.iter().find(|(n, _, _)| *n == file) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let mut r = (
        [
            (header::CONTENT_TYPE, *ctype),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *body,
    )
        .into_response();
    if file == "sw.js" {
        // The worker sits under /static/ but serves the whole site.
        r.headers_mut().insert(
            "service-worker-allowed",
            header::HeaderValue::from_static("/"),
        );
    }
    r
}
