//! `kraal backup`, `kraal backups ls|rm`, `kraal restore BACKUP`, `kraal export` and
//! `kraal import`: workspace backups in the daemon's backup store and export files, with
//! progress bars showing throughput.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::Method;
use kraal_api::*;

use crate::client::{Client, enc};

/// Follows an NDJSON transfer to its last line, drawing progress.
async fn follow(
    body: hyper::body::Incoming,
    what: &str,
    json: bool,
) -> anyhow::Result<TransferLine> {
    follow_with(body, json, bar(what, json)).await
}

/// A spinner with bytes and throughput on a terminal (none for `--json` or a pipe).
fn bar(what: &str, json: bool) -> Option<indicatif::ProgressBar> {
    (!json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix} {bytes}/{total_bytes} {binary_bytes_per_sec} {wide_msg}",
            )
            .expect("valid template"),
        );
        b.set_prefix(what.to_owned());
        b.enable_steady_tick(Duration::from_millis(120));
        b
    })
}

/// Follows an NDJSON transfer, drawing its progress on `bar` if given.
async fn follow_with(
    body: hyper::body::Incoming,
    json: bool,
    bar: Option<indicatif::ProgressBar>,
) -> anyhow::Result<TransferLine> {
    let mut last = None;
    crate::client::ndjson_lines(body, |line| {
        if json {
            print!("{}", String::from_utf8_lossy(line));
        }
        let l: TransferLine =
            serde_json::from_slice(line).context("bad progress from the daemon")?;
        match &l {
            TransferLine::Progress {
                bytes,
                total,
                chunks,
                new_chunks,
                uploaded,
            } => {
                if let Some(b) = &bar {
                    b.set_length(total.unwrap_or(*bytes));
                    b.set_position(*bytes);
                    if *chunks > 0 {
                        b.set_message(format!(
                            "{chunks} chunks, {new_chunks} new, {} stored",
                            indicatif::HumanBytes(*uploaded)
                        ));
                    }
                }
            }
            _ => last = Some(l),
        }
        Ok(())
    })
    .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    last.context("the daemon ended the stream without a result")
}

pub async fn backup(c: &Client, ws: &str, json: bool) -> anyhow::Result<()> {
    let body = c
        .post_stream(
            &format!("/v1/workspaces/{}/backups", enc(ws)),
            &serde_json::json!({}),
        )
        .await?;
    let t0 = std::time::Instant::now();
    match follow(body, "backup", json).await? {
        TransferLine::Backup(b) => {
            if !json {
                let secs = t0.elapsed().as_secs_f64();
                println!(
                    "{} — {} of {} in {:.1} s ({}/s), {} chunks",
                    b.id,
                    indicatif::HumanBytes(b.size),
                    b.workspace,
                    secs,
                    indicatif::HumanBytes((b.size as f64 / secs.max(0.001)) as u64),
                    b.chunks
                );
            }
            Ok(())
        }
        TransferLine::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

pub async fn restore(c: &Client, id: &str, name: Option<&str>, json: bool) -> anyhow::Result<()> {
    let body = c
        .post_stream(
            &format!("/v1/backups/{}/restore", enc(id)),
            &RestoreBackup {
                name: name.map(str::to_owned),
            },
        )
        .await?;
    match follow(body, "restore", json).await? {
        TransferLine::Workspace(w) => {
            if !json {
                println!(
                    "restored {id} as workspace {} ({})",
                    w.name,
                    w.state.as_str()
                );
            }
            Ok(())
        }
        TransferLine::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

pub async fn ls(c: &Client, json: bool) -> anyhow::Result<()> {
    let l: Vec<BackupInfo> = c.get("/v1/backups").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["ID", "WORKSPACE", "CREATED", "KIND", "SIZE", "CHUNKS"]);
    for b in l {
        t.add_row([
            b.id,
            if b.daemon {
                "(daemon state)".to_owned()
            } else {
                b.workspace
            },
            b.created_at,
            if b.scheduled { "scheduled" } else { "manual" }.to_owned(),
            indicatif::HumanBytes(b.size).to_string(),
            b.chunks.to_string(),
        ]);
    }
    println!("{}", t.trim_fmt());
    Ok(())
}

pub async fn rm(c: &Client, id: &str) -> anyhow::Result<()> {
    c.raw(Method::DELETE, &format!("/v1/backups/{}", enc(id)), None)
        .await?;
    eprintln!("backup {id} removed");
    Ok(())
}

/// `kraal export WS [-o FILE]`: the workspace as a zstd-compressed tar, written to a
/// `.partial` file renamed into place only once complete (`-` writes to standard output).
pub async fn export(
    c: &Client,
    ws: &str,
    out: Option<&std::path::Path>,
    force: bool,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let default = std::path::PathBuf::from(format!("{ws}.tar.zst"));
    let path = out.unwrap_or(&default);
    let to_stdout = path.as_os_str() == "-";
    if !to_stdout && !force && path.exists() {
        bail!(
            "{} already exists; choose another file with -o or overwrite it with --force",
            path.display()
        );
    }
    let partial = std::path::PathBuf::from(format!("{}.partial", path.display()));
    let t0 = std::time::Instant::now();
    let mut body = c
        .get_stream(&format!("/v1/workspaces/{}/export", enc(ws)))
        .await?;
    let mut file: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if to_stdout {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(
            tokio::fs::File::create(&partial)
                .await
                .with_context(|| format!("cannot create {}", partial.display()))?,
        )
    };
    let pb = bar("export", false);
    let mut n = 0u64;
    let copied: anyhow::Result<()> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                anyhow::anyhow!("the daemon ended the export early ({e}); see `kraal logs {ws}`")
            })?;
            if let Some(data) = frame.data_ref() {
                file.write_all(data).await.context("writing the export")?;
                n += data.len() as u64;
                if let Some(b) = &pb {
                    b.set_length(n);
                    b.set_position(n);
                }
            }
        }
        file.flush().await.context("writing the export")?;
        Ok(())
    }
    .await;
    if let Some(b) = &pb {
        b.finish_and_clear();
    }
    if let Err(e) = copied {
        if !to_stdout {
            let _ = std::fs::remove_file(&partial);
        }
        return Err(e);
    }
    if !to_stdout {
        drop(file);
        let f = std::fs::File::open(&partial)?;
        f.sync_all()?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("cannot rename {} into place", partial.display()))?;
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "exported {ws} to {} ({} compressed) in {secs:.1} s ({}/s)",
            path.display(),
            indicatif::HumanBytes(n),
            indicatif::HumanBytes((n as f64 / secs.max(0.001)) as u64)
        );
    }
    Ok(())
}

/// `kraal import FILE [--as NAME]`: a new workspace from an export file.
pub async fn import(
    c: &Client,
    file: &std::path::Path,
    name: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let size = f.metadata().await?.len();
    let pb = bar("import", json);
    if let Some(b) = &pb {
        b.set_length(size);
    }
    let upload = pb.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).map(move |r| {
        if let (Ok(b), Some(pb)) = (&r, &upload) {
            pb.inc(b.len() as u64);
            if pb.position() >= size {
                pb.set_message("unpacking and starting…");
            }
        }
        r.map(hyper::body::Frame::data)
    });
    let path = match name {
        Some(n) => format!("/v1/workspaces/import?name={}", enc(n)),
        None => "/v1/workspaces/import".to_owned(),
    };
    let body = c
        .post_body(
            &path,
            "application/zstd",
            http_body_util::StreamBody::new(stream),
        )
        .await?;
    let end = follow_with(body, json, None).await;
    if let Some(b) = pb {
        b.finish_and_clear();
    }
    match end? {
        TransferLine::Workspace(w) => {
            if !json {
                println!(
                    "imported {} as workspace {} ({})",
                    file.display(),
                    w.name,
                    w.state.as_str()
                );
            }
            Ok(())
        }
        TransferLine::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

pub async fn state_backup(c: &Client, json: bool) -> anyhow::Result<()> {
    let b: StateBackupInfo = c
        .send::<(), _>(Method::POST, "/v1/state/backups", None)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        println!(
            "{} — daemon state of {} ({} workspaces, {})",
            b.id,
            b.hostname,
            b.workspaces.len(),
            indicatif::HumanBytes(b.size)
        );
    }
    Ok(())
}

pub async fn state_ls(c: &Client, json: bool) -> anyhow::Result<()> {
    let l: Vec<StateBackupInfo> = c.get("/v1/state/backups").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["ID", "CREATED", "HOST", "KIND", "WORKSPACES", "SIZE"]);
    for b in l {
        t.add_row([
            b.id,
            b.created_at,
            b.hostname,
            if b.scheduled { "scheduled" } else { "manual" }.to_owned(),
            b.workspaces.len().to_string(),
            indicatif::HumanBytes(b.size).to_string(),
        ]);
    }
    println!("{}", t.trim_fmt());
    Ok(())
}
