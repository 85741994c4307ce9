//! Workspace backups end to end: back up, remove, restore — on the same daemon, on a
//! second daemon with its own data directory, and through a real S3-compatible server
//! (moto) — and the files (tracked, untracked, binary, modes, symlinks), the git state and
//! the session history come back identical.

use std::process::{Command, Stdio};
use std::time::Duration;

use kraal_testkit::s3::Moto;

use crate::harness::*;

/// Everything about the volume that must survive, as text: every path with its type,
/// mode and link target, every file's SHA-256, and git's view (the index by its content:
/// its stat cache of inode numbers and ctimes cannot survive a restore). `lost+found` is
/// the file system's, made by whichever mkfs made the volume.
fn fingerprint(d: &Daemon, ws: &str) -> String {
    let o = d.exec(
        ws,
        "cd /workspace && find . -path ./.kraal -prune -o -path ./lost+found -prune -o -printf '%p %y %m %l\\n' | sort && \
         find . -path ./.kraal -prune -o -path ./.git/index -prune -o -type f -print0 | sort -z | xargs -0 sha256sum && \
         git ls-files --stage && git status --porcelain && git log --format='%H %s' && git stash list",
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    o.stdout
}

fn backup_id(d: &Daemon, ws: &str) -> String {
    let out = d.ok(&["backup", ws]);
    out.split_whitespace()
        .find(|w| w.starts_with("bk-"))
        .unwrap_or_else(|| panic!("no backup id in {out:?}"))
        .to_owned()
}

fn session_ids(d: &Daemon, ws: &str) -> Vec<String> {
    let v: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["sessions", ws, "--json"])).unwrap();
    v.iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// moto with a bucket.
fn moto_with_bucket(bucket: &str) -> Moto {
    moto_with_bucket_env(bucket, &[])
}

fn moto_with_bucket_env(bucket: &str, env: &[(&str, &str)]) -> Moto {
    let m = Moto::start(env);
    m.create_bucket(bucket);
    m
}

#[test]
fn backup_remove_restore_here_on_a_second_daemon_and_through_s3() {
    let (_model, d) = crate::sessions::with_model_on(
        r#"{"turns": [{"respond": [{"text": "noted in the session"}]}]}"#,
        &[],
    );
    let repo = git_repo(d.dir.path(), "bk");
    d.ok(&["up", repo.to_str().unwrap()]);
    // A workspace with history and mess: a commit, a staged and an unstaged change, an
    // untracked binary, an executable, a symlink, an empty directory, a stash.
    let o = d.exec(
        "bk",
        "set -e; cd /workspace; git config user.email t@x; git config user.name t; \
         echo two >> README.md; git commit -qam second; \
         echo staged > staged.txt; git add staged.txt; echo dirty >> README.md; \
         head -c 3145728 /dev/urandom > report.pdf; printf '#!/bin/sh\\necho hi\\n' > run.sh; \
         chmod 755 run.sh; ln -s report.pdf latest.pdf; mkdir -p empty/dir; \
         echo stashed > s.txt; git add s.txt; git stash -q; echo ok",
    );
    assert_eq!(o.stdout.trim(), "ok", "{o:?}");
    let o = d.run(&["new-chat", "bk", "-m", "remember this"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let sessions = session_ids(&d, "bk");
    assert_eq!(sessions.len(), 1);
    let events = d.session_events(&sessions[0]);
    let before = fingerprint(&d, "bk");

    // Back up, remove, restore on the same daemon. gVisor's volume is read on the host,
    // as a tree of files.
    let id = backup_id(&d, "bk");
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["backups", "ls", "--json"])).unwrap();
    let first = list.iter().find(|b| b["id"] == id).unwrap();
    assert_eq!(first["workspace"], "bk");
    assert!(first["files"].as_u64().unwrap() > 10, "{first}");
    // A second backup of the unchanged workspace stores (almost) nothing new.
    let o = d.ok(&["backup", "bk", "--json"]);
    assert!(o.contains("\"backup\""), "{o}");
    // Removing a workspace that uses backups keeps its last state as one more.
    let count = |d: &Daemon| {
        let l: Vec<serde_json::Value> =
            serde_json::from_str(&d.ok(&["backups", "ls", "--json"])).unwrap();
        l.iter().filter(|b| b["workspace"] == "bk").count()
    };
    let n = count(&d);
    let o = d.ok(&["rm", "bk", "--yes"]);
    assert!(o.contains("its backups are kept"), "{o}");
    assert_eq!(count(&d), n + 1, "a final backup");
    let o = d.ok(&["restore", &id]);
    assert!(o.contains("restored") && o.contains("bk"), "{o}");
    assert_eq!(
        fingerprint(&d, "bk"),
        before,
        "files and git state after restore"
    );
    // Written on the host before the one and only start.
    let logs = d.ok(&["logs", "bk", "--events-only"]);
    assert!(logs.contains("volume written on the host"), "{logs}");
    assert_eq!(logs.matches("running on gvisor").count(), 1, "{logs}");
    // The session history came back with the volume.
    wait_until(Duration::from_secs(30), "the restored session", || {
        session_ids(&d, "bk") == sessions
    });
    let restored = d.session_events(&sessions[0]);
    assert_eq!(restored.len(), events.len());
    assert_eq!(
        restored
            .iter()
            .map(|e| e["seq"].clone())
            .collect::<Vec<_>>(),
        events.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>()
    );
    // A name that is taken, and an unknown backup, are clear errors.
    let o = d.run(&["restore", &id]);
    assert!(o.stderr.contains("already exists"), "{o:?}");
    let o = d.run(&["restore", "bk-nope"]);
    assert!(o.stderr.contains("no backup bk-nope"), "{o:?}");

    // A second daemon with its own data directory restores from the same store.
    let store = d.data().join("backups");
    let key = d.data().join("backup.key");
    let d2 = Daemon::start_with_env(&[
        ("KRAAL_BACKUP_URL", store.to_str().unwrap()),
        ("KRAAL_BACKUP_KEY_FILE", key.to_str().unwrap()),
    ]);
    d2.ok(&["restore", &id, "--as", "elsewhere"]);
    assert_eq!(
        fingerprint(&d2, "elsewhere"),
        before,
        "restored on another daemon"
    );

    // Export to a file, import it on the second daemon: the same files, git state and
    // session history. The file is a plain tar.zst that starts with the description.
    // A stopped workspace is started for the export, then stopped again; its backup
    // reads the volume on the host without starting it.
    let file = d.dir.path().join("bk.tar.zst");
    d.ok(&["down", "bk"]);
    d.ok(&["export", "bk", "-o", file.to_str().unwrap()]);
    wait_until(Duration::from_secs(30), "bk stopped again", || {
        d.workspace("bk")["state"] == "stopped"
    });
    let o = d.ok(&["backup", "bk"]);
    assert!(o.contains("bk-"), "{o}");
    assert_eq!(d.workspace("bk")["state"], "stopped");
    let logs = d.ok(&["logs", "bk", "--events-only"]);
    assert!(
        logs.contains("starting it to export it") && !logs.contains("starting it to back it up"),
        "{logs}"
    );
    let volume = d
        .data()
        .join("workspaces")
        .join(d.workspace("bk")["id"].as_str().unwrap())
        .join("volume");
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(volume.to_str().unwrap()),
        "the stopped workspace's volume is unmounted again"
    );
    let o = d.run(&["export", "bk", "-o", file.to_str().unwrap()]);
    assert!(o.stderr.contains("already exists"), "{o:?}");
    #[allow(clippy::disallowed_methods)] // test harness: reading the file with GNU tar
    let listing = Command::new("tar")
        .args(["--zstd", "-tf", file.to_str().unwrap()])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing.starts_with("kraal-export.json\n./\n"), "{listing}");
    assert!(
        listing.contains("./report.pdf\n") && listing.contains("./.git/HEAD\n"),
        "{listing}"
    );
    // (Session ids are unique per daemon: the copy restored above goes first.)
    d2.ok(&["rm", "elsewhere", "--yes"]);
    let o = d2.ok(&["import", file.to_str().unwrap(), "--as", "imported"]);
    assert!(o.contains("imported") && o.contains("running"), "{o}");
    assert_eq!(
        fingerprint(&d2, "imported"),
        before,
        "imported on another daemon"
    );
    wait_until(Duration::from_secs(30), "the imported session", || {
        session_ids(&d2, "imported") == sessions
    });
    assert_eq!(d2.session_events(&sessions[0]).len(), events.len());
    // A file that is not an export, and a truncated one: clear errors, nothing left.
    let junk = d.dir.path().join("junk.tar.zst");
    std::fs::write(&junk, b"not an export").unwrap();
    let o = d2.run(&["import", junk.to_str().unwrap()]);
    assert!(o.stderr.contains("not a valid zstd stream"), "{o:?}");
    let whole = std::fs::read(&file).unwrap();
    std::fs::write(&junk, &whole[..whole.len() / 2]).unwrap();
    let o = d2.run(&["import", junk.to_str().unwrap(), "--as", "half"]);
    assert_ne!(o.code, Some(0), "{o:?}");
    let o = d2.run(&["import", "/nonexistent.tar.zst"]);
    assert!(
        o.stderr.contains("cannot open /nonexistent.tar.zst"),
        "{o:?}"
    );
    assert_eq!(names(&d2), ["imported"]);

    // `rm` keeps a workspace's backups; `rm --purge` deletes them.
    d.ok(&["rm", "bk", "--yes", "--purge"]);
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["backups", "ls", "--json"])).unwrap();
    assert!(list.iter().all(|b| b["workspace"] != "bk"), "{list:?}");
    let o = d.run(&["restore", &id]);
    assert!(o.stderr.contains(&format!("no backup {id}")), "{o:?}");

    // Through S3 (moto).
    let moto = moto_with_bucket("kraal-it");
    let endpoint = moto.endpoint();
    let s3 = [
        ("KRAAL_BACKUP_URL", "s3://kraal-it/daemons"),
        ("KRAAL_BACKUP_KEY_FILE", key.to_str().unwrap()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ];
    let d4 = Daemon::start_with_env(&s3);
    let repo4 = git_repo(d4.dir.path(), "s3ws");
    d4.ok(&["up", repo4.to_str().unwrap()]);
    d4.exec("s3ws", "head -c 2097152 /dev/urandom > blob.bin");
    let fp = fingerprint(&d4, "s3ws");
    let sid = backup_id(&d4, "s3ws");
    d4.ok(&["rm", "s3ws", "--yes"]);
    d4.ok(&["restore", &sid]);
    assert_eq!(fingerprint(&d4, "s3ws"), fp, "restored through S3");

    // A bucket that does not exist: a clear error, no workspace touched.
    let bad = Daemon::start_with_env(&[
        ("KRAAL_BACKUP_URL", "s3://no-such-bucket"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]);
    let r = git_repo(bad.dir.path(), "badbk");
    bad.ok(&["up", r.to_str().unwrap()]);
    let o = bad.run(&["backup", "badbk"]);
    assert_ne!(o.code, Some(0));
    assert!(o.stderr.contains("s3://no-such-bucket"), "{o:?}");

    // Credentials the store refuses (moto checks signatures after its first request, the
    // bucket; no key exists): the error says so and names the key, never the secret.
    let locked = moto_with_bucket_env("locked", &[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]);
    let locked_endpoint = locked.endpoint();
    let denied = Daemon::start_with_env(&[
        ("KRAAL_BACKUP_URL", "s3://locked"),
        ("AWS_ENDPOINT_URL", locked_endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "AKIAKRAALWRONGKEY001"),
        ("AWS_SECRET_ACCESS_KEY", "wrong-secret-value"),
        ("AWS_REGION", "us-east-1"),
    ]);
    let r = git_repo(denied.dir.path(), "deniedbk");
    denied.ok(&["up", r.to_str().unwrap()]);
    let o = denied.run(&["backup", "deniedbk"]);
    assert_ne!(o.code, Some(0));
    assert!(
        o.stderr
            .contains("backup store s3://locked refused the credentials")
            && o.stderr.contains("AKIAKRAALWRONGKEY001")
            && o.stderr.contains("InvalidAccessKeyId"),
        "{o:?}"
    );
    assert!(!o.stderr.contains("wrong-secret-value"), "{o:?}");
    let o = denied.run(&["backups", "ls"]);
    assert!(o.stderr.contains("refused the credentials"), "{o:?}");
}

/// A backup read on the host (gVisor) restores into a QEMU microVM, whose volume only
/// its guest may write: the tree goes in as a tar through the guest.
#[test]
fn a_backup_read_on_the_host_restores_into_a_microvm_through_its_guest() {
    let d = Daemon::start();
    let repo = git_repo(d.dir.path(), "across");
    d.ok(&["up", repo.to_str().unwrap()]);
    let o = d.exec(
        "across",
        "set -e; cd /workspace; head -c 1048576 /dev/urandom > blob.bin; ln -s blob.bin link; \
         mkdir -p a/b; echo deep > a/b/c.txt; chmod 700 a; ln a/b/c.txt hard.txt; echo ok",
    );
    assert_eq!(o.stdout.trim(), "ok", "{o:?}");
    let before = fingerprint(&d, "across");
    let id = backup_id(&d, "across");
    let store = d.data().join("backups");
    let key = d.data().join("backup.key");
    let vm = Daemon::start_qemu(&[
        ("KRAAL_BACKUP_URL", store.to_str().unwrap()),
        ("KRAAL_BACKUP_KEY_FILE", key.to_str().unwrap()),
    ]);
    vm.ok(&["restore", &id, "--as", "in-vm"]);
    assert_eq!(vm.workspace("in-vm")["backend"], "qemu");
    assert_eq!(
        fingerprint(&vm, "in-vm"),
        before,
        "restored into the microVM"
    );
    let o = vm.exec("in-vm", "stat -c %h /workspace/hard.txt");
    assert_eq!(o.stdout.trim(), "2", "the hard link is one again: {o:?}");
}

fn count_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

fn names(d: &Daemon) -> Vec<String> {
    d.workspaces()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_daemon_killed_mid_backup_or_mid_restore_leaves_no_half_backup_and_no_half_workspace() {
    let mut d = Daemon::start();
    let repo = git_repo(d.dir.path(), "big");
    d.ok(&["up", repo.to_str().unwrap()]);
    let o = d.exec("big", "head -c 120M /dev/urandom > a.bin && echo ok");
    assert_eq!(o.stdout.trim(), "ok", "{o:?}");
    let first = backup_id(&d, "big");
    let chunks = d.data().join("backups/chunks");
    let after_first = count_files(&chunks);

    // Killed while the second backup uploads its new chunks.
    let o = d.exec("big", "head -c 120M /dev/urandom > b.bin && echo ok");
    assert_eq!(o.stdout.trim(), "ok", "{o:?}");
    let mut cli = d
        .cmd(&["backup", "big"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "new chunks in the store", || {
        count_files(&chunks) > after_first + 5
    });
    d.kill9();
    let _ = cli.kill();
    let _ = cli.wait();
    d.spawn();
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["backups", "ls", "--json"])).unwrap();
    assert_eq!(list.len(), 1, "only the finished backup exists: {list:?}");
    assert_eq!(list[0]["id"], first);

    // Killed while restoring: the half-restored workspace is removed after the restart.
    let mut cli = d
        .cmd(&["restore", &first, "--as", "half"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "the restoring workspace", || {
        names(&d).contains(&"half".to_owned())
    });
    d.kill9();
    let _ = cli.kill();
    let _ = cli.wait();
    d.spawn();
    wait_until(
        Duration::from_secs(60),
        "the half-restored workspace to go",
        || !names(&d).contains(&"half".to_owned()),
    );
    // And the backup still restores completely.
    d.ok(&["restore", &first, "--as", "whole"]);
    let o = d.exec(
        "whole",
        "ls -l a.bin | awk '{print $5}'; test -e b.bin || echo no-b",
    );
    assert_eq!(o.stdout, "125829120\nno-b\n", "{o:?}");
}
