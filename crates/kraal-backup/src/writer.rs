//! Writing a backup stream: cut into content-defined chunks, each sealed and uploaded
//! (a few at once) unless the store has it already; the manifest last.

use std::collections::HashSet;

use futures::StreamExt;
use object_store::PutPayload;
use sha2::{Digest, Sha256};

use crate::{
    AVG_CHUNK, ChunkRef, MAX_CHUNK, MIN_CHUNK, Manifest, PARALLEL, Progress, Repo, Result, TreeInfo,
};

/// An upload: the bytes written, or `None` when the store already had the chunk.
type Upload = futures::future::BoxFuture<'static, Result<Option<u64>>>;

/// A backup being written: feed it the stream with [`BackupWriter::write`], then
/// [`BackupWriter::finish`]. Dropped before `finish`, it leaves no backup.
pub struct BackupWriter {
    _writing: tokio::sync::OwnedRwLockReadGuard<()>,
    repo: Repo,
    id: String,
    meta: serde_json::Value,
    buf: Vec<u8>,
    chunks: Vec<ChunkRef>,
    seen: HashSet<String>,
    inflight: futures::stream::FuturesUnordered<Upload>,
    hash: Sha256,
    progress: Progress,
}

impl BackupWriter {
    pub(crate) fn new(
        writing: tokio::sync::OwnedRwLockReadGuard<()>,
        repo: Repo,
        id: String,
        meta: serde_json::Value,
    ) -> BackupWriter {
        BackupWriter {
            _writing: writing,
            repo,
            id,
            meta,
            buf: Vec::new(),
            chunks: Vec::new(),
            seen: HashSet::new(),
            inflight: futures::stream::FuturesUnordered::new(),
            hash: Sha256::new(),
            progress: Progress::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Takes more of the stream; uploads chunks as they are cut (a few at once, waiting
    /// when that many are in flight).
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hash.update(data);
        self.progress.read += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 2 * MAX_CHUNK {
            self.cut(false).await?;
        }
        Ok(())
    }

    /// Cuts chunks from the buffer; keeps the tail (which may grow) unless `last`.
    async fn cut(&mut self, last: bool) -> Result<()> {
        let mut taken = 0;
        let cuts: Vec<(usize, usize)> =
            fastcdc::v2020::FastCDC::new(&self.buf, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
                .map(|c| (c.offset, c.length))
                .collect();
        let n = cuts.len();
        for (i, (off, len)) in cuts.into_iter().enumerate() {
            // The final cut may only be final because the buffer ends there.
            if i + 1 == n && !last {
                break;
            }
            let data = self.buf[off..off + len].to_vec();
            taken = off + len;
            self.add_chunk(data).await?;
        }
        self.buf.drain(..taken);
        Ok(())
    }

    async fn add_chunk(&mut self, data: Vec<u8>) -> Result<()> {
        let id = self.repo.chunk_id(&data);
        self.chunks.push(ChunkRef {
            id: id.clone(),
            len: data.len() as u64,
        });
        self.progress.chunks += 1;
        if !self.seen.insert(id.clone()) {
            return Ok(());
        }
        while self.inflight.len() >= PARALLEL {
            if let Some(r) = self.inflight.next().await {
                self.account(r?);
            }
        }
        let repo = self.repo.clone();
        let backup = self.id.clone();
        self.inflight.push(Box::pin(async move {
            let path = repo.chunk_path(&id);
            // Already stored (an earlier backup): nothing to upload.
            match repo.store.head(&path).await {
                Ok(_) => return Ok(None),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(repo.store_err(format!("checking a chunk of {backup}"))(e)),
            }
            let sealed = tokio::task::spawn_blocking({
                let repo = repo.clone();
                let id = id.clone();
                move || repo.seal(&data, &id)
            })
            .await
            .expect("sealing does not panic");
            let n = sealed.len() as u64;
            repo.store
                .put(&path, PutPayload::from(sealed))
                .await
                .map_err(repo.store_err(format!("writing a chunk of {backup}")))?;
            Ok(Some(n))
        }));
        Ok(())
    }

    fn account(&mut self, uploaded: Option<u64>) {
        if let Some(n) = uploaded {
            self.progress.new_chunks += 1;
            self.progress.uploaded += n;
        }
    }

    /// Uploads what is left and the manifest; only now does the backup exist.
    pub async fn finish(mut self) -> Result<Manifest> {
        self.drain().await?;
        let m = Manifest {
            format: 1,
            id: self.id.clone(),
            created_at: now(),
            meta: self.meta.clone(),
            size: self.progress.read,
            sha256: hex::encode(self.hash.clone().finalize()),
            chunks: std::mem::take(&mut self.chunks),
            tree: None,
        };
        put_manifest(&self.repo, m).await
    }

    /// Ends a tree backup: what was written is its index, `table` its chunk table and
    /// `bytes` the size of its files.
    pub(crate) async fn finish_tree(
        mut self,
        table: Vec<ChunkRef>,
        bytes: u64,
        entries: u64,
        scan_started: i64,
    ) -> Result<Manifest> {
        self.drain().await?;
        let m = Manifest {
            format: 2,
            id: self.id.clone(),
            created_at: now(),
            meta: self.meta.clone(),
            size: bytes,
            sha256: hex::encode(self.hash.clone().finalize()),
            chunks: table,
            tree: Some(TreeInfo {
                index: std::mem::take(&mut self.chunks),
                index_size: self.progress.read,
                entries,
                scan_started,
            }),
        };
        put_manifest(&self.repo, m).await
    }

    async fn drain(&mut self) -> Result<()> {
        self.cut(true).await?;
        while let Some(r) = self.inflight.next().await {
            let r = r?;
            self.account(r);
        }
        Ok(())
    }
}

/// Writes the manifest (a plain function: the writer, which is not `Sync`, is not held
/// across the upload).
async fn put_manifest(repo: &Repo, m: Manifest) -> Result<Manifest> {
    let json = serde_json::to_vec(&m).expect("serializes");
    let sealed = repo.seal(&json, &format!("manifest {}", m.id));
    repo.store
        .put(&repo.manifest_path(&m.id), PutPayload::from(sealed))
        .await
        .map_err(repo.store_err(format!("writing the manifest of {}", m.id)))?;
    Ok(m)
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
