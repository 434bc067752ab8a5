//! Frames on a QUIC stream (or the agent's local control socket): a big-endian `u32`
//! length, then that many bytes of bincode.
//!
//! The length is checked against [`MAX_FRAME`] before a single byte of payload is
//! allocated, bincode itself runs with the same limit (without one, nine bytes that
//! claim 2^40 elements abort the process), and a payload must decode to exactly its
//! own length: trailing bytes are an error, not ignored. All bincode use lives in
//! this module, so the codec can be swapped in one place.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload either side accepts: 1 MiB.
pub const MAX_FRAME: usize = 1 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The length prefix claims more than the limit.
    #[error("frame of {len} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// What the prefix claimed.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        expected: usize,
    },
    /// The payload is not a valid message.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// The payload decoded but did not use all its bytes.
    #[error("frame has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame: length prefix + payload.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let payload = bincode::serde::encode_to_vec(msg, config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if payload.len() > MAX_FRAME {
        return Err(WireError::TooLarge {
            len: payload.len(),
            limit: MAX_FRAME,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| WireError::TooLarge {
        len: payload.len(),
        limit: MAX_FRAME,
    })?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Decodes one payload (without its length prefix). Every byte must be used.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    if payload.len() > MAX_FRAME {
        return Err(WireError::TooLarge {
            len: payload.len(),
            limit: MAX_FRAME,
        });
    }
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(WireError::TrailingBytes(payload.len() - used));
    }
    Ok(msg)
}

/// Decodes a whole buffer holding exactly one frame (prefix included).
/// The fuzz target drives this.
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    let Some((prefix, payload)) = frame.split_first_chunk::<4>() else {
        return Err(WireError::Truncated {
            got: frame.len(),
            expected: 4,
        });
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge {
            len,
            limit: MAX_FRAME,
        });
    }
    if payload.len() < len {
        return Err(WireError::Truncated {
            got: payload.len(),
            expected: len,
        });
    }
    if payload.len() > len {
        return Err(WireError::TrailingBytes(payload.len() - len));
    }
    decode(payload)
}

/// Writes one frame.
pub async fn write_frame<W, T>(out: &mut W, msg: &T) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize,
{
    let frame = encode(msg)?;
    out.write_all(&frame).await?;
    out.flush().await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` when the stream ended cleanly before a new frame.
pub async fn read_frame<R, T>(input: &mut R) -> Result<Option<T>, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        let n = input.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(WireError::Truncated { got, expected: 4 });
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge {
            len,
            limit: MAX_FRAME,
        });
    }
    let mut payload = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = input.read(&mut payload[got..]).await?;
        if n == 0 {
            return Err(WireError::Truncated { got, expected: len });
        }
        got += n;
    }
    decode(&payload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping(u32),
        Text(String),
        List(Vec<String>),
    }

    #[test]
    fn round_trips() {
        let msg = Msg::Text("hello".into());
        let frame = encode(&msg).expect("encode");
        assert_eq!(decode_frame::<Msg>(&frame).expect("decode"), msg);
    }

    #[test]
    fn refuses_a_prefix_over_the_limit_without_allocating() {
        let frame = (u32::MAX).to_be_bytes();
        assert!(matches!(
            decode_frame::<Msg>(&frame),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn refuses_a_collection_claiming_more_than_the_frame_holds() {
        // Variant 2 (List), then a varint length of 2^40 elements.
        let payload = [2u8, 0xfd, 0, 0, 0, 0, 0, 1, 0, 0];
        assert!(decode::<Msg>(&payload).is_err());
    }

    #[test]
    fn refuses_trailing_bytes_and_truncation() {
        let mut frame = encode(&Msg::Ping(7)).expect("encode");
        let mut longer = frame.clone();
        longer.push(0);
        assert!(matches!(
            decode_frame::<Msg>(&longer),
            Err(WireError::TrailingBytes(1))
        ));
        // Same length prefix, extra byte inside the payload.
        let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) + 1;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        frame.push(0);
        assert!(matches!(
            decode_frame::<Msg>(&frame),
            Err(WireError::TrailingBytes(1))
        ));
        frame.truncate(frame.len() - 2);
        assert!(matches!(
            decode_frame::<Msg>(&frame),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn refuses_an_unknown_variant() {
        assert!(decode::<Msg>(&[9]).is_err());
    }

    #[tokio::test]
    async fn reads_frames_from_a_stream() {
        let mut bytes = encode(&Msg::Ping(1)).expect("encode");
        bytes.extend(encode(&Msg::Ping(2)).expect("encode"));
        let mut input = &bytes[..];
        assert_eq!(
            read_frame::<_, Msg>(&mut input).await.expect("1"),
            Some(Msg::Ping(1))
        );
        assert_eq!(
            read_frame::<_, Msg>(&mut input).await.expect("2"),
            Some(Msg::Ping(2))
        );
        assert_eq!(read_frame::<_, Msg>(&mut input).await.expect("eof"), None);
        let mut cut = &bytes[..3];
        assert!(matches!(
            read_frame::<_, Msg>(&mut cut).await,
            Err(WireError::Truncated { .. })
        ));
    }
}
