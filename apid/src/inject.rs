//! Metadata injection into raw protobuf bytes, and gRPC message framing.
//!
//! When apid fans a call out to several nodes it must tag each node's reply
//! with `common.Metadata{hostname}` without knowing the reply's type. Every
//! reply of the node API puts `common.Metadata` in field 1 (of the stream
//! message, or of `messages[0]` in a unary envelope), and protobuf merges
//! repeated occurrences of a singular message field. So appending the
//! encoding of `common.Empty{metadata: {hostname}}` (which is "field 1 =
//! Metadata") to a message sets its metadata, whatever its type.

use bytes::{Buf as _, Bytes, BytesMut};
use prost::Message as _;

/// The bytes that set `metadata` (field 1) on any reply message.
#[must_use]
pub fn metadata_bytes(hostname: &str, error: Option<(&str, tonic::Code)>) -> Vec<u8> {
    let metadata = api::common::Metadata {
        hostname: hostname.to_owned(),
        error: error.map(|(m, _)| m.to_owned()).unwrap_or_default(),
        status: error.map(|(m, code)| api::google::rpc::Status {
            code: code as i32,
            message: m.to_owned(),
            details: vec![],
        }),
    };
    api::common::Empty {
        metadata: Some(metadata),
    }
    .encode_to_vec()
}

/// Errors rewriting a reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// The unary reply does not start with field 1, length-delimited.
    #[error("unexpected message format: a unary reply must start with field 1 (messages)")]
    NotEnvelope,
    /// The length prefix is cut short or too long.
    #[error("malformed reply: bad length of field 1")]
    BadLength,
}

fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Tags a unary envelope: appends `inject` inside its first element
/// (`messages[0]`) and re-prefixes field 1 with the new length. Bytes after
/// the first element are kept as they are.
///
/// # Errors
/// The reply is not an envelope.
pub fn inject_unary(reply: &[u8], inject: &[u8]) -> Result<Vec<u8>, InjectError> {
    if reply.is_empty() {
        // An envelope with no element: make one holding only the metadata.
        let mut out = vec![0x0a];
        write_varint(&mut out, inject.len() as u64);
        out.extend_from_slice(inject);
        return Ok(out);
    }
    if reply[0] != 0x0a {
        return Err(InjectError::NotEnvelope);
    }
    let (len, n) = read_varint(&reply[1..]).ok_or(InjectError::BadLength)?;
    let start = 1 + n;
    let end = start
        .checked_add(usize::try_from(len).map_err(|_| InjectError::BadLength)?)
        .ok_or(InjectError::BadLength)?;
    if end > reply.len() {
        return Err(InjectError::BadLength);
    }
    let mut out = Vec::with_capacity(reply.len() + inject.len() + 4);
    out.push(0x0a);
    write_varint(&mut out, (end - start + inject.len()) as u64);
    out.extend_from_slice(&reply[start..end]);
    out.extend_from_slice(inject);
    out.extend_from_slice(&reply[end..]);
    Ok(out)
}

/// The payload length a gRPC message's 5-byte prefix (compressed flag,
/// big-endian length) at the start of `buf` declares, once the prefix is
/// whole.
#[must_use]
pub fn declared_len(buf: &[u8]) -> Option<usize> {
    let prefix = buf.get(..5)?;
    Some(u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize)
}

/// Splits a byte stream into gRPC messages (5-byte prefix + payload).
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
}

/// One gRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMessage {
    /// The compressed flag.
    pub compressed: bool,
    /// The payload.
    pub payload: Bytes,
}

/// A message longer than allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("gRPC message of {0} bytes exceeds the limit")]
pub struct TooLarge(pub usize);

impl Framer {
    /// Feeds bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if one is buffered.
    ///
    /// # Errors
    /// A message longer than `max`.
    pub fn next_message(&mut self, max: usize) -> Result<Option<GrpcMessage>, TooLarge> {
        let Some(len) = declared_len(&self.buf) else {
            return Ok(None);
        };
        if len > max {
            return Err(TooLarge(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let compressed = self.buf[0] == 1;
        self.buf.advance(5);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(GrpcMessage {
            compressed,
            payload,
        }))
    }

    /// Bytes buffered but not yet a whole message.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::machine::{Version, VersionInfo, VersionResponse};

    fn reply(tag: &str) -> Vec<u8> {
        VersionResponse {
            messages: vec![Version {
                version: Some(VersionInfo {
                    tag: tag.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn unary_injection_sets_hostname_on_any_reply() {
        let tagged = inject_unary(&reply("v1"), &metadata_bytes("10.0.0.2", None)).expect("inject");
        let decoded = VersionResponse::decode(&tagged[..]).expect("decodes");
        assert_eq!(decoded.messages.len(), 1);
        assert_eq!(
            decoded.messages[0]
                .metadata
                .as_ref()
                .expect("metadata")
                .hostname,
            "10.0.0.2"
        );
        assert_eq!(
            decoded.messages[0].version.as_ref().expect("version").tag,
            "v1"
        );
    }

    #[test]
    fn concatenated_tagged_replies_decode_as_one() {
        let a = inject_unary(&reply("a"), &metadata_bytes("node-a", None)).expect("a");
        let b = inject_unary(&reply("b"), &metadata_bytes("node-b", None)).expect("b");
        let err = inject_unary(
            &[],
            &metadata_bytes(
                "node-c",
                Some(("connection refused", tonic::Code::Unavailable)),
            ),
        )
        .expect("c");
        let all = VersionResponse::decode(&[a, b, err].concat()[..]).expect("decodes");
        let hosts: Vec<&str> = all
            .messages
            .iter()
            .map(|m| m.metadata.as_ref().map_or("", |x| x.hostname.as_str()))
            .collect();
        assert_eq!(hosts, ["node-a", "node-b", "node-c"]);
        let c = all.messages[2].metadata.as_ref().expect("metadata");
        assert_eq!(c.error, "connection refused");
        assert_eq!(
            c.status.as_ref().expect("status").code,
            tonic::Code::Unavailable as i32
        );
    }

    #[test]
    fn long_replies_get_a_longer_length_prefix() {
        let big = reply(&"x".repeat(200));
        let tagged = inject_unary(&big, &metadata_bytes("h", None)).expect("inject");
        assert_eq!(
            VersionResponse::decode(&tagged[..])
                .expect("decodes")
                .messages[0]
                .metadata
                .as_ref()
                .expect("md")
                .hostname,
            "h"
        );
    }

    #[test]
    fn non_envelopes_are_refused() {
        assert_eq!(
            inject_unary(&[0x12, 0x00], b"x"),
            Err(InjectError::NotEnvelope)
        );
        assert_eq!(
            inject_unary(&[0x0a, 0x05, 0x01], b"x"),
            Err(InjectError::BadLength)
        );
    }

    #[test]
    fn stream_messages_take_the_same_bytes() {
        let data = api::common::Data {
            metadata: None,
            bytes: Bytes::from_static(b"log line"),
        };
        let mut msg = data.encode_to_vec();
        msg.extend_from_slice(&metadata_bytes("node-x", None));
        let decoded = api::common::Data::decode(&msg[..]).expect("decodes");
        assert_eq!(decoded.metadata.expect("md").hostname, "node-x");
        assert_eq!(&decoded.bytes[..], b"log line");
    }

    #[test]
    fn framer_splits_across_chunks() {
        let mut f = Framer::default();
        let frame = machinery::h2::grpc_frame(b"hello");
        f.push(&frame[..3]);
        assert_eq!(f.next_message(100), Ok(None));
        f.push(&frame[3..]);
        f.push(&machinery::h2::grpc_frame(b"")[..]);
        assert_eq!(
            f.next_message(100).expect("ok").expect("msg").payload,
            Bytes::from_static(b"hello")
        );
        assert_eq!(
            f.next_message(100).expect("ok").expect("msg").payload,
            Bytes::new()
        );
        assert_eq!(f.next_message(100), Ok(None));
        f.push(&machinery::h2::grpc_frame(&[0; 50]));
        assert_eq!(f.next_message(10), Err(TooLarge(50)));
    }
}
