//! The buffer-batch body format, shared by pushes, stored extents and reads.
//!
//! A batch is a run of buffers, each `u32 subpartition | u32 segment | u8 data
//! type | u8 flags | u32 length | payload`, little-endian. A push body is a
//! batch, optionally lz4-compressed as a whole, with a CRC32C over the bytes as
//! sent. Workers store sub-runs of a decompressed batch unchanged, each with
//! its own CRC32C, and serve them as read bodies.

use bytes::{Buf, Bytes, BytesMut};

use crate::buffer::{Buffer, DataType};
use crate::error::TierError;
use crate::ids::{SegmentId, SubpartitionId};

/// Bytes of per-buffer header in a batch.
pub const BUFFER_HEADER_LEN: usize = 14;

const FLAG_COMPRESSED: u8 = 1;

/// The header of one buffer in a batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BufferHeader {
    pub subpartition: SubpartitionId,
    pub segment: SegmentId,
    pub data_type: DataType,
    pub compressed: bool,
    pub len: u32,
}

/// Builds a batch by copying buffers into one contiguous allocation.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    bytes: BytesMut,
    num_buffers: u32,
}

/// A finished, uncompressed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    pub bytes: Bytes,
    pub num_buffers: u32,
}

impl BatchBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        BatchBuilder {
            bytes: BytesMut::with_capacity(bytes),
            num_buffers: 0,
        }
    }

    pub fn push(&mut self, subpartition: SubpartitionId, segment: SegmentId, buffer: &Buffer) {
        self.push_parts(
            subpartition,
            segment,
            buffer.data_type,
            buffer.compressed,
            &buffer.payload,
        );
    }

    /// Appends one buffer given by its parts (the payload is copied once).
    pub fn push_parts(
        &mut self,
        subpartition: SubpartitionId,
        segment: SegmentId,
        data_type: DataType,
        compressed: bool,
        payload: &[u8],
    ) {
        put_buffer(
            &mut self.bytes,
            subpartition,
            segment,
            data_type,
            compressed,
            payload,
        );
        self.num_buffers += 1;
    }

    /// Encoded bytes so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.num_buffers == 0
    }

    pub fn num_buffers(&self) -> u32 {
        self.num_buffers
    }

    pub fn finish(self) -> EncodedBatch {
        EncodedBatch {
            bytes: self.bytes.freeze(),
            num_buffers: self.num_buffers,
        }
    }
}

/// The batch header of one buffer.
pub fn buffer_header(
    subpartition: SubpartitionId,
    segment: SegmentId,
    data_type: DataType,
    compressed: bool,
    len: usize,
) -> [u8; BUFFER_HEADER_LEN] {
    let len = u32::try_from(len).expect("buffer sizes are checked by the producer");
    let mut header = [0u8; BUFFER_HEADER_LEN];
    header[0..4].copy_from_slice(&subpartition.0.to_le_bytes());
    header[4..8].copy_from_slice(&segment.0.to_le_bytes());
    header[8] = data_type.code();
    header[9] = if compressed { FLAG_COMPRESSED } else { 0 };
    header[10..14].copy_from_slice(&len.to_le_bytes());
    header
}

/// Encodes one buffer (header and payload) at the end of `dst`.
pub fn put_buffer(
    dst: &mut BytesMut,
    subpartition: SubpartitionId,
    segment: SegmentId,
    data_type: DataType,
    compressed: bool,
    payload: &[u8],
) {
    dst.reserve(BUFFER_HEADER_LEN + payload.len());
    dst.extend_from_slice(&buffer_header(
        subpartition,
        segment,
        data_type,
        compressed,
        payload.len(),
    ));
    dst.extend_from_slice(payload);
}

/// Iterates over the buffers of an uncompressed batch without copying payloads.
#[derive(Debug, Clone)]
pub struct BatchReader {
    bytes: Bytes,
    offset: usize,
}

impl BatchReader {
    pub fn new(bytes: Bytes) -> Self {
        BatchReader { bytes, offset: 0 }
    }

    /// Offset of the next buffer's header within the batch.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The next buffer, `Ok(None)` at the end, or an error if the batch is malformed.
    pub fn next_buffer(&mut self) -> Result<Option<(BufferHeader, Bytes)>, TierError> {
        let rest = &self.bytes[self.offset..];
        if rest.is_empty() {
            return Ok(None);
        }
        if rest.len() < BUFFER_HEADER_LEN {
            return Err(TierError::bad_input("batch ends inside a buffer header"));
        }
        let mut head = &rest[..BUFFER_HEADER_LEN];
        let subpartition = SubpartitionId(head.get_u32_le());
        let segment = SegmentId(head.get_u32_le());
        let data_type = DataType::from_code(head.get_u8());
        let flags = head.get_u8();
        let len = head.get_u32_le();
        if flags & !FLAG_COMPRESSED != 0 {
            return Err(TierError::bad_input(format!(
                "unknown buffer flags {flags:#x}"
            )));
        }
        let start = self.offset + BUFFER_HEADER_LEN;
        let end = start
            .checked_add(len as usize)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| TierError::bad_input("buffer length runs past the end of its batch"))?;
        self.offset = end;
        let header = BufferHeader {
            subpartition,
            segment,
            data_type,
            compressed: flags & FLAG_COMPRESSED != 0,
            len,
        };
        Ok(Some((header, self.bytes.slice(start..end))))
    }

    /// Decodes every buffer (for tests and small batches).
    pub fn collect_all(mut self) -> Result<Vec<(BufferHeader, Buffer)>, TierError> {
        let mut out = Vec::new();
        while let Some((header, payload)) = self.next_buffer()? {
            out.push((
                header,
                Buffer {
                    data_type: header.data_type,
                    compressed: header.compressed,
                    payload,
                },
            ));
        }
        Ok(out)
    }
}

/// lz4 block compression of a whole batch (no size prefix; the frame header
/// carries the uncompressed length).
pub fn compress_batch(raw: &[u8]) -> Bytes {
    Bytes::from(lz4_flex::block::compress(raw))
}

/// Undoes `compress_batch`; fails if the result is not exactly `uncompressed_len` bytes.
pub fn decompress_batch(compressed: &[u8], uncompressed_len: usize) -> Result<Bytes, TierError> {
    let mut out = vec![0u8; uncompressed_len];
    decompress_batch_into(compressed, &mut out)?;
    Ok(Bytes::from(out))
}

/// Undoes `compress_batch` into `out`, which must be exactly the uncompressed length.
pub fn decompress_batch_into(compressed: &[u8], out: &mut [u8]) -> Result<(), TierError> {
    let n = lz4_flex::block::decompress_into(compressed, out)
        .map_err(|e| TierError::bad_input(format!("lz4 body does not decompress: {e}")))?;
    if n != out.len() {
        return Err(TierError::bad_input(format!(
            "lz4 body decompressed to {n} bytes, header said {}",
            out.len()
        )));
    }
    Ok(())
}

/// Checks a pushed body's CRC32C against the header's.
pub fn check_push_crc(body: &[u8], crc: u32) -> Result<(), TierError> {
    let actual = crc32c::crc32c(body);
    if actual != crc {
        return Err(TierError::corruption(format!(
            "push body checksum mismatch: header says {crc:#010x}, body has {actual:#010x}"
        )));
    }
    Ok(())
}

/// Checks a pushed body's CRC32C and returns the uncompressed batch.
/// `max_len` bounds the uncompressed size a peer may claim.
pub fn decode_push_body(
    body: Bytes,
    crc: u32,
    compressed: bool,
    uncompressed_len: u32,
    max_len: usize,
) -> Result<Bytes, TierError> {
    check_push_crc(&body, crc)?;
    if !compressed {
        if body.len() != uncompressed_len as usize {
            return Err(TierError::bad_input(format!(
                "uncompressed body has {} bytes, header said {uncompressed_len}",
                body.len()
            )));
        }
        return Ok(body);
    }
    if uncompressed_len as usize > max_len {
        return Err(TierError::bad_input(format!(
            "body claims {uncompressed_len} uncompressed bytes, more than the maximum {max_len}"
        )));
    }
    decompress_batch(&body, uncompressed_len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_buffer() -> impl Strategy<Value = (u32, u32, Buffer)> {
        (
            0u32..64,
            0u32..8,
            prop_oneof![Just(1u8), Just(2u8), Just(7u8), any::<u8>()],
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(s, g, t, c, p)| {
                (
                    s,
                    g,
                    Buffer {
                        data_type: DataType::from_code(t),
                        compressed: c,
                        payload: Bytes::from(p),
                    },
                )
            })
    }

    proptest! {
        #[test]
        fn batch_roundtrips_through_lz4_and_crc(buffers in proptest::collection::vec(arb_buffer(), 0..40)) {
            let mut builder = BatchBuilder::default();
            for (s, g, b) in &buffers {
                builder.push(SubpartitionId(*s), SegmentId(*g), b);
            }
            let batch = builder.finish();
            prop_assert_eq!(batch.num_buffers as usize, buffers.len());
            let compressed = compress_batch(&batch.bytes);
            let crc = crc32c::crc32c(&compressed);
            let raw = decode_push_body(compressed, crc, true, batch.bytes.len() as u32, 1 << 20)
                .expect("valid body decodes");
            let decoded = BatchReader::new(raw).collect_all().expect("valid batch");
            prop_assert_eq!(decoded.len(), buffers.len());
            for ((h, got), (s, g, want)) in decoded.iter().zip(&buffers) {
                prop_assert_eq!(h.subpartition.0, *s);
                prop_assert_eq!(h.segment.0, *g);
                prop_assert_eq!(got, want);
            }
        }

        /// Any bytes in: an error or buffers, never a panic.
        #[test]
        fn arbitrary_batches_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400), len in 0u32..2000) {
            let _ = BatchReader::new(Bytes::from(data.clone())).collect_all();
            let crc = crc32c::crc32c(&data);
            let _ = decode_push_body(Bytes::from(data), crc, true, len, 4096);
        }
    }

    #[test]
    fn bad_checksum_is_corruption() {
        let body = Bytes::from_static(b"abc");
        let err = decode_push_body(body, 1, false, 3, 100).expect_err("crc mismatch");
        assert_eq!(err.kind(), crate::ErrorKind::DataCorruption);
    }
}
