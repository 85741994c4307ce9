//! Backups in a real S3-compatible store: moto's server on loopback (installed by
//! `scripts/setup.sh` for the tests).

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kraal_backup::{BackupError, Repo, RepoKey, S3Options};
use kraal_testkit::s3::{Moto, noise};

fn opts(port: u16) -> S3Options {
    S3Options {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        session_token: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_round_trip_through_s3_and_bad_buckets_are_clear_errors() {
    let m = Moto::start(&[]);
    m.create_bucket("kraal-backups");
    let key = RepoKey::from_bytes([9; 32]);
    let repo = Repo::open_with("s3://kraal-backups/team-a", &key, &opts(m.port)).unwrap();
    repo.check().await.unwrap();

    let data = noise(7, 9 << 20);
    let mut w = repo
        .writer(serde_json::json!({"workspace": "s3demo"}))
        .await;
    for part in data.chunks(77_777) {
        w.write(part).await.unwrap();
    }
    let m1 = w.finish().await.unwrap();
    // A second backup of the same data uploads nothing new.
    let mut w = repo
        .writer(serde_json::json!({"workspace": "s3demo"}))
        .await;
    w.write(&data).await.unwrap();
    let m2 = w.finish().await.unwrap();
    assert_eq!(m1.chunks, m2.chunks);

    // Another repository object (another daemon) with the same key reads it back.
    let again = Repo::open_with("s3://kraal-backups/team-a", &key, &opts(m.port)).unwrap();
    let l = again.list().await.unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].meta["workspace"], "s3demo");
    let back: Vec<bytes::Bytes> = again.read(&l[0]).try_collect().await.unwrap();
    assert_eq!(back.concat(), data);

    // A bucket that does not exist: the error names the store and what failed.
    let missing = Repo::open_with("s3://no-such-bucket", &key, &opts(m.port)).unwrap();
    let e = missing.check().await.unwrap_err();
    assert!(matches!(e, BackupError::Store { .. }), "{e}");
    let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        chain.contains("s3://no-such-bucket") && chain.contains("listing backups"),
        "{chain}"
    );
    // An unreachable endpoint fails (bounded), not hangs.
    let mut dead = opts(1);
    dead.endpoint = Some("http://127.0.0.1:1".into());
    let t0 = Instant::now();
    let e = Repo::open_with("s3://kraal-backups", &key, &dead)
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(60), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_the_store_refuses_are_a_clear_error() {
    // moto checks signatures once its first unsigned request (the bucket) is done; no
    // access key exists, so every key is refused as an S3 server would.
    let m = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]);
    m.create_bucket("locked");
    let key = RepoKey::from_bytes([3; 32]);
    let mut bad = opts(m.port);
    bad.access_key_id = Some("AKIAWRONGWRONGWRONG1".into());
    bad.secret_access_key = Some("not-the-secret".into());
    let repo = Repo::open_with("s3://locked/x", &key, &bad).unwrap();
    let e = repo.check().await.unwrap_err();
    assert!(matches!(e, BackupError::Denied { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("s3://locked/x refused the credentials")
            && msg.contains("AWS_ACCESS_KEY_ID")
            && msg.contains("AKIAWRONGWRONGWRONG1"),
        "{msg}"
    );
    assert!(
        !msg.contains("not-the-secret"),
        "the secret is never shown: {msg}"
    );
}
