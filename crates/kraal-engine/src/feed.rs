//! Live session events: per session a bounded ring of the newest mirrored events (each
//! encoded once as its server-sent-event frame, for every subscriber) that live readers
//! take from memory, and the one SQLite writer that stores every follower's batches with
//! group commit.
//!
//! The ring only ever holds a contiguous run of events that are already committed, ending
//! at the newest one, so a reader whose position lies inside it reads exactly what SQLite
//! would have returned; a reader that fell behind it (or a ring emptied because nobody was
//! watching) reads SQLite, which stays the log of record.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use kraal_core::{SessionEvent, SessionId};
use kraal_store::{Checkpointer, Store, StoreError};
use tokio::sync::{oneshot, watch};

/// Events a session's ring holds at most.
const RING_EVENTS: usize = 1024;
/// Encoded bytes a session's ring holds at most.
const RING_BYTES: usize = 1 << 20;

/// One mirrored event with the server-sent-event frame that carries its JSON (a
/// [`SessionEvent`]: `id: seq`, `data: json`), encoded once for every reader.
#[derive(Debug)]
pub struct LiveEvent {
    pub event: SessionEvent,
    pub sse: bytes::Bytes,
    /// Another encoding of the event, made once by the first reader that needs it and
    /// shared by the rest: the web UI's rendered frame.
    pub rendered: std::sync::OnceLock<bytes::Bytes>,
}

impl LiveEvent {
    pub fn new(event: SessionEvent) -> Self {
        let json = serde_json::to_string(&event).expect("events serialize");
        // Compact JSON has no line breaks (those in strings are escaped), so it is one
        // `data:` line.
        let sse = format!("id: {}\ndata: {json}\n\n", event.seq).into();
        LiveEvent {
            event,
            sse,
            rendered: std::sync::OnceLock::new(),
        }
    }

    pub fn seq(&self) -> u64 {
        self.event.seq
    }
}

struct Feed {
    ring: VecDeque<Arc<LiveEvent>>,
    bytes: usize,
    /// The newest committed sequence number, for readers waiting on it.
    tx: watch::Sender<u64>,
}

impl Feed {
    fn push(&mut self, e: Arc<LiveEvent>) {
        if self.ring.back().is_some_and(|b| b.seq() + 1 != e.seq()) {
            self.clear();
        }
        self.bytes += e.sse.len();
        self.ring.push_back(e);
        while self.ring.len() > RING_EVENTS || (self.bytes > RING_BYTES && self.ring.len() > 1) {
            if let Some(old) = self.ring.pop_front() {
                self.bytes -= old.sse.len();
            }
        }
    }

    fn clear(&mut self) {
        self.ring.clear();
        self.bytes = 0;
    }
}

/// Every session's ring and watch.
#[derive(Default)]
pub(crate) struct Feeds {
    map: Mutex<HashMap<SessionId, Feed>>,
}

impl Feeds {
    /// A receiver of the newest committed sequence number of `id`; `last` seeds a new one.
    pub(crate) fn watch(&self, id: &SessionId, last: impl FnOnce() -> u64) -> watch::Receiver<u64> {
        let mut map = self.map.lock().unwrap();
        if let Some(f) = map.get(id) {
            return f.tx.subscribe();
        }
        let (tx, rx) = watch::channel(last());
        map.insert(
            id.clone(),
            Feed {
                ring: VecDeque::new(),
                bytes: 0,
                tx,
            },
        );
        rx
    }

    /// Committed events: into the ring if anyone watches (else the ring is dropped, and a
    /// later reader catches up from SQLite), then readers are woken.
    pub(crate) fn publish(&self, id: &SessionId, events: Vec<Arc<LiveEvent>>, last: u64) {
        let mut map = self.map.lock().unwrap();
        let Some(f) = map.get_mut(id) else {
            return;
        };
        if f.tx.receiver_count() == 0 {
            f.clear();
        } else {
            for e in events {
                f.push(e);
            }
        }
        f.tx.send_replace(last);
    }

    /// Events of `id` with `seq > after` from memory, at most `limit`; `None` when the ring
    /// does not reach back to `after` (read SQLite then).
    pub(crate) fn read(
        &self,
        id: &SessionId,
        after: u64,
        limit: usize,
    ) -> Option<Vec<Arc<LiveEvent>>> {
        let map = self.map.lock().unwrap();
        let ring = &map.get(id)?.ring;
        let front = ring.front()?.seq();
        if front > after + 1 {
            return None;
        }
        let skip = (after + 1 - front) as usize;
        Some(ring.iter().skip(skip).take(limit).cloned().collect())
    }
}

struct Job {
    id: SessionId,
    events: Vec<SessionEvent>,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// Parts one group commit takes at most.
const GROUP: usize = 256;
/// How often the checkpointer looks for new commits to copy back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// The single writer of mirrored events: followers hand it batches, it stores whatever
/// has queued up meanwhile in one transaction (each session in its own savepoint). WAL
/// checkpoints run on a thread and connection of their own, beside the writer, so no
/// commit waits for one.
pub(crate) struct Writer {
    tx: Mutex<mpsc::Sender<Job>>,
}

impl Writer {
    pub(crate) fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let groups = Arc::new(AtomicU64::new(0));
        match store.defer_checkpoints() {
            Ok(Some(c)) => {
                let groups = groups.clone();
                std::thread::Builder::new()
                    .name("kraal-checkpoint".into())
                    .spawn(move || checkpoints(c, groups))
                    .expect("spawning the checkpointer");
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("WAL checkpoints stay with SQLite: {e}"),
        }
        std::thread::Builder::new()
            .name("kraal-events".into())
            .spawn(move || run(store, rx, groups))
            .expect("spawning the event writer");
        Writer { tx: Mutex::new(tx) }
    }

    /// Stores `events` of `id`; the new `last_seq`, or why not.
    pub(crate) async fn append(
        &self,
        id: &SessionId,
        events: Vec<SessionEvent>,
    ) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            id: id.clone(),
            events,
            reply,
        };
        if self.tx.lock().unwrap().send(job).is_err() {
            return Err(StoreError::Corrupt {
                id: id.to_string(),
                what: "the event writer has stopped".into(),
            });
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Corrupt {
                id: id.to_string(),
                what: "the event writer has stopped".into(),
            })
        })
    }
}

fn run(store: Store, rx: mpsc::Receiver<Job>, groups: Arc<AtomicU64>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let parts: Vec<(&SessionId, &[SessionEvent])> =
            jobs.iter().map(|j| (&j.id, j.events.as_slice())).collect();
        let results = store.append_session_events_many(&parts);
        drop(parts);
        match results {
            Ok(results) => {
                for (job, r) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                let msg = kraal_sandbox::error_chain(&e);
                for job in jobs {
                    let _ = job.reply.send(Err(StoreError::Corrupt {
                        id: job.id.to_string(),
                        what: format!("storing events: {msg}"),
                    }));
                }
            }
        }
        groups.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies committed groups back into the database file, twice a second while the writer
/// is busy; after the writer has ended (it held the other handle on the counter), once
/// more and then it ends too.
fn checkpoints(c: Checkpointer, groups: Arc<AtomicU64>) {
    let mut seen = 0;
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        let last = Arc::strong_count(&groups) == 1;
        let now = groups.load(Ordering::Relaxed);
        if now == seen {
            if last {
                return;
            }
            continue;
        }
        let t = Instant::now();
        match c.passive() {
            Ok((wal, copied)) => tracing::trace!(
                groups = now - seen,
                wal,
                copied,
                took_us = t.elapsed().as_micros() as u64,
                "WAL checkpoint"
            ),
            Err(e) => tracing::warn!("WAL checkpoint: {e}"),
        }
        seen = now;
    }
}

#[cfg(test)]
mod tests {
    use kraal_core::AgentEvent;

    use super::*;

    fn ev(seq: u64) -> Arc<LiveEvent> {
        Arc::new(LiveEvent::new(SessionEvent {
            seq,
            at_ms: 0,
            event: AgentEvent::AssistantDelta {
                text: format!("t{seq}"),
            },
        }))
    }

    #[test]
    fn the_ring_serves_readers_inside_it_and_sends_the_rest_to_sqlite() {
        let f = Feeds::default();
        let id = SessionId::random();
        let rx = f.watch(&id, || 0);
        f.publish(&id, (1..=3).map(ev).collect(), 3);
        assert_eq!(*rx.borrow(), 3);
        let seqs = |v: Option<Vec<Arc<LiveEvent>>>| {
            v.map(|v| v.iter().map(|e| e.seq()).collect::<Vec<_>>())
        };
        assert_eq!(seqs(f.read(&id, 0, 10)), Some(vec![1, 2, 3]));
        assert_eq!(seqs(f.read(&id, 1, 1)), Some(vec![2]));
        assert_eq!(seqs(f.read(&id, 3, 10)), Some(vec![]));
        // Past the ring's end the ring has nothing; behind its start it does not answer.
        for s in 4..=RING_EVENTS as u64 + 10 {
            f.publish(&id, vec![ev(s)], s);
        }
        assert!(f.read(&id, 5, 10).is_none());
        let newest = RING_EVENTS as u64 + 10;
        assert_eq!(
            seqs(f.read(&id, newest - 2, 10)),
            Some(vec![newest - 1, newest])
        );
        // A jump (a ring emptied while nobody watched) restarts the ring at the new event.
        f.publish(&id, vec![ev(newest + 5)], newest + 5);
        assert!(f.read(&id, newest, 10).is_none());
        assert_eq!(seqs(f.read(&id, newest + 4, 10)), Some(vec![newest + 5]));
        // With no one watching, the ring is dropped; readers go to SQLite.
        drop(rx);
        f.publish(&id, vec![ev(newest + 6)], newest + 6);
        assert!(f.read(&id, newest + 5, 10).is_none());
    }

    #[test]
    fn the_ring_is_bounded_in_bytes() {
        let f = Feeds::default();
        let id = SessionId::random();
        let _rx = f.watch(&id, || 0);
        let big = |seq| {
            Arc::new(LiveEvent::new(SessionEvent {
                seq,
                at_ms: 0,
                event: AgentEvent::AssistantText {
                    text: "x".repeat(100_000),
                },
            }))
        };
        f.publish(&id, (1..=30).map(big).collect(), 30);
        let map = f.map.lock().unwrap();
        let feed = &map[&id];
        assert!(feed.bytes <= RING_BYTES, "{} bytes", feed.bytes);
        assert_eq!(feed.ring.back().unwrap().seq(), 30);
        assert!(feed.ring.len() < 30);
    }

    /// A workspace with `n` sessions in `store`.
    fn sessions_in(store: &Store, n: usize) -> Vec<SessionId> {
        use kraal_core::*;
        let w = kraal_store::WorkspaceRecord {
            id: WorkspaceId::random(),
            name: WorkspaceName::parse("alpha").unwrap(),
            backend: BackendKind::Gvisor,
            source: Source::Empty,
            resources: Resources::default(),
            state: WorkspaceState::Running,
            desired: DesiredState::Running,
            reason: None,
            guest_token: "t".into(),
            guest_addr: None,
            persistent: false,
            created_at: kraal_store::now(),
            updated_at: kraal_store::now(),
            image: None,
            mounts: Vec::new(),
            egress: default_rules(),
            git: Vec::new(),
            restoring: None,
            policy: Policy::default(),
            last_backup_at: None,
        };
        store.insert(&w).unwrap();
        (0..n)
            .map(|_| {
                let s = kraal_store::SessionRecord::new(
                    SessionId::random(),
                    w.id.clone(),
                    AgentSpec::new(AgentKind::Claude),
                    "t".into(),
                    SessionState::Starting,
                    kraal_store::now(),
                );
                store.insert_session(&s).unwrap();
                s.id
            })
            .collect()
    }

    #[tokio::test]
    async fn the_checkpointer_copies_commits_into_the_database_file_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kraal.db");
        let store = Store::open(&path).unwrap();
        let sessions = sessions_in(&store, 4);
        let size = || std::fs::metadata(&path).unwrap().len();
        let wal = || std::fs::metadata(dir.path().join("kraal.db-wal")).map_or(0, |m| m.len());
        let writer = Writer::start(store.clone());
        let before = size();
        for seq in 1..=500u64 {
            for id in &sessions {
                writer
                    .append(id, vec![ev(seq).event.clone()])
                    .await
                    .unwrap();
            }
        }
        // SQLite's own checkpoints are off (the WAL holds every commit until then) …
        assert!(wal() > 0, "the commits are in the WAL");
        // … and the checkpointer's connection copies them into the database file.
        let t0 = Instant::now();
        while size() <= before {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no checkpoint within 10 s: the database file stayed at {before} bytes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stored = store.session_events(&sessions[3], 0, 1000).unwrap();
        assert_eq!(stored.len(), 500);
    }

    #[tokio::test]
    async fn the_writer_groups_sessions_and_reports_each_ones_gap() {
        let store = Store::open_in_memory().unwrap();
        let sessions = sessions_in(&store, 20);
        let writer = Arc::new(Writer::start(store.clone()));
        let mut tasks = Vec::new();
        for (i, id) in sessions.iter().enumerate() {
            let (writer, id) = (writer.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let mut last = 0;
                for seq in 1..=50u64 {
                    // Session 0 skips event 10: its gap is refused, the others go on.
                    let seq = if i == 0 && seq >= 10 { seq + 1 } else { seq };
                    let e = ev(seq).event.clone();
                    match writer.append(&id, vec![e]).await {
                        Ok(l) => last = l,
                        Err(StoreError::Gap { .. }) => return last,
                        Err(e) => panic!("{e}"),
                    }
                }
                last
            }));
        }
        let mut lasts = Vec::new();
        for t in tasks {
            lasts.push(t.await.unwrap());
        }
        assert_eq!(lasts[0], 9);
        assert!(lasts[1..].iter().all(|&l| l == 50), "{lasts:?}");
        for (i, id) in sessions.iter().enumerate() {
            let stored = store.session_events(id, 0, 100).unwrap();
            let want = if i == 0 { 9 } else { 50 };
            assert_eq!(stored.len(), want);
            assert!(
                stored
                    .iter()
                    .enumerate()
                    .all(|(k, e)| e.seq == k as u64 + 1)
            );
        }
    }
}
