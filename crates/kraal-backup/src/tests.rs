//! Backups in a local directory: round trip, deduplication, tampering, wrong keys,
//! interrupted backups and garbage collection.

use futures::TryStreamExt;

use kraal_testkit::s3::noise;

use super::*;

async fn backup(repo: &Repo, data: &[u8]) -> (Manifest, Progress) {
    let mut w = repo.writer(serde_json::json!({"workspace": "demo"})).await;
    // Odd write sizes, like a pipe delivers them.
    for part in data.chunks(100_003) {
        w.write(part).await.unwrap();
    }
    let p = w.progress().clone();
    let m = w.finish().await.unwrap();
    (m, p)
}

async fn restore(repo: &Repo, id: &str) -> Result<Vec<u8>> {
    let m = repo.manifest(id).await?;
    let parts: Vec<Bytes> = repo.read(&m).try_collect().await?;
    Ok(parts.concat())
}

fn key(b: u8) -> RepoKey {
    RepoKey::from_bytes([b; 32])
}

#[tokio::test]
async fn a_backup_round_trips_and_a_second_one_stores_only_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path().to_str().unwrap(), &key(1)).unwrap();
    let mut data = noise(1, 24 << 20);
    let (m1, _) = backup(&repo, &data).await;
    assert_eq!(m1.size, data.len() as u64);
    assert!(m1.chunks.len() >= 12, "{} chunks", m1.chunks.len());
    assert!(m1.chunks.iter().all(|c| c.len as usize <= MAX_CHUNK));
    assert_eq!(restore(&repo, &m1.id).await.unwrap(), data);

    // Change 10 bytes in the middle and insert 1000 at the start: content-defined
    // chunking keeps almost every chunk.
    data[12 << 20..(12 << 20) + 10].copy_from_slice(b"0123456789");
    data.splice(0..0, noise(2, 1000));
    let mut w = repo.writer(serde_json::json!({"workspace": "demo"})).await;
    for part in data.chunks(65_536) {
        w.write(part).await.unwrap();
    }
    let m2 = w.finish().await.unwrap();
    let new: Vec<_> = m2
        .chunks
        .iter()
        .filter(|c| !m1.chunks.iter().any(|o| o.id == c.id))
        .collect();
    assert!(
        new.len() <= 4,
        "{} of {} chunks are new after a small change",
        new.len(),
        m2.chunks.len()
    );
    assert_eq!(restore(&repo, &m2.id).await.unwrap(), data);
    let l = repo.list().await.unwrap();
    assert_eq!(
        l.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        [m1.id.as_str(), m2.id.as_str()]
    );
    assert_eq!(l[0].meta["workspace"], "demo");

    // Nothing readable in the store: chunk names are keyed hashes, contents sealed.
    for e in walk(dir.path()) {
        let b = std::fs::read(&e).unwrap();
        assert!(!b.windows(32).any(|w| data.windows(32).next() == Some(w)));
        assert!(
            !String::from_utf8_lossy(&b).contains("demo"),
            "{}",
            e.display()
        );
    }
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test]
async fn wrong_keys_tampering_and_unknown_ids_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path().to_str().unwrap(), &key(1)).unwrap();
    let data = noise(3, 3 << 20);
    let (m, _) = backup(&repo, &data).await;

    let other = Repo::open(dir.path().to_str().unwrap(), &key(2)).unwrap();
    let e = other.manifest(&m.id).await.unwrap_err();
    assert!(matches!(e, BackupError::Crypto { .. }), "{e}");
    assert!(e.to_string().contains("wrong backup key"), "{e}");

    // Flip a byte of one chunk: the restore fails, naming the damage.
    let chunk = walk(&dir.path().join("chunks"))[0].clone();
    let mut b = std::fs::read(&chunk).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&chunk, b).unwrap();
    let e = restore(&repo, &m.id).await.unwrap_err();
    assert!(matches!(e, BackupError::Crypto { .. }), "{e}");

    for bad in ["bk-nope", "../../etc/passwd", "x"] {
        let e = repo.manifest(bad).await.unwrap_err();
        assert!(matches!(e, BackupError::NotFound { .. }), "{bad}: {e}");
    }
    assert!(matches!(
        Repo::open("relative/dir", &key(1)).unwrap_err(),
        BackupError::Config { .. }
    ));
    assert!(
        Repo::open("s3://", &key(1))
            .unwrap_err()
            .to_string()
            .contains("bucket")
    );
}

#[tokio::test]
async fn an_interrupted_backup_leaves_no_backup_and_gc_removes_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path().to_str().unwrap(), &key(1)).unwrap();
    let (kept, _) = backup(&repo, &noise(4, 4 << 20)).await;
    {
        let mut w = repo.writer(serde_json::json!({})).await;
        w.write(&noise(5, 12 << 20)).await.unwrap();
        // Dropped without finish: like a daemon killed mid-backup.
    }
    // Let the dropped uploads settle.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let l = repo.list().await.unwrap();
    assert_eq!(l.len(), 1, "only the finished backup exists");
    let removed = repo.gc().await.unwrap();
    assert!(removed > 0, "orphan chunks are collected");
    assert_eq!(restore(&repo, &kept.id).await.unwrap(), noise(4, 4 << 20));
    repo.delete(&kept.id).await.unwrap();
    assert!(repo.list().await.unwrap().is_empty());
    assert!(repo.gc().await.unwrap() > 0);
    assert!(walk(&dir.path().join("chunks")).is_empty());
}

#[tokio::test]
async fn garbage_collection_waits_for_a_backup_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path().to_str().unwrap(), &key(1)).unwrap();
    let data = noise(6, 8 << 20);
    let mut w = repo.writer(serde_json::json!({})).await;
    w.write(&data).await.unwrap();
    // Its chunks are in the store but no manifest names them yet.
    let gc = tokio::spawn({
        let repo = repo.clone();
        async move { repo.gc().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!gc.is_finished(), "gc ran while a backup was being written");
    let m = w.finish().await.unwrap();
    assert_eq!(gc.await.unwrap().unwrap(), 0, "nothing is garbage");
    assert_eq!(restore(&repo, &m.id).await.unwrap(), data);
}

#[test]
fn the_key_file_is_created_private_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k/backup.key");
    let a = RepoKey::load_or_create(&p).unwrap();
    let b = RepoKey::load_or_create(&p).unwrap();
    assert_eq!(a.0, b.0);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::write(&p, b"short").unwrap();
    assert!(
        RepoKey::load_or_create(&p)
            .unwrap_err()
            .to_string()
            .contains("32 bytes")
    );
    assert!(is_backup_id("bk-20261124t031500-abcdef") && !is_backup_id("bk-../x"));
}
