//! Broker-side recompression for topics whose `compression.type` is a codec rather than
//! `producer`, as Kafka does: the records section of a batch is decompressed and
//! compressed again with the topic's codec and level. Every other header field (producer
//! id and epoch, base sequence, offset deltas, timestamps, transactional bit) stays as the
//! producer sent it, so idempotence and offsets are unaffected; the CRC is recomputed.

use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{self as codecs, Compressor, Decompressor};

use crate::batch::{parse_header, BatchError, ATTR_POS, CRC_POS, HEADER_LEN, LENGTH_END};

/// Mask of the compression codec in the batch attributes.
const CODEC_MASK: i16 = 0x07;

/// Record batch compression codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Records stored as they are.
    None,
    /// gzip (deflate).
    Gzip,
    /// Snappy, in the xerial framing Java clients write.
    Snappy,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Codec {
    /// The codec named by a `compression.type` value (`uncompressed` is [`Codec::None`]);
    /// `None` for `producer` or anything unknown.
    pub fn from_config(name: &str) -> Option<Codec> {
        match name {
            "uncompressed" => Some(Codec::None),
            "gzip" => Some(Codec::Gzip),
            "snappy" => Some(Codec::Snappy),
            "lz4" => Some(Codec::Lz4),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// The codec a batch's attributes name.
    pub fn from_attributes(attributes: i16) -> Result<Codec, BatchError> {
        Ok(match attributes & CODEC_MASK {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            _ => return Err(BatchError::Malformed("unknown compression codec")),
        })
    }

    fn bits(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }
}

/// The codec a topic stores batches in, with its level (`None`: the codec's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Codec of stored batches.
    pub codec: Codec,
    /// `compression.<codec>.level`; ignored by codecs without levels.
    pub level: Option<i32>,
}

fn codec_error(e: impl std::fmt::Display) -> BatchError {
    BatchError::Compression(e.to_string())
}

/// Decompresses a records section.
pub(crate) fn decompress(codec: Codec, data: &[u8]) -> Result<Bytes, BatchError> {
    let mut buf = Bytes::copy_from_slice(data);
    let take = |b: &mut Bytes| Ok(std::mem::take(b));
    match codec {
        Codec::None => Ok(buf),
        Codec::Gzip => codecs::Gzip::decompress(&mut buf, take),
        Codec::Snappy => codecs::Snappy::decompress(&mut buf, take),
        Codec::Lz4 => codecs::Lz4::decompress(&mut buf, take),
        Codec::Zstd => codecs::Zstd::decompress(&mut buf, take),
    }
    .map_err(codec_error)
}

/// Compresses a records section with the target codec and level.
pub(crate) fn compress(target: Target, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    match target.codec {
        Codec::None => Ok(data.to_vec()),
        Codec::Gzip => {
            let level = match target.level {
                Some(l @ 1..=9) => flate2::Compression::new(l as u32),
                _ => flate2::Compression::default(),
            };
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(data).map_err(codec_error)?;
            e.finish().map_err(codec_error)
        }
        Codec::Snappy => {
            let mut out = BytesMut::new();
            codecs::Snappy::compress(&mut out, |b: &mut BytesMut| {
                b.put_slice(data);
                Ok(())
            })
            .map_err(codec_error)?;
            Ok(out.to_vec())
        }
        Codec::Lz4 => {
            // Kafka's default lz4 level is 9; independent blocks as Kafka writes them.
            let level = target.level.unwrap_or(9).clamp(1, 17) as u32;
            let mut e = lz4::EncoderBuilder::new()
                .level(level)
                .block_mode(lz4::BlockMode::Independent)
                .build(Vec::new())
                .map_err(codec_error)?;
            e.write_all(data).map_err(codec_error)?;
            let (out, res) = e.finish();
            res.map_err(codec_error)?;
            Ok(out)
        }
        Codec::Zstd => zstd::bulk::compress(data, target.level.unwrap_or(3)).map_err(codec_error),
    }
}

/// Rewrites a validated batch in the target codec. Returns `None` when the batch is
/// already in that codec or is a control batch (control records are never compressed).
pub fn recompress(batch: &[u8], target: Target) -> Result<Option<Vec<u8>>, BatchError> {
    let header = parse_header(batch)?;
    let current = Codec::from_attributes(header.attributes)?;
    if current == target.codec || header.is_control() {
        return Ok(None);
    }
    let records = batch
        .get(HEADER_LEN..header.size)
        .ok_or(BatchError::Malformed("batch shorter than its length"))?;
    let raw = decompress(current, records)?;
    let packed = compress(target, &raw)?;
    let mut out = Vec::with_capacity(HEADER_LEN + packed.len());
    out.extend_from_slice(&batch[..HEADER_LEN]);
    out.extend_from_slice(&packed);
    let length = i32::try_from(out.len() - LENGTH_END)
        .map_err(|_| BatchError::Malformed("recompressed batch too large"))?;
    out[8..LENGTH_END].copy_from_slice(&length.to_be_bytes());
    let attributes = (header.attributes & !CODEC_MASK) | target.codec.bits();
    out[ATTR_POS..ATTR_POS + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTR_POS..]);
    out[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::sample_batch;
    use crate::batch::validate_produced;
    use kafka_protocol::records::{Compression, RecordBatchDecoder};

    fn decode(batch: Vec<u8>) -> Vec<(Option<Bytes>, Option<Bytes>, i64)> {
        let mut bytes = Bytes::from(batch);
        let set = RecordBatchDecoder::decode(&mut bytes).expect("decode");
        set.records
            .into_iter()
            .map(|r| (r.key, r.value, r.timestamp))
            .collect()
    }

    #[test]
    fn every_codec_pair_round_trips_with_the_same_records_and_header() {
        let sources = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        let targets = [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ];
        for src in sources {
            let original = sample_batch(20, src);
            let before = validate_produced(&original).expect("valid");
            for codec in targets {
                let target = Target { codec, level: None };
                let out = match recompress(&original, target).expect("recompress") {
                    Some(out) => out,
                    None => {
                        assert_eq!(Codec::from_attributes(before.attributes), Ok(codec));
                        continue;
                    }
                };
                let after = validate_produced(&out).expect("CRC and lengths valid");
                assert_eq!(Codec::from_attributes(after.attributes), Ok(codec));
                assert_eq!(
                    after.attributes & !CODEC_MASK,
                    before.attributes & !CODEC_MASK
                );
                assert_eq!(after.producer_id, before.producer_id);
                assert_eq!(after.base_sequence, before.base_sequence);
                assert_eq!(after.last_offset_delta, before.last_offset_delta);
                assert_eq!(after.max_timestamp, before.max_timestamp);
                assert_eq!(
                    decode(out),
                    decode(original.clone()),
                    "{src:?} -> {codec:?}"
                );
            }
        }
    }

    #[test]
    fn levels_are_honoured_and_garbage_is_an_error() {
        let original = sample_batch(200, Compression::None);
        for level in [1, 9] {
            let t = Target {
                codec: Codec::Gzip,
                level: Some(level),
            };
            let out = recompress(&original, t).expect("ok").expect("changed");
            validate_produced(&out).expect("valid");
        }
        let mut broken = sample_batch(5, Compression::Gzip);
        let n = broken.len();
        broken[HEADER_LEN..n].fill(0xAB);
        let t = Target {
            codec: Codec::Zstd,
            level: None,
        };
        assert!(matches!(
            recompress(&broken, t),
            Err(BatchError::Compression(_))
        ));
    }
}
