//! zstd over async byte streams (workspace exports): the `zstd` crate's streaming
//! encoder and decoder run on a blocking thread, fed and drained through channels, so a
//! slow reader or writer never stalls the runtime and memory stays bounded.

use std::io::{Read, Write};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

/// Chunks in flight on each side of the coder.
const DEPTH: usize = 8;
const LEVEL: i32 = 3;

/// Sends what the encoder writes as chunks.
struct ChanWriter(mpsc::Sender<std::io::Result<Bytes>>);

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader gone"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads the chunks a channel delivers.
struct ChanReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Feeds `input` to a channel; an input error is passed on and ends the feeding.
fn feed<E: std::fmt::Display + Send + 'static>(
    input: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::spawn(async move {
        let mut input = std::pin::pin!(input);
        while let Some(item) = input.next().await {
            let item = item.map_err(|e| std::io::Error::other(e.to_string()));
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

fn drain(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> impl Stream<Item = std::io::Result<Bytes>> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
}

/// `input` compressed with zstd; an input error ends the output with that error.
pub fn compress<E: std::fmt::Display + Send + 'static>(
    input: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let mut reader = ChanReader {
        rx: feed(input),
        cur: Bytes::new(),
    };
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut run = || -> std::io::Result<()> {
            let mut enc = zstd::stream::write::Encoder::new(ChanWriter(tx.clone()), LEVEL)?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                enc.write_all(&buf[..n])?;
            }
            enc.finish()?;
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    drain(rx)
}

/// `input` (zstd) decompressed; bad data or an input error ends the output with an error.
pub fn decompress<E: std::fmt::Display + Send + 'static>(
    input: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let reader = ChanReader {
        rx: feed(input),
        cur: Bytes::new(),
    };
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::task::spawn_blocking(move || {
        let run = || -> std::io::Result<()> {
            let mut dec = zstd::stream::read::Decoder::new(reader)?;
            loop {
                let mut buf = vec![0u8; 256 * 1024];
                let n = dec.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return Ok(());
                }
            }
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(std::io::Error::new(
                e.kind(),
                format!("not a valid zstd stream: {e}"),
            )));
        }
    });
    drain(rx)
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    #[tokio::test]
    async fn round_trip_and_errors() {
        let data: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let parts: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(77_777)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let packed: Vec<Bytes> = compress(futures::stream::iter(parts))
            .try_collect()
            .await
            .unwrap();
        let packed_len: usize = packed.iter().map(|b| b.len()).sum();
        assert!(packed_len < data.len() / 10, "{packed_len}");
        let back: Vec<Bytes> = decompress(futures::stream::iter(
            packed.clone().into_iter().map(Ok::<_, std::io::Error>),
        ))
        .try_collect()
        .await
        .unwrap();
        assert_eq!(back.concat(), data);

        // Garbage and a truncated stream are errors, not short output.
        let e = decompress(futures::stream::iter([Ok::<_, std::io::Error>(
            Bytes::from_static(b"this is not zstd at all"),
        )]))
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
        assert!(e.to_string().contains("not a valid zstd stream"), "{e}");
        let all = packed.concat();
        let cut = Bytes::copy_from_slice(&all[..all.len() / 2]);
        assert!(
            decompress(futures::stream::iter([Ok::<_, std::io::Error>(cut)]))
                .try_collect::<Vec<_>>()
                .await
                .is_err()
        );
        // An input error reaches the output.
        let failing = futures::stream::iter([
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("the workspace went away")),
        ]);
        let e = compress(failing).try_collect::<Vec<_>>().await.unwrap_err();
        assert!(e.to_string().contains("the workspace went away"), "{e}");
    }
}
