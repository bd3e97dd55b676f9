//! Batches as `IngestRequest.batch_zstd`: one zstd frame of the encoded `Batch` that declares
//! its size. Agents build requests with [`IngestRequest::zstd`]; the collector reads them with
//! a [`Decompressor`] it keeps per thread, bounded by its maximum message size before anything
//! is allocated.

use crate::v1::ingest_request::Payload;
use crate::v1::{Batch, IngestRequest};
use prost::Message as _;

/// The collector's answer (INVALID_ARGUMENT) to a request without a batch, and so what a
/// collector from before `batch_zstd` answers to one: agents fall back to `batch` on it.
pub const NO_BATCH: &str = "batch is missing";

/// zstd level requests are compressed at: zstd's default, as gRPC's own zstd uses.
pub const LEVEL: i32 = zstd::DEFAULT_COMPRESSION_LEVEL;

impl IngestRequest {
    /// A request carrying `batch` as a message.
    pub fn plain(batch: Batch) -> IngestRequest {
        IngestRequest {
            payload: Some(Payload::Batch(Box::new(batch))),
        }
    }

    /// A request carrying `batch` encoded and compressed into one zstd frame with its size.
    pub fn zstd(batch: &Batch) -> std::io::Result<IngestRequest> {
        // `bulk` knows the input size, so the frame header records it; the checksum makes a
        // damaged frame an error rather than a different batch.
        let mut c = zstd::bulk::Compressor::new(LEVEL)?;
        c.include_checksum(true)?;
        let frame = c.compress(&batch.encode_to_vec())?;
        Ok(IngestRequest {
            payload: Some(Payload::BatchZstd(frame)),
        })
    }
}

/// True when `bytes` start with the zstd frame magic. An encoded `Batch` never does: its
/// first byte would be the key of field 5 (`strings`) with the varint wire type, which no
/// valid batch holds, so a journal can tell a stored frame from a stored batch.
pub fn is_frame(bytes: &[u8]) -> bool {
    bytes.starts_with(&zstd::zstd_safe::MAGICNUMBER.to_le_bytes())
}

/// Why a `batch_zstd` frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Not a zstd frame, or one without the decompressed size in its header.
    #[error(
        "batch_zstd is not a zstd frame that declares its decompressed size ({0}); compress with the size known (ZSTD_compress2, zstd::bulk::compress), not as a stream"
    )]
    NoSize(&'static str),
    /// The declared size is over the limit.
    #[error("batch_zstd declares {declared} bytes decompressed, more than the maximum of {max}")]
    TooLarge {
        /// Declared size.
        declared: u64,
        /// The collector's maximum message size.
        max: usize,
    },
    /// The frame is damaged, or holds more or less than it declares.
    #[error("batch_zstd does not decompress to its declared {declared} bytes: {why}")]
    Corrupt {
        /// Declared size.
        declared: u64,
        /// zstd's error, or the size found.
        why: String,
    },
}

/// Decompresses `batch_zstd` frames, reusing one zstd context across calls.
pub struct Decompressor(zstd::bulk::Decompressor<'static>);

impl Decompressor {
    /// A new context.
    pub fn new() -> std::io::Result<Decompressor> {
        Ok(Decompressor(zstd::bulk::Decompressor::new()?))
    }

    /// The encoded batch in `frame`, if it declares at most `max` bytes and holds exactly them.
    pub fn batch(&mut self, frame: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
        let declared = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(n)) => n,
            Ok(None) => return Err(FrameError::NoSize("no size in the frame header")),
            Err(_) => return Err(FrameError::NoSize("no zstd frame header")),
        };
        if declared > max as u64 {
            return Err(FrameError::TooLarge { declared, max });
        }
        let corrupt = |why: String| FrameError::Corrupt { declared, why };
        let mut out = Vec::with_capacity(declared as usize);
        // A second frame or a lying header overflows the exact buffer and fails here.
        self.0
            .decompress_to_buffer(frame, &mut out)
            .map_err(|e| corrupt(e.to_string()))?;
        if out.len() as u64 != declared {
            return Err(corrupt(format!("{} bytes found", out.len())));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{self, Shape};

    fn batch() -> Batch {
        synthetic::batch("h", 1, 1 << 60, &Shape::default(), 1)
    }

    fn frame(r: IngestRequest) -> Vec<u8> {
        match r.payload {
            Some(Payload::BatchZstd(f)) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_trips_and_reuses_the_context() {
        let b = batch();
        assert!(!is_frame(&b.encode_to_vec()));
        assert!(is_frame(&frame(IngestRequest::zstd(&b).unwrap())));
        // The magic's first byte, 0x28, is field 5 (`strings`) as a varint: not a batch.
        assert!(Batch::decode(&[0x28, 0xb5, 0x2f, 0xfd][..]).is_err());
        let mut d = Decompressor::new().unwrap();
        for _ in 0..3 {
            let f = frame(IngestRequest::zstd(&b).unwrap());
            assert!(f.len() < b.encoded_len());
            let raw = d.batch(&f, 64 << 20).unwrap();
            assert_eq!(Batch::decode(&raw[..]).unwrap(), b);
        }
    }

    #[test]
    fn refuses_streamed_oversized_damaged_and_trailing_frames() {
        let b = batch();
        let raw = b.encode_to_vec();
        let f = frame(IngestRequest::zstd(&b).unwrap());
        let mut d = Decompressor::new().unwrap();
        // A streamed frame has no size in its header.
        let streamed = zstd::encode_all(&raw[..], 3).unwrap();
        assert!(matches!(
            d.batch(&streamed, 1 << 30),
            Err(FrameError::NoSize(_))
        ));
        assert!(matches!(
            d.batch(b"not zstd", 1 << 30),
            Err(FrameError::NoSize(_))
        ));
        assert!(matches!(d.batch(&[], 1 << 30), Err(FrameError::NoSize(_))));
        // Over the limit before anything is decompressed.
        let e = d.batch(&f, raw.len() - 1).unwrap_err();
        assert_eq!(
            e,
            FrameError::TooLarge {
                declared: raw.len() as u64,
                max: raw.len() - 1
            }
        );
        assert!(e.to_string().contains("more than the maximum"), "{e}");
        // Truncated, damaged, or followed by a second frame.
        let mut damaged = f.clone();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0x55;
        let twice = [f.clone(), f.clone()].concat();
        for bad in [&f[..f.len() - 3], &damaged[..], &twice[..]] {
            assert!(
                matches!(d.batch(bad, 1 << 30), Err(FrameError::Corrupt { .. })),
                "{:?}",
                d.batch(bad, 1 << 30)
            );
        }
        // The context still works afterwards.
        assert_eq!(d.batch(&f, 1 << 30).unwrap(), raw);
    }
}
