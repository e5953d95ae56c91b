//! The buffer-batch body format, shared by pushes, stored extents and reads.
//!
//! A batch is a run of buffers, each `u32 subpartition | u32 segment | u8 data
//! type | u8 flags | u32 length | payload`, little-endian. Flags: bit 0, the
//! engine compressed the payload itself (passed through untouched); bit 1,
//! the producer agent compressed it with lz4, as `u32 LE uncompressed length
//! | lz4 block`, and the consumer agent decompresses it before the engine sees
//! it. A push body is a batch, exactly as the worker stores and serves it,
//! with a CRC32C over the bytes as sent; workers store sub-runs of it
//! unchanged, each with its own CRC32C, and never look inside a payload.

use bytes::{Buf, Bytes, BytesMut};

use crate::buffer::{Buffer, DataType};
use crate::error::TierError;
use crate::ids::{SegmentId, SubpartitionId};

/// Bytes of per-buffer header in a batch.
pub const BUFFER_HEADER_LEN: usize = 14;

const FLAG_COMPRESSED: u8 = 1;
const FLAG_LZ4: u8 = 2;
/// Smallest data buffer the producer agent tries to compress: lz4 cannot
/// gain on fewer bytes once its length prefix is paid.
pub const LZ4_MIN_LEN: usize = 64;
/// Bytes of an lz4 buffer's uncompressed-length prefix.
const LZ4_PREFIX: usize = 4;

/// The header of one buffer in a batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BufferHeader {
    pub subpartition: SubpartitionId,
    pub segment: SegmentId,
    pub data_type: DataType,
    /// Compressed by the engine (handed back to it as is).
    pub compressed: bool,
    /// Compressed by the producer agent (see [`unlz4`]).
    pub lz4: bool,
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

/// The batch header of one buffer; `lz4` when the producer agent compressed
/// it ([`lz4_into`]).
pub fn buffer_header(
    subpartition: SubpartitionId,
    segment: SegmentId,
    data_type: DataType,
    compressed: bool,
    lz4: bool,
    len: usize,
) -> [u8; BUFFER_HEADER_LEN] {
    let len = u32::try_from(len).expect("buffer sizes are checked by the producer");
    let mut header = [0u8; BUFFER_HEADER_LEN];
    header[0..4].copy_from_slice(&subpartition.0.to_le_bytes());
    header[4..8].copy_from_slice(&segment.0.to_le_bytes());
    header[8] = data_type.code();
    header[9] = if compressed { FLAG_COMPRESSED } else { 0 } | if lz4 { FLAG_LZ4 } else { 0 };
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
        false,
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
        if flags & !(FLAG_COMPRESSED | FLAG_LZ4) != 0 {
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
            lz4: flags & FLAG_LZ4 != 0,
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

/// Room [`lz4_into`] may need for a payload of `len` bytes.
pub fn lz4_room(len: usize) -> usize {
    LZ4_PREFIX + lz4_flex::block::get_maximum_output_size(len)
}

/// Compresses `payload` into `out` (at least [`lz4_room`] bytes) as `u32 LE
/// uncompressed length | lz4 block`. Returns the bytes written when that is
/// smaller than the payload; `None` means keep the payload as it is.
pub fn lz4_into(payload: &[u8], out: &mut [u8]) -> Option<usize> {
    let len = u32::try_from(payload.len()).ok()?;
    let (prefix, block) = out.split_at_mut(LZ4_PREFIX);
    let written = LZ4_PREFIX + lz4_flex::block::compress_into(payload, block).ok()?;
    if written >= payload.len() {
        return None;
    }
    prefix.copy_from_slice(&len.to_le_bytes());
    Some(written)
}

/// Undoes [`lz4_into`]. The length a stored buffer claims is checked against
/// `max_len` before it sizes anything; a buffer that does not decompress to
/// exactly that length is corrupt.
pub fn unlz4(stored: &[u8], max_len: usize) -> Result<Bytes, TierError> {
    let Some((prefix, block)) = stored.split_first_chunk::<LZ4_PREFIX>() else {
        return Err(TierError::corruption(
            "an lz4 buffer is shorter than its length prefix",
        ));
    };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len > max_len {
        return Err(TierError::corruption(format!(
            "an lz4 buffer claims {len} bytes, more than the largest buffer ({max_len})"
        )));
    }
    let mut out = vec![0u8; len];
    let n = lz4_flex::block::decompress_into(block, &mut out)
        .map_err(|e| TierError::corruption(format!("an lz4 buffer does not decompress: {e}")))?;
    if n != len {
        return Err(TierError::corruption(format!(
            "an lz4 buffer decompressed to {n} bytes, its prefix says {len}"
        )));
    }
    Ok(Bytes::from(out))
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
        fn batch_roundtrips_through_the_reader(buffers in proptest::collection::vec(arb_buffer(), 0..40)) {
            let mut builder = BatchBuilder::default();
            for (s, g, b) in &buffers {
                builder.push(SubpartitionId(*s), SegmentId(*g), b);
            }
            let batch = builder.finish();
            prop_assert_eq!(batch.num_buffers as usize, buffers.len());
            let decoded = BatchReader::new(batch.bytes).collect_all().expect("valid batch");
            prop_assert_eq!(decoded.len(), buffers.len());
            for ((h, got), (s, g, want)) in decoded.iter().zip(&buffers) {
                prop_assert_eq!(h.subpartition.0, *s);
                prop_assert_eq!(h.segment.0, *g);
                prop_assert!(!h.lz4);
                prop_assert_eq!(got, want);
            }
        }

        /// A payload either shrinks under lz4 and comes back exactly, or is
        /// left as it is; half-random payloads cover both.
        #[test]
        fn lz4_buffers_shrink_or_stay_raw_and_come_back_exactly(
            repeat in 0usize..5000,
            random in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let mut payload = vec![7u8; repeat];
            payload.extend_from_slice(&random);
            let mut out = vec![0u8; lz4_room(payload.len())];
            match lz4_into(&payload, &mut out) {
                Some(n) => {
                    prop_assert!(n < payload.len());
                    let back = unlz4(&out[..n], payload.len()).expect("decompresses");
                    prop_assert_eq!(&back[..], &payload[..]);
                    // A claim past the limit is refused before anything is sized.
                    if !payload.is_empty() {
                        let err = unlz4(&out[..n], payload.len() - 1).expect_err("over the limit");
                        prop_assert_eq!(err.kind(), crate::ErrorKind::DataCorruption);
                    }
                }
                None => prop_assert!(payload.len() < 64 || random.len() * 2 > payload.len()),
            }
        }

        /// Any bytes in: an error or buffers, never a panic.
        #[test]
        fn arbitrary_batches_and_lz4_buffers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = BatchReader::new(Bytes::from(data.clone())).collect_all();
            let _ = unlz4(&data, 4096);
        }
    }

    #[test]
    fn the_lz4_flag_is_read_back_and_unknown_flags_are_refused() {
        let mut batch = BytesMut::new();
        batch.extend_from_slice(&buffer_header(
            SubpartitionId(1),
            SegmentId(2),
            DataType::Data,
            true,
            true,
            3,
        ));
        batch.extend_from_slice(b"xyz");
        let (header, payload) = BatchReader::new(batch.clone().freeze())
            .next_buffer()
            .expect("valid")
            .expect("one buffer");
        assert!(header.compressed && header.lz4);
        assert_eq!(&payload[..], b"xyz");
        batch[9] = 4;
        let err = BatchReader::new(batch.freeze())
            .next_buffer()
            .expect_err("flag 4");
        assert_eq!(err.kind(), crate::ErrorKind::BadInput, "{err}");
        // The message is the point: it names the flags this build refuses.
        assert_eq!(err.message(), "unknown buffer flags 0x4");
    }
}
