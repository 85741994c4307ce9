//! Restoring a tree backup: its chunks are fetched, opened and checked a few at once (in
//! the order the index first needs them) while one thread writes the files — either into
//! an empty directory on this host ([`Repo::restore_tree`]), or as a tar stream
//! ([`Repo::tree_tar`]) for a sandbox whose volume is only reachable through its guest.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;

use crate::hostfs::TreeWriter;
use crate::tree::{Entry, Kind, Piece};
use crate::{BackupError, Manifest, PARALLEL, Repo, Result};

/// The chunks as they arrive, each kept until its last piece is used.
struct Feed {
    rx: tokio::sync::mpsc::Receiver<Result<(u32, Bytes)>>,
    have: HashMap<u32, Bytes>,
    uses: Vec<u32>,
    id: String,
}

impl Feed {
    /// The bytes of `p` (blocking until its chunk has arrived).
    fn piece(&mut self, p: &Piece) -> Result<Bytes> {
        while !self.have.contains_key(&p.chunk) {
            match self.rx.blocking_recv() {
                Some(Ok((c, b))) => {
                    self.have.insert(c, b);
                }
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(BackupError::Corrupt {
                        id: self.id.clone(),
                        reason: "its chunks ended early".into(),
                    });
                }
            }
        }
        let b = self.have[&p.chunk].slice(p.off as usize..(p.off + p.len) as usize);
        let left = &mut self.uses[p.chunk as usize];
        *left -= 1;
        if *left == 0 {
            self.have.remove(&p.chunk);
        }
        Ok(b)
    }
}

impl Repo {
    /// Fetches `m`'s chunks in the order `entries` first need them into a [`Feed`].
    fn feed<'a>(
        &'a self,
        m: &'a Manifest,
        entries: &[Entry],
    ) -> (Feed, impl std::future::Future<Output = ()> + Send + 'a) {
        let mut order = Vec::new();
        let mut uses = vec![0u32; m.chunks.len()];
        for p in entries.iter().flat_map(|e| &e.data) {
            if uses[p.chunk as usize] == 0 {
                order.push(p.chunk);
            }
            uses[p.chunk as usize] += 1;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(PARALLEL * 2);
        let fetch = async move {
            let mut s = futures::stream::iter(order)
                .map(|c| async move {
                    self.fetch_chunk(&m.id, &m.chunks[c as usize])
                        .await
                        .map(|b| (c, b))
                })
                .buffered(PARALLEL);
            while let Some(r) = s.next().await {
                let failed = r.is_err();
                if tx.send(r).await.is_err() || failed {
                    break;
                }
            }
        };
        (
            Feed {
                rx,
                have: HashMap::new(),
                uses,
                id: m.id.clone(),
            },
            fetch,
        )
    }

    /// Restores tree backup `m` into `root`, an empty directory on this host; `progress`
    /// hears the bytes of files written so far. Returns that count.
    pub async fn restore_tree(
        &self,
        m: &Manifest,
        root: PathBuf,
        progress: impl Fn(u64) + Send + Sync,
    ) -> Result<u64> {
        let entries = self.read_index(m).await?;
        let (mut feed, fetch) = self.feed(m, &entries);
        let written = Arc::new(AtomicU64::new(0));
        let write = tokio::task::spawn_blocking({
            let written = written.clone();
            move || -> Result<()> {
                let mut w = TreeWriter::new(&root)?;
                for e in &entries {
                    let Some(mut f) = w.entry(e)? else {
                        continue;
                    };
                    for p in &e.data {
                        let b = feed.piece(p)?;
                        f.write_all(&b).map_err(|source| crate::hostfs::FsError {
                            op: "write",
                            path: e.path.lossy(),
                            source,
                        })?;
                        written.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    w.done_file(f, e)?;
                }
                w.finish()?;
                Ok(())
            }
        });
        tokio::pin!(write);
        let fetch = futures::FutureExt::fuse(fetch);
        tokio::pin!(fetch);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tokio::select! {
                r = &mut write => {
                    r.expect("the restore's writer does not panic")?;
                    break;
                }
                () = &mut fetch => {}
                _ = tick.tick() => progress(written.load(Ordering::Relaxed)),
            }
        }
        let n = written.load(Ordering::Relaxed);
        progress(n);
        Ok(n)
    }

    /// Tree backup `m` as a tar stream (paths `./…`, numeric owners, xattrs as PAX
    /// records), for unpacking with GNU tar where the host cannot write the files itself.
    pub fn tree_tar(
        &self,
        m: Manifest,
    ) -> impl futures::Stream<Item = Result<Bytes>> + Send + 'static {
        let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(4);
        let repo = self.clone();
        tokio::spawn(async move {
            let entries = match repo.read_index(&m).await {
                Ok(e) => e,
                Err(e) => {
                    let _ = out_tx.send(Err(e)).await;
                    return;
                }
            };
            let (mut feed, fetch) = repo.feed(&m, &entries);
            let tx = out_tx.clone();
            let write = tokio::task::spawn_blocking(move || {
                let sink = ChannelWriter {
                    tx: tx.clone(),
                    buf: Vec::with_capacity(1 << 20),
                };
                let mut b = tar::Builder::new(sink);
                let r = entries
                    .iter()
                    .try_for_each(|e| tar_entry(&mut b, e, &mut feed))
                    .and_then(|()| {
                        b.into_inner()
                            .and_then(|mut s| s.flush())
                            .map_err(|er| tar_err(er.to_string()))
                    });
                if let Err(e) = r {
                    let _ = tx.blocking_send(Err(e));
                }
            });
            let (_, w) = tokio::join!(fetch, write);
            if w.is_err() {
                let _ = out_tx
                    .send(Err(tar_err("the tar writer stopped".into())))
                    .await;
            }
        });
        tokio_stream_from(out_rx)
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes>>,
) -> impl futures::Stream<Item = Result<Bytes>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn tar_err(reason: String) -> BackupError {
    BackupError::Corrupt {
        id: "(tar of a tree backup)".into(),
        reason,
    }
}

/// Sends what tar writes in pieces of about 1 MiB.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let b = Bytes::from(std::mem::replace(
                &mut self.buf,
                Vec::with_capacity(1 << 20),
            ));
            self.tx
                .blocking_send(Ok(b))
                .map_err(|_| std::io::Error::other("the reader of the tar went away"))?;
        }
        Ok(())
    }
}

/// A file's bytes read piece by piece from the feed.
struct PieceReader<'a> {
    pieces: std::slice::Iter<'a, Piece>,
    feed: &'a mut Feed,
    cur: Bytes,
    error: Option<BackupError>,
}

impl Read for PieceReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            let Some(p) = self.pieces.next() else {
                return Ok(0);
            };
            match self.feed.piece(p) {
                Ok(b) => self.cur = b,
                Err(e) => {
                    let msg = e.to_string();
                    self.error = Some(e);
                    return Err(std::io::Error::other(msg));
                }
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

fn tar_entry(b: &mut tar::Builder<ChannelWriter>, e: &Entry, feed: &mut Feed) -> Result<()> {
    let err = |er: std::io::Error| tar_err(format!("{}: {er}", e.path.lossy()));
    if !e.xattrs.is_empty() {
        let values: Vec<(String, Vec<u8>)> = e
            .xattrs
            .iter()
            .map(|x| {
                let v = base64::engine::general_purpose::STANDARD
                    .decode(&x.value)
                    .unwrap_or_default();
                (format!("SCHILY.xattr.{}", x.name), v)
            })
            .collect();
        b.append_pax_extensions(values.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(err)?;
    }
    let mut path = b"./".to_vec();
    path.extend_from_slice(&e.path.0);
    let path = OsStr::from_bytes(&path);
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode);
    h.set_uid(e.uid as u64);
    h.set_gid(e.gid as u64);
    h.set_mtime(e.mtime.div_euclid(1_000_000_000).max(0) as u64);
    let target = || {
        OsStr::from_bytes(
            e.target
                .as_ref()
                .map(|t| t.0.as_slice())
                .unwrap_or_default(),
        )
        .to_owned()
    };
    match e.kind {
        Kind::Dir | Kind::Fifo => {
            h.set_entry_type(if e.kind == Kind::Dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Fifo
            });
            h.set_size(0);
            b.append_data(&mut h, path, std::io::empty()).map_err(err)
        }
        Kind::Symlink => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, target()).map_err(err)
        }
        Kind::Hardlink => {
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            let mut t = b"./".to_vec();
            t.extend_from_slice(target().as_bytes());
            b.append_link(&mut h, path, OsStr::from_bytes(&t))
                .map_err(err)
        }
        Kind::File => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(e.size);
            let mut r = PieceReader {
                pieces: e.data.iter(),
                feed,
                cur: Bytes::new(),
                error: None,
            };
            let res = b.append_data(&mut h, path, &mut r);
            if let Some(inner) = r.error.take() {
                return Err(inner);
            }
            res.map_err(err)
        }
    }
}
