//! Reading a markdown checklist out of a task's local checkout, confined to it: a relative
//! path without `..`, resolved (symlinks included) inside the checkout, a regular file of
//! at most 1 MiB.

use std::path::{Component, Path};

use kraal_core::{ChecklistItem, Source};

use crate::error::HttpError;

/// Most items one checklist may queue at once.
const MAX_ITEMS: usize = 100;
const MAX_SIZE: u64 = 1024 * 1024;

pub(crate) fn items(source: &Source, file: &str) -> Result<Vec<ChecklistItem>, HttpError> {
    let Source::Local { path: root } = source else {
        return Err(HttpError::bad_request(
            "checklists are read from a local checkout on the daemon's host; clone the repository and give its directory",
        ));
    };
    let rel = Path::new(file);
    if file.trim().is_empty()
        || rel.is_absolute()
        || rel.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(HttpError::bad_request(format!(
            "checklist {file:?} must be a path inside the checkout, like TODO.md or docs/plan.md"
        )));
    }
    let missing = |why: String| HttpError::bad_request(format!("checklist {file}: {why}"));
    let root = root
        .canonicalize()
        .map_err(|e| missing(format!("the checkout {}: {e}", root.display())))?;
    let full = root
        .join(rel)
        .canonicalize()
        .map_err(|e| missing(e.to_string()))?;
    if !full.starts_with(&root) {
        return Err(missing("it leads out of the checkout".into()));
    }
    let meta = std::fs::metadata(&full).map_err(|e| missing(e.to_string()))?;
    if !meta.is_file() {
        return Err(missing("not a regular file".into()));
    }
    if meta.len() > MAX_SIZE {
        return Err(missing(format!(
            "{} bytes; the limit is {MAX_SIZE}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(&full).map_err(|e| missing(e.to_string()))?;
    let items = kraal_core::unchecked_items(file, &text);
    if items.is_empty() {
        return Err(missing("no unchecked items (`- [ ] …`)".into()));
    }
    if items.len() > MAX_ITEMS {
        return Err(missing(format!(
            "{} unchecked items; at most {MAX_ITEMS} are queued at once",
            items.len()
        )));
    }
    Ok(items)
}
