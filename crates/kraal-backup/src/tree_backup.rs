//! Backing up a tree of files read on the host ([`Repo::backup_tree`]): one thread walks
//! the tree ([`crate::hostfs::walk`]) and reads only the files that changed since the
//! previous backup (the others keep their pieces); large files are cut into
//! content-defined chunks of their own, small ones packed together; a pool of threads (one
//! per core) names, compresses (when that pays), seals and uploads the chunks while the
//! walk goes on. The index is written last, as a stream, then the manifest.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use object_store::PutPayload;

use crate::hostfs::{self, FileRef};
use crate::tree::{self, Entry, Kind, Piece, Previous};
use crate::{
    AVG_CHUNK, BackupError, ChunkRef, MAX_CHUNK, MIN_CHUNK, Manifest, Progress, Repo, Result,
};

/// Files smaller than this are packed with others into shared chunks.
const SMALL: u64 = MIN_CHUNK as u64;

/// Counters the pipeline's threads add to and the caller's progress reads.
#[derive(Default)]
struct Counters {
    read: AtomicU64,
    chunks: AtomicU64,
    new_chunks: AtomicU64,
    uploaded: AtomicU64,
    unchanged: AtomicU64,
}

impl Counters {
    fn progress(&self) -> Progress {
        Progress {
            read: self.read.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
            new_chunks: self.new_chunks.load(Ordering::Relaxed),
            uploaded: self.uploaded.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
        }
    }
}

/// A chunk for the sealing pool: its place in the slot table and its bytes.
struct Job {
    slot: u32,
    data: Vec<u8>,
}

/// What the walk leaves: the entries (pieces refer to slots) and the slots' chunks.
struct Scanned {
    entries: Vec<Entry>,
    slots: Vec<Option<ChunkRef>>,
    bytes: u64,
}

impl Repo {
    /// Backs up the tree under `root` (a directory on this host), described by `meta`.
    /// `previous`: an earlier tree backup of the same tree, whose unchanged files are not
    /// read again. `progress` hears how it goes, a few times a second.
    pub async fn backup_tree(
        &self,
        root: PathBuf,
        meta: serde_json::Value,
        previous: Option<&Manifest>,
        progress: impl Fn(&Progress) + Send + Sync,
    ) -> Result<Manifest> {
        // Taken first: no garbage collection from here on, so the previous backup's
        // chunks stay while this one refers to them.
        let mut writer = self.writer(meta).await;
        let prev = match previous {
            Some(m) if m.tree.is_some() => Some(self.previous(m).await?),
            _ => None,
        };
        let scan_started = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
        let counters = Arc::new(Counters::default());
        let handle = tokio::runtime::Handle::current();
        let scan = tokio::task::spawn_blocking({
            let repo = self.clone();
            let counters = counters.clone();
            move || scan(&repo, &root, prev, &handle, &counters)
        });
        tokio::pin!(scan);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        let scanned = loop {
            tokio::select! {
                r = &mut scan => break r.expect("the backup walk does not panic")?,
                _ = tick.tick() => progress(&counters.progress()),
            }
        };
        // The chunk table: each distinct chunk once, slots mapped onto it.
        let mut table = Vec::new();
        let mut at: HashMap<String, u32> = HashMap::new();
        let mut map = Vec::with_capacity(scanned.slots.len());
        for c in scanned.slots {
            let c = c.expect("every slot's chunk was stored");
            let i = *at.entry(c.id.clone()).or_insert_with(|| {
                table.push(c);
                table.len() as u32 - 1
            });
            map.push(i);
        }
        let mut entries = scanned.entries;
        for e in &mut entries {
            for p in &mut e.data {
                p.chunk = map[p.chunk as usize];
            }
        }
        let index = tree::encode(&entries);
        for part in index.chunks(4 << 20) {
            writer.write(part).await?;
        }
        let mut done = counters.progress();
        done.chunks += writer.progress().chunks;
        progress(&done);
        writer
            .finish_tree(table, scanned.bytes, entries.len() as u64, scan_started)
            .await
    }

    /// The index of tree backup `m`, checked against its manifest.
    pub async fn read_index(&self, m: &Manifest) -> Result<Vec<Entry>> {
        let corrupt = |reason: String| BackupError::Corrupt {
            id: m.id.clone(),
            reason,
        };
        let t = m
            .tree
            .as_ref()
            .ok_or_else(|| corrupt("it is a stream, not a tree of files".into()))?;
        let mut bytes = Vec::with_capacity(t.index_size as usize);
        for c in &t.index {
            bytes.extend_from_slice(&self.fetch_chunk(&m.id, c).await?);
        }
        use sha2::Digest;
        let sum = hex::encode(sha2::Sha256::digest(&bytes));
        if bytes.len() as u64 != t.index_size || sum != m.sha256 {
            return Err(corrupt(format!(
                "its index has {} bytes with SHA-256 {sum}, the manifest says {} and {}",
                bytes.len(),
                t.index_size,
                m.sha256
            )));
        }
        let entries = tokio::task::spawn_blocking(move || tree::decode(&bytes))
            .await
            .expect("decoding does not panic")
            .map_err(corrupt)?;
        for e in &entries {
            for p in &e.data {
                let fits = m
                    .chunks
                    .get(p.chunk as usize)
                    .is_some_and(|c| p.off as u64 + p.len as u64 <= c.len);
                if !fits {
                    return Err(corrupt(format!(
                        "{} refers to bytes no chunk holds",
                        e.path.lossy()
                    )));
                }
            }
        }
        Ok(entries)
    }

    async fn previous(&self, m: &Manifest) -> Result<Previous> {
        let files = self
            .read_index(m)
            .await?
            .into_iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| (e.path.clone(), e))
            .collect();
        Ok(Previous {
            scan_started: m.tree.as_ref().map(|t| t.scan_started).unwrap_or(0),
            files,
            chunks: m.chunks.clone(),
        })
    }

    /// Names, seals and uploads one chunk unless the store has it; `known`: chunks known to
    /// be stored. Returns its reference and the bytes uploaded.
    fn store_chunk(
        &self,
        data: &[u8],
        known: &Mutex<HashSet<String>>,
        handle: &tokio::runtime::Handle,
    ) -> Result<(ChunkRef, Option<u64>)> {
        let id = self.chunk_id(data);
        let c = ChunkRef {
            id: id.clone(),
            len: data.len() as u64,
        };
        if known.lock().unwrap().contains(&id) {
            return Ok((c, None));
        }
        let path = self.chunk_path(&id);
        match handle.block_on(self.store.head(&path)) {
            Ok(_) => {
                known.lock().unwrap().insert(id);
                return Ok((c, None));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.store_err("checking a chunk".into())(e)),
        }
        let sealed = self.seal(data, &id);
        let n = sealed.len() as u64;
        handle
            .block_on(self.store.put(&path, PutPayload::from(sealed)))
            .map_err(self.store_err("writing a chunk".into()))?;
        known.lock().unwrap().insert(id);
        Ok((c, Some(n)))
    }
}

/// The walk and the sealing pool (on blocking threads).
fn scan(
    repo: &Repo,
    root: &std::path::Path,
    prev: Option<Previous>,
    handle: &tokio::runtime::Handle,
    counters: &Counters,
) -> Result<Scanned> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16);
    let known: Mutex<HashSet<String>> = Mutex::new(
        prev.iter()
            .flat_map(|p| p.chunks.iter().map(|c| c.id.clone()))
            .collect(),
    );
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(threads * 2);
    // Held only by the pool: when every sealer has stopped (on an error), the walk's next
    // send fails instead of waiting for room.
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let (done_tx, done_rx) = mpsc::channel::<Result<(u32, ChunkRef)>>();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (jobs_rx, done_tx, known) = (jobs_rx.clone(), done_tx.clone(), &known);
            s.spawn(move || {
                loop {
                    let job = match jobs_rx.lock().unwrap().recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    };
                    let r = repo.store_chunk(&job.data, known, handle);
                    counters.chunks.fetch_add(1, Ordering::Relaxed);
                    let r = r.map(|(c, uploaded)| {
                        if let Some(n) = uploaded {
                            counters.new_chunks.fetch_add(1, Ordering::Relaxed);
                            counters.uploaded.fetch_add(n, Ordering::Relaxed);
                        }
                        (job.slot, c)
                    });
                    let failed = r.is_err();
                    let _ = done_tx.send(r);
                    if failed {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        drop(jobs_rx);
        let walked = Walker {
            prev: prev.as_ref(),
            jobs: jobs_tx,
            slots: Vec::new(),
            reused: HashMap::new(),
            pack: Vec::new(),
            pack_slot: None,
            entries: Vec::new(),
            bytes: 0,
            counters,
        }
        .run(root);
        // The pool ends once the walk's sender is gone and the queue is empty.
        let mut results = Vec::new();
        let mut failure = None;
        for r in done_rx {
            match r {
                Ok(x) => results.push(x),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        let mut walked = walked?;
        if let Some(e) = failure {
            return Err(e);
        }
        for (slot, c) in results {
            walked.slots[slot as usize] = Some(c);
        }
        if walked.slots.iter().any(Option::is_none) {
            return Err(BackupError::Corrupt {
                id: "(new backup)".into(),
                reason: "a chunk of it was not stored".into(),
            });
        }
        Ok(walked)
    })
}

struct Walker<'a> {
    prev: Option<&'a Previous>,
    jobs: mpsc::SyncSender<Job>,
    /// Chunks by slot: reused ones filled at once, new ones when the pool stored them.
    slots: Vec<Option<ChunkRef>>,
    /// The previous chunk table's positions already given a slot.
    reused: HashMap<u32, u32>,
    pack: Vec<u8>,
    pack_slot: Option<u32>,
    entries: Vec<Entry>,
    bytes: u64,
    counters: &'a Counters,
}

impl Walker<'_> {
    fn run(mut self, root: &std::path::Path) -> Result<Scanned> {
        hostfs::walk(root, &mut |e, file| self.visit(e, file))?;
        self.flush_pack()?;
        drop(self.jobs);
        Ok(Scanned {
            entries: self.entries,
            slots: self.slots,
            bytes: self.bytes,
        })
    }

    fn slot(&mut self, c: Option<ChunkRef>) -> u32 {
        self.slots.push(c);
        self.slots.len() as u32 - 1
    }

    fn send(&mut self, slot: u32, data: Vec<u8>) -> Result<()> {
        self.jobs
            .send(Job { slot, data })
            // The pool stopped: it reports why.
            .map_err(|_| BackupError::Corrupt {
                id: "(new backup)".into(),
                reason: "storing its chunks failed".into(),
            })
    }

    fn visit(&mut self, mut e: Entry, file: Option<FileRef<'_>>) -> Result<()> {
        let Some(file) = file else {
            self.entries.push(e);
            return Ok(());
        };
        if let Some(prev) = self.prev
            && let Some(old) = prev.files.get(&e.path)
            && old.unchanged(&e, prev.scan_started)
        {
            // Same bytes: the same pieces, without reading the file.
            e.xattrs = old.xattrs.clone();
            for p in &old.data {
                let slot = match self.reused.get(&p.chunk) {
                    Some(&s) => s,
                    None => {
                        let c = prev.chunks.get(p.chunk as usize).cloned().ok_or_else(|| {
                            BackupError::Corrupt {
                                id: "(previous backup)".into(),
                                reason: format!("{} refers to a missing chunk", e.path.lossy()),
                            }
                        })?;
                        let s = self.slot(Some(c));
                        self.reused.insert(p.chunk, s);
                        s
                    }
                };
                e.data.push(Piece { chunk: slot, ..*p });
            }
            self.bytes += e.size;
            self.counters.read.fetch_add(e.size, Ordering::Relaxed);
            self.counters.unchanged.fetch_add(e.size, Ordering::Relaxed);
            self.entries.push(e);
            return Ok(());
        }
        let mut f = match file.open(e.ino) {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err)
                if err.raw_os_error() == Some(40) || err.kind() == std::io::ErrorKind::Other =>
            {
                // Replaced by a symlink or another file since the walk looked.
                return Ok(());
            }
            Err(err) => {
                return Err(hostfs::FsError {
                    op: "open",
                    path: e.path.lossy(),
                    source: err,
                }
                .into());
            }
        };
        let read_err = |path: &tree::PathBytes| {
            let path = path.lossy();
            move |source| -> BackupError {
                hostfs::FsError {
                    op: "read",
                    path,
                    source,
                }
                .into()
            }
        };
        e.xattrs = hostfs::xattrs_of(std::os::fd::AsFd::as_fd(&f)).map_err(|er| {
            BackupError::from(hostfs::FsError {
                op: "read the xattrs of",
                path: e.path.lossy(),
                source: er.into(),
            })
        })?;
        let mut n = 0u64;
        if e.size < SMALL {
            // At most the size the walk saw: a file growing as it is read ends there.
            let start = self.pack.len();
            (&mut f)
                .take(SMALL)
                .read_to_end(&mut self.pack)
                .map_err(read_err(&e.path))?;
            n = (self.pack.len() - start) as u64;
            if n > 0 {
                let slot = match self.pack_slot {
                    Some(s) => s,
                    None => {
                        let s = self.slot(None);
                        self.pack_slot = Some(s);
                        s
                    }
                };
                e.data.push(Piece {
                    chunk: slot,
                    off: start as u32,
                    len: n as u32,
                });
            }
            if self.pack.len() >= AVG_CHUNK {
                self.flush_pack()?;
            }
        } else {
            for c in fastcdc::v2020::StreamCDC::new(f, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
                let c = c.map_err(|er| match er {
                    fastcdc::v2020::Error::IoError(io) => read_err(&e.path)(io),
                    other => read_err(&e.path)(std::io::Error::other(other.to_string())),
                })?;
                let len = c.data.len() as u32;
                let slot = self.slot(None);
                self.send(slot, c.data)?;
                e.data.push(Piece {
                    chunk: slot,
                    off: 0,
                    len,
                });
                n += len as u64;
                self.counters.read.fetch_add(len as u64, Ordering::Relaxed);
            }
        }
        if e.size < SMALL {
            self.counters.read.fetch_add(n, Ordering::Relaxed);
        }
        e.size = n;
        self.bytes += n;
        self.entries.push(e);
        Ok(())
    }

    fn flush_pack(&mut self) -> Result<()> {
        if let Some(slot) = self.pack_slot.take() {
            let data = std::mem::take(&mut self.pack);
            self.send(slot, data)?;
        }
        Ok(())
    }
}

impl From<hostfs::FsError> for BackupError {
    fn from(e: hostfs::FsError) -> Self {
        BackupError::Tree(e)
    }
}
