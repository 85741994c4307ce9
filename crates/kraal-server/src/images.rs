//! Image routes: list built images and recipes, build one (progress streamed as
//! newline-delimited JSON while the build runs in its own task, so a client that goes
//! away does not leave a half-built image), remove one.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use kraal_api::*;
use kraal_image::{Image, ImageError, ImageStore, Output, Recipe};

use crate::AppState;
use crate::error::HttpError;

fn image_err(e: ImageError) -> HttpError {
    let msg = error_chain(&e);
    match e {
        ImageError::Recipe { .. } | ImageError::UnknownRecipe { .. } => HttpError::bad_request(msg),
        ImageError::NotFound(_) => HttpError::new(StatusCode::NOT_FOUND, "not_found", msg),
        ImageError::InUse { .. } => HttpError::new(StatusCode::CONFLICT, "conflict", msg),
        _ => HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "backend_error", msg),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn info(img: &Image) -> ImageInfo {
    let mut outputs: Vec<ImageOutput> = img
        .sizes()
        .into_iter()
        .map(|(o, bytes)| ImageOutput {
            format: o.as_str().to_owned(),
            path: match o {
                Output::Rootfs => img.rootfs.clone(),
                Output::Ext4 => img.dir.join("rootfs.ext4"),
                Output::Oci => img.dir.join("oci"),
            }
            .display()
            .to_string(),
            bytes,
        })
        .collect();
    outputs.sort_by_key(|o| o.format != "rootfs");
    ImageInfo {
        name: img.name.clone(),
        hash: img.hash.clone(),
        description: img.recipe.description.clone(),
        built_at: img.built_at.clone(),
        layers: img
            .layers
            .iter()
            .map(|l| format!("{}-{}", l.kind, l.hash))
            .collect(),
        agents: img.recipe.agents.clone(),
        packages: img.recipe.packages.len(),
        outputs,
        users: ImageStore::users(img),
    }
}

#[utoipa::path(get, path = "/v1/images", responses((status = 200, body = ImageList)))]
pub async fn list_images(State(s): State<AppState>) -> Json<ImageList> {
    let store = s.images.clone();
    let images = tokio::task::spawn_blocking(move || store.list().iter().map(info).collect())
        .await
        .unwrap_or_default();
    let recipes = kraal_image::recipe::BUILTIN
        .iter()
        .filter_map(|(n, _)| Recipe::builtin(n).ok())
        .map(|r| RecipeInfo {
            name: r.name,
            description: r.description,
        })
        .collect();
    Json(ImageList { images, recipes })
}

#[utoipa::path(post, path = "/v1/images/build", request_body = BuildImage,
    responses((status = 200, description = "newline-delimited BuildLine values", body = BuildLine),
        (status = 400, body = ApiError)))]
pub async fn build_image(
    State(s): State<AppState>,
    body: Result<Json<BuildImage>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, HttpError> {
    let Json(req) = body.map_err(|e| HttpError::bad_request(e.body_text()))?;
    if let Some(dir) = &req.devcontainer {
        return build_devcontainer(s, &req, dir).await;
    }
    let recipe = match (&req.name, &req.recipe) {
        (_, Some(text)) => Recipe::parse("the recipe", text).map_err(image_err)?,
        (Some(name), None) => Recipe::builtin(name).map_err(image_err)?,
        (None, None) => Recipe::builtin("default").map_err(image_err)?,
    };
    if let (Some(n), Some(_)) = (&req.name, &req.recipe)
        && n != &recipe.name
    {
        return Err(HttpError::bad_request(format!(
            "the recipe is named {:?}, not {n:?}",
            recipe.name
        )));
    }
    let outputs = outputs_of(&req)?;
    let store: ImageStore = s.images.clone();
    Ok(stream_build(
        recipe.name.clone(),
        move |progress| async move { store.ensure(&recipe, &outputs, &progress).await },
    ))
}

fn outputs_of(req: &BuildImage) -> Result<Vec<Output>, HttpError> {
    if req.outputs.is_empty() {
        return Ok(Output::ALL.to_vec());
    }
    req.outputs
        .iter()
        .map(|o| Output::parse(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(HttpError::bad_request)
}

/// Builds the image of a project's `devcontainer.json`.
async fn build_devcontainer(
    s: AppState,
    req: &BuildImage,
    dir: &str,
) -> Result<Response, HttpError> {
    if req.recipe.is_some() {
        return Err(HttpError::bad_request(
            "give a recipe or a devcontainer project, not both",
        ));
    }
    let project = std::path::PathBuf::from(dir);
    if !project.is_absolute() || !project.is_dir() {
        return Err(HttpError::bad_request(format!(
            "devcontainer project {dir:?} must be an existing absolute directory on the daemon's host"
        )));
    }
    let path = kraal_image::devcontainer::find(&project).ok_or_else(|| {
        HttpError::bad_request(format!(
            "{dir} has no .devcontainer/devcontainer.json or .devcontainer.json"
        ))
    })?;
    let dc = kraal_image::devcontainer::DevContainer::load(&path, &project).map_err(image_err)?;
    let name = match &req.name {
        Some(n) => {
            if !kraal_core::is_image_name(n) {
                return Err(HttpError::bad_request(format!(
                    "image name {n:?} must be 1-40 characters of a-z, 0-9 and '-'"
                )));
            }
            n.clone()
        }
        None => kraal_image::devbuild::image_name(&project),
    };
    let outputs = outputs_of(req)?;
    let store: ImageStore = s.images.clone();
    Ok(stream_build(name.clone(), move |progress| async move {
        store
            .ensure_devcontainer(&dc, &name, &outputs, &progress)
            .await
    }))
}

/// Runs a build in its own task and answers with its progress as NDJSON lines, then the
/// image or the error.
fn stream_build<F, Fut>(name: String, build: F) -> Response
where
    F: FnOnce(Box<dyn Fn(kraal_image::Progress) + Send + Sync>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<kraal_image::Image, kraal_image::ImageError>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BuildLine>();
    tokio::spawn(async move {
        let ptx = tx.clone();
        let progress: Box<dyn Fn(kraal_image::Progress) + Send + Sync> = Box::new(move |p| {
            let _ = ptx.send(BuildLine::Progress {
                step: p.step,
                steps: p.steps,
                title: p.title,
                detail: p.detail,
                done: p.done,
            });
        });
        let last = match build(progress).await {
            Ok(img) => {
                tracing::info!(image = %img.name, hash = %img.hash, "image built");
                BuildLine::Image(info(&img))
            }
            Err(e) => {
                tracing::warn!(image = %name, "image build failed: {}", error_chain(&e));
                BuildLine::Error(image_err(e).body)
            }
        };
        let _ = tx.send(last);
    });
    crate::ndjson(rx)
}

#[utoipa::path(delete, path = "/v1/images/{name}", params(("name" = String, Path, description = "Image name")),
    responses((status = 200, body = RemovedImages), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn remove_image(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RemovedImages>, HttpError> {
    let store = s.images.clone();
    let removed = tokio::task::spawn_blocking(move || store.remove(&name))
        .await
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(image_err)?;
    Ok(Json(RemovedImages {
        removed: removed
            .iter()
            .map(|i| format!("{}-{}", i.name, i.hash))
            .collect(),
    }))
}
