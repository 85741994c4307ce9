//! Files sent with a message (photos from a phone's camera roll, logs, PDFs): checked
//! whole before anything is written, stored in the workspace under
//! `.kraal/attachments/` (kept out of git by the guest), and described to the guest,
//! which hands them to the agent in its own protocol.

use kraal_core::{ATTACHMENT_DIR, Attachment};
use rand::RngCore;

use crate::{Engine, EngineError};

pub use kraal_core::{MAX_ATTACHMENT, MAX_ATTACHMENT_COUNT, MAX_ATTACHMENTS_TOTAL};

/// An uploaded file before it is stored.
#[derive(Debug, Clone)]
pub struct Upload {
    pub name: String,
    /// What the client said it is (checked against the bytes for images).
    pub media_type: Option<String>,
    pub data: Vec<u8>,
}

/// The media type of `data`: images are recognised by their bytes (a client's claim is
/// not enough to make something an image block); anything else keeps a plausible given
/// type or becomes `application/octet-stream`.
pub fn media_type(data: &[u8], claimed: Option<&str>) -> String {
    let sniffed = if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if data.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if data.len() > 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    };
    if let Some(t) = sniffed {
        return t.to_owned();
    }
    let claimed = claimed.unwrap_or("").trim().to_ascii_lowercase();
    let plausible = claimed.split_once('/').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && claimed.len() <= 100
            && claimed
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"/.+-_;= ".contains(&c))
    });
    if plausible && !claimed.starts_with("image/") {
        claimed
    } else if std::str::from_utf8(data).is_ok() {
        "text/plain".to_owned()
    } else {
        "application/octet-stream".to_owned()
    }
}

/// A file name safe to keep: its last path component, with only letters, digits, `.`,
/// `-` and `_` (others become `_`), not starting with a dot, at most 80 characters.
pub fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut s: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while s.starts_with('.') {
        s.remove(0);
    }
    let s: String = s
        .chars()
        .rev()
        .take(80)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if s.is_empty() { "file".to_owned() } else { s }
}

/// Checks a message's uploads as a whole: how many, how big.
pub fn check_uploads(uploads: &[Upload]) -> Result<(), EngineError> {
    if uploads.len() > MAX_ATTACHMENT_COUNT {
        return Err(EngineError::TooLarge(format!(
            "{} attachments; a message takes at most {MAX_ATTACHMENT_COUNT}",
            uploads.len()
        )));
    }
    let mut total = 0usize;
    for u in uploads {
        if u.data.is_empty() {
            return Err(EngineError::Invalid(format!(
                "attachment {:?} is empty",
                u.name
            )));
        }
        if u.data.len() > MAX_ATTACHMENT {
            return Err(EngineError::TooLarge(format!(
                "attachment {:?} is {} bytes; the limit is {} MiB per file",
                u.name,
                u.data.len(),
                MAX_ATTACHMENT >> 20
            )));
        }
        total += u.data.len();
    }
    if total > MAX_ATTACHMENTS_TOTAL {
        return Err(EngineError::TooLarge(format!(
            "the attachments are {total} bytes together; the limit is {} MiB per message",
            MAX_ATTACHMENTS_TOTAL >> 20
        )));
    }
    Ok(())
}

impl Engine {
    /// Stores uploads in a running workspace and describes them for a message. All are
    /// checked first; if one cannot be written, those already written are removed again.
    pub async fn store_attachments(
        &self,
        workspace: &str,
        uploads: Vec<Upload>,
    ) -> Result<Vec<Attachment>, EngineError> {
        check_uploads(&uploads)?;
        if uploads.is_empty() {
            return Ok(Vec::new());
        }
        let (rec, client) = self.guest(workspace).await?;
        let mut stored: Vec<Attachment> = Vec::new();
        for u in uploads {
            let mut id = [0u8; 4];
            rand::thread_rng().fill_bytes(&mut id);
            let name = safe_name(&u.name);
            let a = Attachment {
                path: format!("{ATTACHMENT_DIR}/{}-{name}", hex::encode(id)),
                media_type: media_type(&u.data, u.media_type.as_deref()),
                name: u.name.chars().take(200).collect(),
                size: u.data.len() as u64,
                data: None,
            };
            if let Err(e) = client.write_file(&a.path, &u.data, Some(0o644), true).await {
                for done in &stored {
                    let _ = client.remove(&done.path, false).await;
                }
                return Err(EngineError::guest(rec.name.as_str())(e));
            }
            stored.push(a);
        }
        self.event(
            &rec.id,
            "info",
            &format!("{} attachment(s) stored for a message", stored.len()),
        );
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_known_by_their_bytes_not_by_what_the_client_says() {
        assert_eq!(
            media_type(b"\x89PNG\r\n\x1a\nrest", Some("text/plain")),
            "image/png"
        );
        assert_eq!(media_type(&[0xff, 0xd8, 0xff, 0xe0], None), "image/jpeg");
        assert_eq!(media_type(b"not a png", Some("image/png")), "text/plain");
        assert_eq!(
            media_type(&[0, 159, 146, 150], Some("image/png")),
            "application/octet-stream"
        );
        assert_eq!(
            media_type(b"%PDF-1.7", Some("application/pdf")),
            "application/pdf"
        );
        assert_eq!(
            media_type(b"x", Some("text/html\r\nX-Evil: 1")),
            "text/plain"
        );
    }

    #[test]
    fn names_are_made_plain_and_uploads_checked_as_a_whole() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name("IMG 0001 (2).HEIC"), "IMG_0001__2_.HEIC");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name(&"a".repeat(300)).len(), 80);
        let up = |n: usize| Upload {
            name: "f".into(),
            media_type: None,
            data: vec![1; n],
        };
        assert!(check_uploads(&[up(10), up(10)]).is_ok());
        assert!(matches!(
            check_uploads(&[up(MAX_ATTACHMENT + 1)]),
            Err(EngineError::TooLarge(_))
        ));
        assert!(matches!(
            check_uploads(&[up(0)]),
            Err(EngineError::Invalid(_))
        ));
        let many: Vec<Upload> = (0..3).map(|_| up(MAX_ATTACHMENT)).collect();
        assert!(matches!(
            check_uploads(&many),
            Err(EngineError::TooLarge(_))
        ));
        let lots: Vec<Upload> = (0..11).map(|_| up(1)).collect();
        assert!(check_uploads(&lots).is_err());
    }
}
