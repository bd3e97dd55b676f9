//! The gRPC codec of the `wattson.v1` services: prost encoding, but a message that fails to
//! decode (truncated, invalid UTF-8 in a string, wrong wire type) is the sender's fault and is
//! answered with INVALID_ARGUMENT naming the field prost stopped at, not tonic's default INTERNAL.
//! [`KeepBytes`] also hands a server the bytes a request was decoded from.

use std::marker::PhantomData;

use bytes::{Buf as _, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Codec used by every generated `wattson.v1` client and server.
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Decodes `U` with prost, mapping failures to INVALID_ARGUMENT.
#[derive(Debug)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(malformed)
    }
}

fn malformed(e: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("malformed message: {e}"))
}

/// A decoded request with the bytes it was decoded from (after decompression).
#[derive(Debug, Clone)]
pub struct WithBytes<U> {
    /// The decoded message.
    pub message: U,
    /// Its encoding, shared with the receive buffer rather than copied.
    pub bytes: Bytes,
}

/// Server codec decoding [`WithBytes<U>`], for a handler that stores what it received.
#[derive(Debug, Clone, Copy)]
pub struct KeepBytes<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for KeepBytes<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for KeepBytes<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = WithBytes<U>;
    type Encoder = ProstEncoder<T>;
    type Decoder = KeepBytesDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        KeepBytesDecoder(PhantomData)
    }
}

/// Decoder of [`KeepBytes`].
#[derive(Debug)]
pub struct KeepBytesDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for KeepBytesDecoder<U> {
    type Item = WithBytes<U>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<WithBytes<U>>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        let message = U::decode(&bytes[..]).map_err(malformed)?;
        Ok(Some(WithBytes { message, bytes }))
    }
}

/// The bytes of field `tag` when `message` is exactly that one length-delimited field (how
/// a request wrapping one message is encoded); `None` for anything else.
pub fn sole_field(message: &Bytes, tag: u32) -> Option<Bytes> {
    let mut rest = &message[..];
    let key = prost::encoding::decode_varint(&mut rest).ok()?;
    if key != u64::from(tag << 3 | 2) {
        return None;
    }
    let len = prost::encoding::decode_varint(&mut rest).ok()?;
    let start = message.len() - rest.len();
    (len == rest.len() as u64).then(|| message.slice(start..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Batch, IngestRequest};

    #[test]
    fn sole_field_is_the_wrapped_message() {
        let batch = Batch {
            host_id: "h".repeat(200),
            sequence: 7,
            ..Batch::default()
        };
        let request = Bytes::from(
            IngestRequest {
                batch: Some(batch.clone()),
            }
            .encode_to_vec(),
        );
        let inner = sole_field(&request, 1).expect("one field");
        assert_eq!(Batch::decode(&inner[..]).unwrap(), batch);
        assert_eq!(sole_field(&request, 2), None);
        // A trailing field, a short length or nothing at all is not one sole field.
        let mut longer = request.to_vec();
        longer.extend_from_slice(&[0x10, 0x01]);
        assert_eq!(sole_field(&Bytes::from(longer), 1), None);
        assert_eq!(sole_field(&request.slice(..request.len() - 1), 1), None);
        assert_eq!(sole_field(&Bytes::new(), 1), None);
    }
}
