//! `kraal backup`, `kraal backups ls|rm` and `kraal restore BACKUP`: workspace backups in
//! the daemon's backup store, with a progress bar showing throughput.

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
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
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
    });
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
            b.workspace,
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
