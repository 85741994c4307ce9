//! Length-delimited frame codec with a stream id and a kind byte.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Largest accepted frame payload; bigger writes are split by the sender.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame i/o failed")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes is too short for its header")]
    Short { len: usize },
    #[error("unknown frame kind {kind}")]
    Kind { kind: u8 },
}

/// What a frame's payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// JSON: a `Request` (first frame of a stream) or a `StreamMsg`.
    Control = 0,
    /// Process standard output: `[u64 seq][bytes]`.
    Stdout = 1,
    /// Process standard error: `[u64 seq][bytes]`.
    Stderr = 2,
    /// Process standard input: raw bytes.
    Stdin = 3,
    /// File contents: raw bytes.
    Data = 4,
    /// The sender is done with this stream.
    Close = 5,
}

impl FrameKind {
    fn from_u8(b: u8) -> Result<Self, CodecError> {
        Ok(match b {
            0 => FrameKind::Control,
            1 => FrameKind::Stdout,
            2 => FrameKind::Stderr,
            3 => FrameKind::Stdin,
            4 => FrameKind::Data,
            5 => FrameKind::Close,
            kind => return Err(CodecError::Kind { kind }),
        })
    }
}

/// One frame on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub kind: FrameKind,
    pub payload: Bytes,
}

impl Frame {
    pub fn control<T: serde::Serialize>(stream: u32, msg: &T) -> Frame {
        // Serializing our own message enums cannot fail: they hold no maps with non-string keys.
        let payload = serde_json::to_vec(msg).expect("protocol messages serialize");
        Frame {
            stream,
            kind: FrameKind::Control,
            payload: payload.into(),
        }
    }

    pub fn close(stream: u32) -> Frame {
        Frame {
            stream,
            kind: FrameKind::Close,
            payload: Bytes::new(),
        }
    }

    pub fn data(stream: u32, kind: FrameKind, payload: Bytes) -> Frame {
        Frame {
            stream,
            kind,
            payload,
        }
    }

    /// An output frame: sequence number then bytes.
    pub fn output(stream: u32, kind: FrameKind, seq: u64, bytes: &[u8]) -> Frame {
        let mut b = BytesMut::with_capacity(8 + bytes.len());
        b.put_u64(seq);
        b.put_slice(bytes);
        Frame {
            stream,
            kind,
            payload: b.freeze(),
        }
    }

    /// Splits an output frame's payload into its sequence number and bytes.
    pub fn split_output(&self) -> Option<(u64, Bytes)> {
        if self.payload.len() < 8 {
            return None;
        }
        let mut p = self.payload.clone();
        let seq = p.get_u64();
        Some((seq, p))
    }

    /// Parses a control payload.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// Encodes and decodes [`Frame`]s over a byte stream.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .max_frame_length(MAX_FRAME + 5)
                .new_codec(),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(mut buf) = self.inner.decode(src)? else {
            return Ok(None);
        };
        if buf.len() < 5 {
            return Err(CodecError::Short { len: buf.len() });
        }
        let stream = buf.get_u32();
        let kind = FrameKind::from_u8(buf.get_u8())?;
        Ok(Some(Frame {
            stream,
            kind,
            payload: buf.freeze(),
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let mut b = BytesMut::with_capacity(5 + frame.payload.len());
        b.put_u32(frame.stream);
        b.put_u8(frame.kind as u8);
        b.put_slice(&frame.payload);
        self.inner.encode(b.freeze(), dst)?;
        Ok(())
    }
}
