//! The session page's composer: a message, with files attached from the phone (camera
//! roll, files) as `multipart/form-data`. The whole upload is checked before anything is
//! stored (count, size per file and in all), then stored in the workspace and sent with
//! the message; and the attachments' images served back for the conversation view.

use axum::Extension;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kraal_core::SessionInput;
use kraal_engine::Upload;
use serde::Deserialize;

use super::WebState;
use super::auth::Auth;
use super::pages::error_page;
use crate::error::HttpError;

/// The largest composer request: every attachment plus the text and the form's framing.
pub const MAX_UPLOAD: usize = kraal_engine::MAX_ATTACHMENTS_TOTAL + 2 * 1024 * 1024;

/// What the user wrote when they only sent files.
const FILES_ONLY: &str = "(see the attached files)";

/// Reads a multipart composer form: the `text` field and every `files` part.
async fn read_multipart(mut m: Multipart) -> Result<(String, Vec<Upload>), HttpError> {
    let too_big = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the attachments are too large: at most {} MiB per file and {} MiB per message",
                kraal_engine::MAX_ATTACHMENT >> 20,
                kraal_engine::MAX_ATTACHMENTS_TOTAL >> 20
            ),
        )
    };
    let (mut text, mut uploads) = (String::new(), Vec::new());
    loop {
        let field = match m.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_big()),
            Err(e) => {
                return Err(HttpError::bad_request(format!(
                    "the upload is malformed: {e}"
                )));
            }
        };
        match field.name().unwrap_or("") {
            "text" => {
                text = field.text().await.map_err(|e| {
                    HttpError::bad_request(format!("the message is malformed: {e}"))
                })?;
            }
            "files" => {
                let name = field.file_name().unwrap_or("file").to_owned();
                let media_type = field.content_type().map(str::to_owned);
                let data = match field.bytes().await {
                    Ok(b) => b.to_vec(),
                    Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_big()),
                    Err(e) => {
                        return Err(HttpError::bad_request(format!(
                            "the upload is malformed: {e}"
                        )));
                    }
                };
                // An empty file input still sends one empty, nameless part.
                if data.is_empty() && name.is_empty() {
                    continue;
                }
                uploads.push(Upload {
                    name,
                    media_type,
                    data,
                });
            }
            _ => {}
        }
    }
    Ok((text, uploads))
}

/// `POST /s/{id}/send`: a plain form (text) or a multipart one (text and files).
pub async fn send(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let r = async {
        let multipart = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("multipart/form-data"));
        let (text, uploads) = if multipart {
            let m = Multipart::from_request(req, &())
                .await
                .map_err(|e| HttpError::bad_request(e.body_text()))?;
            read_multipart(m).await?
        } else {
            let bytes = axum::body::to_bytes(req.into_body(), super::MAX_FORM)
                .await
                .map_err(|_| {
                    HttpError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "the message is too large",
                    )
                })?;
            (
                super::auth::form_field(&bytes, "text").unwrap_or_default(),
                Vec::new(),
            )
        };
        let session = w.app.engine.session(&id)?;
        kraal_engine::check_uploads(&uploads)?;
        let text = if text.trim().is_empty() && !uploads.is_empty() {
            FILES_ONLY.to_owned()
        } else {
            text
        };
        let attachments = w
            .app
            .engine
            .store_attachments(session.workspace_id.as_str(), uploads)
            .await?;
        let s = w
            .app
            .engine
            .send_input(&id, SessionInput::Message { text, attachments })
            .await?;
        Ok::<_, HttpError>(format!("/s/{}", s.id))
    }
    .await;
    super::actions::done(&headers, &auth, r)
}

#[derive(Deserialize)]
pub struct AttachmentQuery {
    path: String,
}

/// `GET /s/{id}/attachment?path=…`: an attachment of a session's workspace. Only files of the attachment
/// directory; images are served as what their bytes say they are, everything else as a
/// download, and nothing can run on the web UI's origin.
pub async fn attachment(
    State(w): State<WebState>,
    Extension(auth): Extension<Auth>,
    Path(id): Path<String>,
    Query(q): Query<AttachmentQuery>,
) -> Response {
    let ws = match w.app.engine.session(&id) {
        Ok(s) => s.workspace_id.to_string(),
        Err(e) => return error_page(&auth, e.into()).into_response(),
    };
    let a = kraal_core::Attachment {
        path: q.path.clone(),
        media_type: "application/octet-stream".into(),
        name: String::new(),
        size: 0,
        data: None,
    };
    if let Err(e) = a.validate() {
        return error_page(&auth, HttpError::bad_request(e)).into_response();
    }
    let (rec, client) = match w.app.engine.guest(&ws).await {
        Ok(x) => x,
        Err(e) => return error_page(&auth, e.into()).into_response(),
    };
    let data = match client
        .read_file(&q.path, kraal_engine::MAX_ATTACHMENT as u64)
        .await
    {
        Ok(d) => d,
        Err(e) => return error_page(&auth, crate::routes::guest_err(&rec, e)).into_response(),
    };
    let kind = kraal_engine::media_type(&data, None);
    let image = kind.starts_with("image/");
    let name = q.path.rsplit('/').next().unwrap_or("file").to_owned();
    let mut r = (
        [
            (
                header::CONTENT_TYPE,
                if image {
                    kind
                } else {
                    "application/octet-stream".into()
                },
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
            (
                header::CONTENT_SECURITY_POLICY,
                "sandbox; default-src 'none'".into(),
            ),
            (header::CACHE_CONTROL, "private, max-age=3600".into()),
        ],
        data,
    )
        .into_response();
    if !image && let Ok(v) = format!("attachment; filename=\"{}\"", name.replace('"', "")).parse() {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}
