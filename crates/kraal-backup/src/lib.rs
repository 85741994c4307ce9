//! Backups in an object store (a local directory, or any S3-compatible store through the
//! `object_store` crate), deduplicated, compressed and encrypted.
//!
//! A backup is a byte stream (the daemon streams a workspace's volume as a tar) cut into
//! content-defined chunks (FastCDC, 256 KiB–4 MiB, 1 MiB on average), so a second backup of
//! a mostly unchanged workspace stores only the chunks that changed. Each chunk is named by
//! a keyed hash of its plaintext (HMAC-SHA256: names reveal nothing without the key),
//! compressed with zstd and sealed with XChaCha20-Poly1305 (its name as associated data).
//! The manifest — chunk list, stream length and SHA-256, and the caller's metadata — is
//! sealed the same way and written last: a backup without a manifest does not exist, so
//! an interrupted backup leaves only unreferenced chunks, which [`Repo::gc`] removes.
//!
//! Layout under the repository's prefix: `chunks/<2 hex>/<64 hex>`, `backups/<id>.manifest`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::{StreamExt, TryStreamExt};
use hmac::{Hmac, Mac};
use object_store::ObjectStore;
use object_store::path::Path as ObjPath;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Chunk sizes (FastCDC).
pub const MIN_CHUNK: usize = 256 * 1024;
pub const AVG_CHUNK: usize = 1024 * 1024;
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;
/// Chunks uploaded (or fetched) at once.
pub(crate) const PARALLEL: usize = 8;
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup store {url}: {op} failed")]
    Store {
        url: String,
        op: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "backup store {url} refused the credentials (access key {access_key}): {reason}; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    Denied {
        url: String,
        access_key: String,
        reason: String,
    },
    #[error("invalid backup store {url:?}: {reason}")]
    Config { url: String, reason: String },
    #[error("backup key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{what} cannot be decrypted: wrong backup key, or the store's copy was altered")]
    Crypto { what: String },
    #[error("backup {id} is damaged: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("no backup {id} in {url}")]
    NotFound { id: String, url: String },
    #[error("the tree of files: {0}")]
    Tree(#[source] hostfs::FsError),
}

pub(crate) type Result<T> = std::result::Result<T, BackupError>;

/// The 32-byte repository key; encryption and chunk-naming keys derive from it. Whoever
/// restores a backup on another machine needs the same key file.
#[derive(Clone)]
pub struct RepoKey([u8; 32]);

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoKey(<redacted>)")
    }
}

impl RepoKey {
    /// Reads the key file, or creates it (owner-only) with a random key.
    pub fn load_or_create(path: &Path) -> Result<RepoKey> {
        let err = |reason: String| BackupError::Key {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read(path) {
            Ok(b) => Ok(RepoKey(b.as_slice().try_into().map_err(|_| {
                err(format!("expected 32 bytes, found {}", b.len()))
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                let mut k = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut k);
                let mut f = std::fs::OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(&k).map_err(|e| err(e.to_string()))?;
                f.sync_all().map_err(|e| err(e.to_string()))?;
                Ok(RepoKey(k))
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    pub fn from_bytes(b: [u8; 32]) -> RepoKey {
        RepoKey(b)
    }

    fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        m.update(label);
        m.finalize().into_bytes().into()
    }
}

/// How to reach an S3-compatible store.
#[derive(Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Options {
    /// `AWS_ENDPOINT_URL` (any S3-compatible store), `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`.
    pub fn from_env() -> S3Options {
        let v = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        S3Options {
            endpoint: v("AWS_ENDPOINT_URL"),
            region: v("AWS_REGION").or_else(|| v("AWS_DEFAULT_REGION")),
            access_key_id: v("AWS_ACCESS_KEY_ID"),
            secret_access_key: v("AWS_SECRET_ACCESS_KEY"),
            session_token: v("AWS_SESSION_TOKEN"),
        }
    }
}

/// One chunk of a backup stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: String,
    pub len: u64,
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub created_at: String,
    /// The caller's description (workspace name, settings…).
    pub meta: serde_json::Value,
    /// A stream backup: the stream's length and SHA-256. A tree backup: the bytes of its
    /// files, and the SHA-256 of its index.
    pub size: u64,
    pub sha256: String,
    /// A stream backup's chunks in order; a tree backup's chunk table (the index's pieces
    /// refer to it by position).
    pub chunks: Vec<ChunkRef>,
    /// Set for a backup of a tree of files read on the host (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeInfo>,
}

/// Where a tree backup's index is and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeInfo {
    /// The index (JSON lines of [`tree::Entry`]), chunked like a stream.
    pub index: Vec<ChunkRef>,
    pub index_size: u64,
    pub entries: u64,
    /// When the walk began (ns since the epoch): files changed after this, or within the
    /// coarse-clock window before it, are read again by the next backup.
    pub scan_started: i64,
}

/// What writing a backup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the stream taken so far.
    pub read: u64,
    /// Chunks cut so far, and how many of them were new to the store.
    pub chunks: u64,
    pub new_chunks: u64,
    /// Bytes uploaded (compressed and sealed).
    pub uploaded: u64,
    /// Bytes of files a tree backup did not read again: unchanged since the previous one.
    pub unchanged: u64,
}

/// An object store holding backups, and the key to them.
#[derive(Clone)]
pub struct Repo {
    store: Arc<dyn ObjectStore>,
    url: String,
    prefix: ObjPath,
    seal: XChaCha20Poly1305,
    name_key: [u8; 32],
    /// Held shared by every backup being written through this handle (or its clones) and
    /// exclusively by [`Repo::gc`], so a collection never takes chunks a backup still in
    /// flight has uploaded but not yet listed in its manifest.
    writing: Arc<tokio::sync::RwLock<()>>,
    /// The S3 access key id in use (shown in errors; never the secret).
    access_key: Option<String>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repo({})", self.url)
    }
}

/// S3 error codes that mean the credentials were refused.
const DENIALS: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
];

/// The S3 error code and message out of a refusal (`<Code>…</Code><Message>…</Message>`),
/// or the text as it is.
fn denial(text: &str) -> String {
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let close = format!("</{t}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&close)? + start;
        let v = &text[start..end];
        let v = v
            .strip_prefix("<![CDATA[")
            .and_then(|v| v.strip_suffix("]]>"))
            .unwrap_or(v);
        Some(v.to_owned())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => text.chars().take(300).collect(),
    }
}

/// `YYYYMMDDTHHMMSSZ` for backup ids.
fn stamp() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}t{:02}{:02}{:02}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Whether `id` looks like a backup id (`bk-…`), safe in an object path.
pub fn is_backup_id(id: &str) -> bool {
    id.starts_with("bk-")
        && id.len() <= 64
        && id[3..]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Repo {
    /// Opens `url`: a local directory (`/path` or `file:///path`, created if missing) or
    /// `s3://bucket[/prefix]` configured from the standard AWS variables
    /// ([`S3Options::from_env`]).
    pub fn open(url: &str, key: &RepoKey) -> Result<Repo> {
        Self::open_with(url, key, &S3Options::from_env())
    }

    /// Like [`Repo::open`], with the S3 settings given.
    pub fn open_with(url: &str, key: &RepoKey, s3: &S3Options) -> Result<Repo> {
        let cfg = |reason: &str| BackupError::Config {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (store, prefix): (Arc<dyn ObjectStore>, ObjPath) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(cfg("no bucket name (s3://BUCKET[/PREFIX])"));
                }
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(s3.region.clone().unwrap_or_else(|| "us-east-1".into()));
                if let (Some(k), Some(sk)) = (&s3.access_key_id, &s3.secret_access_key) {
                    b = b.with_access_key_id(k).with_secret_access_key(sk);
                }
                if let Some(t) = &s3.session_token {
                    b = b.with_token(t);
                }
                if let Some(e) = &s3.endpoint {
                    b = b
                        .with_endpoint(e)
                        .with_allow_http(e.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                let s = b.build().map_err(|e| cfg(&e.to_string()))?;
                (Arc::new(s), ObjPath::from(prefix.trim_matches('/')))
            } else {
                let dir = url.strip_prefix("file://").unwrap_or(url);
                if !dir.starts_with('/') {
                    return Err(cfg(
                        "use an absolute directory, file:///DIR, or s3://BUCKET[/PREFIX]",
                    ));
                }
                std::fs::create_dir_all(dir).map_err(|e| cfg(&e.to_string()))?;
                let s = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| cfg(&e.to_string()))?;
                (Arc::new(s), ObjPath::default())
            };
        Ok(Repo {
            store,
            url: url.to_owned(),
            prefix,
            seal: XChaCha20Poly1305::new((&key.derive(b"kraal backup seal v1")).into()),
            name_key: key.derive(b"kraal backup chunk names v1"),
            writing: Arc::new(tokio::sync::RwLock::new(())),
            access_key: s3.access_key_id.clone(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in rel.split('/') {
            p = p.child(part);
        }
        p
    }

    pub(crate) fn store_err(
        &self,
        op: String,
    ) -> impl FnOnce(object_store::Error) -> BackupError + '_ {
        move |source| {
            // object_store reports most S3 refusals as generic errors carrying the
            // response; the S3 error codes say what it was.
            let text = format!("{source:?}");
            let refused = matches!(
                source,
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ) || DENIALS.iter().any(|c| text.contains(c));
            if refused {
                BackupError::Denied {
                    url: self.url.clone(),
                    access_key: self.access_key.clone().unwrap_or_else(|| "none".into()),
                    reason: denial(&text),
                }
            } else {
                BackupError::Store {
                    url: self.url.clone(),
                    op,
                    source,
                }
            }
        }
    }

    pub(crate) fn chunk_path(&self, id: &str) -> ObjPath {
        self.path(&format!("chunks/{}/{id}", &id[..2]))
    }

    pub(crate) fn manifest_path(&self, id: &str) -> ObjPath {
        self.path(&format!("backups/{id}.manifest"))
    }

    pub(crate) fn chunk_id(&self, data: &[u8]) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.name_key).expect("any key length");
        m.update(data);
        hex::encode(m.finalize().into_bytes())
    }

    /// `nonce ‖ seal(flag ‖ body)`, bound to `"v2 " + aad`: the body is `data` compressed
    /// with zstd (flag 1), or `data` itself (flag 0) when zstd would not make it smaller
    /// (random or already compressed bytes), which a sample of it shows at little cost.
    pub(crate) fn seal(&self, data: &[u8], aad: &str) -> Vec<u8> {
        let sample = &data[..data.len().min(64 << 10)];
        let worth = sample.len() < 4096
            || zstd::bulk::compress(sample, 1).is_ok_and(|c| c.len() < sample.len() * 15 / 16);
        let mut body = Vec::with_capacity(data.len() + 1);
        match worth.then(|| zstd::bulk::compress(data, ZSTD_LEVEL).expect("zstd compresses")) {
            Some(z) if z.len() < data.len() => {
                body.push(1);
                body.extend_from_slice(&z);
            }
            _ => {
                body.push(0);
                body.extend_from_slice(data);
            }
        }
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .seal
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &body,
                    aad: format!("v2 {aad}").as_bytes(),
                },
            )
            .expect("encryption of a buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`Repo::seal`] made, or what versions before it made (`nonce ‖
    /// seal(zstd(data))` bound to `aad`): old backups stay readable.
    pub(crate) fn open_sealed(&self, blob: &[u8], aad: &str, limit: usize) -> Result<Vec<u8>> {
        let crypto = || BackupError::Crypto {
            what: aad.to_owned(),
        };
        if blob.len() < 24 + 16 {
            return Err(crypto());
        }
        let open = |aad: &[u8]| {
            self.seal.decrypt(
                XNonce::from_slice(&blob[..24]),
                Payload {
                    msg: &blob[24..],
                    aad,
                },
            )
        };
        if let Ok(body) = open(format!("v2 {aad}").as_bytes()) {
            return match body.split_first() {
                Some((0, raw)) if raw.len() <= limit => Ok(raw.to_vec()),
                Some((1, z)) => zstd::bulk::decompress(z, limit).map_err(|_| crypto()),
                _ => Err(crypto()),
            };
        }
        let packed = open(aad.as_bytes()).map_err(|_| crypto())?;
        zstd::bulk::decompress(&packed, limit).map_err(|_| crypto())
    }

    /// Checks that the store answers and the credentials work (a list call).
    pub async fn check(&self) -> Result<()> {
        let mut l = self.store.list(Some(&self.path("backups")));
        match l.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(self.store_err("listing backups".into())(e)),
        }
    }

    /// Starts a backup described by `meta` (after any garbage collection in progress).
    pub async fn writer(&self, meta: serde_json::Value) -> BackupWriter {
        let mut r = [0u8; 3];
        rand::thread_rng().fill_bytes(&mut r);
        let writing = self.writing.clone().read_owned().await;
        BackupWriter::new(
            writing,
            self.clone(),
            format!("bk-{}-{}", stamp(), hex::encode(r)),
            meta,
        )
    }

    /// Every backup's manifest, oldest first.
    pub async fn list(&self) -> Result<Vec<Manifest>> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.path("backups")))
            .try_collect()
            .await
            .map_err(self.store_err("listing backups".into()))?;
        let mut out = Vec::new();
        for m in metas {
            let Some(id) = m
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".manifest"))
            else {
                continue;
            };
            out.push(self.manifest(id).await?);
        }
        out.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(out)
    }

    /// One backup's manifest.
    pub async fn manifest(&self, id: &str) -> Result<Manifest> {
        if !is_backup_id(id) {
            return Err(BackupError::NotFound {
                id: id.to_owned(),
                url: self.url.clone(),
            });
        }
        let blob = match self.store.get(&self.manifest_path(id)).await {
            Ok(g) => g
                .bytes()
                .await
                .map_err(self.store_err(format!("reading backup {id}")))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BackupError::NotFound {
                    id: id.to_owned(),
                    url: self.url.clone(),
                });
            }
            Err(e) => return Err(self.store_err(format!("reading backup {id}"))(e)),
        };
        let plain = self.open_sealed(&blob, &format!("manifest {id}"), 256 << 20)?;
        let m: Manifest = serde_json::from_slice(&plain).map_err(|e| BackupError::Corrupt {
            id: id.to_owned(),
            reason: format!("manifest: {e}"),
        })?;
        if m.id != id {
            return Err(BackupError::Corrupt {
                id: id.to_owned(),
                reason: format!("the manifest names backup {}", m.id),
            });
        }
        Ok(m)
    }

    /// One chunk of backup `id`, opened and checked against its name (on a blocking
    /// thread: several are opened at once on all cores).
    pub(crate) async fn fetch_chunk(&self, id: &str, c: &ChunkRef) -> Result<Bytes> {
        let blob = self
            .store
            .get(&self.chunk_path(&c.id))
            .await
            .map_err(self.store_err(format!("reading a chunk of backup {id}")))?
            .bytes()
            .await
            .map_err(self.store_err(format!("reading a chunk of backup {id}")))?;
        let repo = self.clone();
        let (c, id) = (c.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || {
            let plain = repo.open_sealed(&blob, &c.id, MAX_CHUNK)?;
            if plain.len() as u64 != c.len || repo.chunk_id(&plain) != c.id {
                return Err(BackupError::Corrupt {
                    id,
                    reason: format!("chunk {} does not match its name", &c.id[..16]),
                });
            }
            Ok(Bytes::from(plain))
        })
        .await
        .expect("opening a chunk does not panic")
    }

    /// The backup's stream, verified chunk by chunk (a few fetched ahead); the last item
    /// is an error if the whole does not match the manifest's length and SHA-256.
    /// A tree backup ([`Manifest::tree`]) has no such stream: the stream is an error.
    pub fn read<'a>(&'a self, m: &'a Manifest) -> impl futures::Stream<Item = Result<Bytes>> + 'a {
        let tree = m.tree.is_some().then(|| BackupError::Corrupt {
            id: m.id.clone(),
            reason: "it is a tree of files, not a stream (restore it as a tree)".into(),
        });
        let chunks = futures::stream::iter(tree.map(Err)).chain(
            futures::stream::iter(m.chunks.iter().filter(|_| m.tree.is_none()))
                .map(move |c| self.fetch_chunk(&m.id, c))
                .buffered(PARALLEL),
        );
        let state = (Sha256::new(), 0u64, false);
        futures::stream::unfold(
            (chunks.boxed(), state),
            move |(mut s, (mut h, mut n, done))| async move {
                if done {
                    return None;
                }
                match s.next().await {
                    Some(Ok(b)) => {
                        h.update(&b);
                        n += b.len() as u64;
                        Some((Ok(b), (s, (h, n, false))))
                    }
                    Some(Err(e)) => Some((Err(e), (s, (h, n, true)))),
                    None => {
                        let sum = hex::encode(h.finalize_reset());
                        if n != m.size || sum != m.sha256 {
                            Some((
                                Err(BackupError::Corrupt {
                                    id: m.id.clone(),
                                    reason: format!(
                                        "the stream has {n} bytes with SHA-256 {sum}, the manifest says {} and {}",
                                        m.size, m.sha256
                                    ),
                                }),
                                (s, (h, n, true)),
                            ))
                        } else {
                            None
                        }
                    }
                }
            },
        )
    }

    /// Removes a backup (its manifest); its chunks go with the next [`Repo::gc`].
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.manifest(id).await?;
        self.store
            .delete(&self.manifest_path(id))
            .await
            .map_err(self.store_err(format!("deleting backup {id}")))
    }

    /// Deletes chunks no backup refers to (left by deleted or interrupted backups).
    /// Returns how many were deleted. Waits for the backups being written through this
    /// handle to finish; another process writing to the same store at the same time could
    /// lose chunks, so only one daemon should write to a store.
    pub async fn gc(&self) -> Result<u64> {
        let _exclusive = self.writing.write().await;
        let mut keep = HashSet::new();
        for m in self.list().await? {
            keep.extend(m.chunks.into_iter().map(|c| c.id));
            keep.extend(m.tree.into_iter().flat_map(|t| t.index).map(|c| c.id));
        }
        let all: Vec<_> = self
            .store
            .list(Some(&self.path("chunks")))
            .try_collect()
            .await
            .map_err(self.store_err("listing chunks".into()))?;
        let mut n = 0;
        for o in all {
            if let Some(name) = o.location.filename()
                && !keep.contains(name)
            {
                self.store
                    .delete(&o.location)
                    .await
                    .map_err(self.store_err("deleting a chunk".into()))?;
                n += 1;
            }
        }
        Ok(n)
    }
}

pub mod hostfs;
mod restore_tree;
pub mod tree;
mod tree_backup;
mod writer;
pub mod zst;

pub use writer::BackupWriter;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tree_tests;
