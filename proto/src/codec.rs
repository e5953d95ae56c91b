//! Frame codec: `u32 length | u8 type | u32 header length | header | body`.
//!
//! `length` counts everything after itself (type byte, header length, header
//! and body), big-endian like the header length. Reading is split in two steps
//! (prefix, then the rest) so a server can reserve memory for a large frame
//! before it takes the bytes off the socket.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::FrameError;
use crate::message::{Message, MessageType};

/// Bytes before the header: length, type, header length.
pub const FRAME_PREFIX_LEN: usize = 9;

/// The fixed-size start of a frame, already validated against the maximum size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePrefix {
    pub ty: MessageType,
    pub header_len: usize,
    pub body_len: usize,
}

impl FramePrefix {
    /// Parses and validates the 9 prefix bytes.
    pub fn parse(bytes: [u8; FRAME_PREFIX_LEN], max_frame: usize) -> Result<Self, FrameError> {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let ty_byte = bytes[4];
        let header_len = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
        if len > max_frame {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: max_frame,
            });
        }
        if len < 5 {
            return Err(FrameError::Malformed(
                "frame length shorter than its prefix",
            ));
        }
        let ty = MessageType::from_u8(ty_byte).ok_or(FrameError::UnknownType(ty_byte))?;
        let rest = len - 5;
        if header_len > rest {
            return Err(FrameError::Malformed("header length exceeds frame length"));
        }
        let body_len = rest - header_len;
        if body_len > 0 && !ty.has_body() {
            return Err(FrameError::Malformed("message type carries no body"));
        }
        Ok(FramePrefix {
            ty,
            header_len,
            body_len,
        })
    }

    /// Header plus body: what remains to be read after the prefix.
    pub fn remaining(&self) -> usize {
        self.header_len + self.body_len
    }
}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame: usize) -> Self {
        FrameReader { inner, max_frame }
    }

    /// Reads the next prefix; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_prefix(&mut self) -> Result<Option<FramePrefix>, FrameError> {
        let mut buf = [0u8; FRAME_PREFIX_LEN];
        let mut filled = 0;
        while filled < FRAME_PREFIX_LEN {
            let n = self.inner.read(&mut buf[filled..]).await?;
            if n == 0 {
                return if filled == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            filled += n;
        }
        FramePrefix::parse(buf, self.max_frame).map(Some)
    }

    /// Reads the header and body announced by `prefix` and decodes the header.
    pub async fn read_rest(&mut self, prefix: FramePrefix) -> Result<(Message, Bytes), FrameError> {
        self.read_rest_into(prefix, vec![0u8; prefix.remaining()])
            .await
    }

    /// Like [`FrameReader::read_rest`], reading into `buf` (whose first
    /// `prefix.remaining()` bytes are overwritten), which then owns the bytes
    /// of the returned body: a server can hand in a pooled buffer that goes
    /// back to its pool when the last slice of the body is dropped.
    pub async fn read_rest_into<B>(
        &mut self,
        prefix: FramePrefix,
        mut buf: B,
    ) -> Result<(Message, Bytes), FrameError>
    where
        B: AsRef<[u8]> + AsMut<[u8]> + Send + 'static,
    {
        let len = prefix.remaining();
        let target = buf.as_mut().get_mut(..len).ok_or(FrameError::Malformed(
            "receive buffer shorter than the frame",
        ))?;
        self.inner.read_exact(target).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                FrameError::Truncated
            } else {
                FrameError::Io(e)
            }
        })?;
        Self::decode(prefix, buf)
    }

    /// Decodes a frame whose header and body (as announced by `prefix`) have
    /// been read into the start of `buf`, which then owns the body's bytes.
    /// For callers that read the rest of a frame themselves, piece by piece.
    pub fn decode<B>(prefix: FramePrefix, buf: B) -> Result<(Message, Bytes), FrameError>
    where
        B: AsRef<[u8]> + Send + 'static,
    {
        let len = prefix.remaining();
        if buf.as_ref().len() < len {
            return Err(FrameError::Malformed(
                "receive buffer shorter than the frame",
            ));
        }
        let bytes = Bytes::from_owner(buf);
        let header = bytes.slice(..prefix.header_len);
        let body = bytes.slice(prefix.header_len..len);
        let message =
            Message::decode_header(prefix.ty, header).map_err(|source| FrameError::BadHeader {
                ty: prefix.ty,
                source,
            })?;
        Ok((message, body))
    }

    /// The byte stream, for reading a frame's rest piece by piece.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads one whole frame; `Ok(None)` on a clean end of stream.
    pub async fn read_frame(&mut self) -> Result<Option<(Message, Bytes)>, FrameError> {
        match self.read_prefix().await? {
            None => Ok(None),
            Some(prefix) => self.read_rest(prefix).await.map(Some),
        }
    }
}

/// Encodes the prefix and header of a frame whose body has `body_len` bytes.
/// The body itself is written separately so it is never copied.
pub fn encode_frame(message: &Message, body_len: usize) -> BytesMut {
    let header_len = message.header_len();
    let mut dst = BytesMut::with_capacity(FRAME_PREFIX_LEN + header_len);
    let len = 5 + header_len + body_len;
    dst.put_u32(u32::try_from(len).expect("frame length checked against the maximum by callers"));
    dst.put_u8(message.message_type() as u8);
    dst.put_u32(header_len as u32);
    message.encode_header(&mut dst);
    dst
}

/// Writes one frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
    body: &[u8],
) -> std::io::Result<()> {
    debug_assert!(body.is_empty() || message.message_type().has_body());
    let head = encode_frame(message, body.len());
    writer.write_all(&head).await?;
    if !body.is_empty() {
        writer.write_all(body).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use proptest::prelude::*;

    fn roundtrip(message: Message, body: Bytes) -> (Message, Bytes) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("build test runtime");
        rt.block_on(async {
            let mut wire = Vec::new();
            write_frame(&mut wire, &message, &body)
                .await
                .expect("write to vec");
            let mut reader = FrameReader::new(&wire[..], 1 << 20);
            let got = reader
                .read_frame()
                .await
                .expect("decode")
                .expect("one frame");
            assert!(reader.read_frame().await.expect("clean eof").is_none());
            got
        })
    }

    #[test]
    fn push_frame_roundtrips_with_body() {
        let msg = Message::PushData(pb::PushData {
            request_id: 7,
            key: Some(pb::PartitionKey {
                job_id: Bytes::from_static(b"job"),
                partition_id: Bytes::from_static(b"p1"),
            }),
            crc32c: 0xdead_beef,
            num_buffers: 3,
        });
        let body = Bytes::from_static(b"some raw body bytes");
        let (got, got_body) = roundtrip(msg.clone(), body.clone());
        assert_eq!(got, msg);
        assert_eq!(got_body, body);
    }

    #[test]
    fn oversized_unknown_and_bodied_frames_are_rejected() {
        let too_big = [0, 0, 1, 0, 1, 0, 0, 0, 0];
        assert!(matches!(
            FramePrefix::parse(too_big, 100),
            Err(FrameError::TooLarge { len: 256, max: 100 })
        ));
        let unknown = [0, 0, 0, 5, 200, 0, 0, 0, 0];
        assert!(matches!(
            FramePrefix::parse(unknown, 100),
            Err(FrameError::UnknownType(200))
        ));
        // An Ack (type 4) with 3 body bytes.
        let ack_with_body = [0, 0, 0, 8, 4, 0, 0, 0, 0];
        assert!(matches!(
            FramePrefix::parse(ack_with_body, 100),
            Err(FrameError::Malformed(_))
        ));
        let header_past_end = [0, 0, 0, 6, 4, 0, 0, 0, 9];
        assert!(matches!(
            FramePrefix::parse(header_past_end, 100),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest! {
        /// Any bytes in: an error or frames, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            rt.block_on(async {
                let mut reader = FrameReader::new(&data[..], 256);
                for _ in 0..64 {
                    match reader.read_frame().await {
                        Ok(Some(_)) => continue,
                        Ok(None) | Err(_) => break,
                    }
                }
            });
        }

        #[test]
        fn ack_roundtrips(id in any::<u64>()) {
            let (got, body) = roundtrip(Message::ack(id), Bytes::new());
            prop_assert_eq!(got, Message::ack(id));
            prop_assert!(body.is_empty());
        }
    }
}
