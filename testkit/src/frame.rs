//! The CQL native protocol v4 frame layer: headers, compression, request
//! decoding and the primitives responses are encoded with.
//!
//! Requests are decoded into borrowed views of the frame body (no copies of
//! statement text or values); responses are written straight into the
//! connection's output buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::compression::Compression;

/// Length of a v3/v4/v5 frame header.
pub(crate) const HEADER_LEN: usize = 9;
/// Largest frame body accepted (the protocol's limit is 256 MiB).
pub(crate) const MAX_BODY_LEN: usize = 256 * 1024 * 1024;

/// The most [`split_frame`] reserves ahead of the bytes a frame header
/// announces: the length is the client's word, and the buffer grows as
/// the bytes arrive.
pub(crate) const READ_AHEAD: usize = 64 * 1024;

/// Frame header flag: the body is compressed.
pub(crate) const FLAG_COMPRESSION: u8 = 0x01;
/// Frame header flag: tracing requested / tracing id present.
pub(crate) const FLAG_TRACING: u8 = 0x02;
pub(crate) const FLAG_WARNING: u8 = 0x08;
/// Frame header flag: a custom payload precedes the body.
pub(crate) const FLAG_CUSTOM_PAYLOAD: u8 = 0x04;

/// Request and response opcodes of protocol v4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// ERROR response.
    Error,
    /// STARTUP request.
    Startup,
    /// READY response.
    Ready,
    /// AUTHENTICATE response.
    Authenticate,
    /// OPTIONS request.
    Options,
    /// SUPPORTED response.
    Supported,
    /// QUERY request.
    Query,
    /// RESULT response.
    Result,
    /// PREPARE request.
    Prepare,
    /// EXECUTE request.
    Execute,
    /// REGISTER request.
    Register,
    /// EVENT response.
    Event,
    /// BATCH request.
    Batch,
    /// AUTH_CHALLENGE response.
    AuthChallenge,
    /// AUTH_RESPONSE request.
    AuthResponse,
    /// AUTH_SUCCESS response.
    AuthSuccess,
}

impl Opcode {
    /// The opcode byte.
    pub fn code(self) -> u8 {
        match self {
            Opcode::Error => 0x00,
            Opcode::Startup => 0x01,
            Opcode::Ready => 0x02,
            Opcode::Authenticate => 0x03,
            Opcode::Options => 0x05,
            Opcode::Supported => 0x06,
            Opcode::Query => 0x07,
            Opcode::Result => 0x08,
            Opcode::Prepare => 0x09,
            Opcode::Execute => 0x0A,
            Opcode::Register => 0x0B,
            Opcode::Event => 0x0C,
            Opcode::Batch => 0x0D,
            Opcode::AuthChallenge => 0x0E,
            Opcode::AuthResponse => 0x0F,
            Opcode::AuthSuccess => 0x10,
        }
    }

    /// Decodes an opcode byte.
    pub fn from_code(code: u8) -> Option<Opcode> {
        Some(match code {
            0x00 => Opcode::Error,
            0x01 => Opcode::Startup,
            0x02 => Opcode::Ready,
            0x03 => Opcode::Authenticate,
            0x05 => Opcode::Options,
            0x06 => Opcode::Supported,
            0x07 => Opcode::Query,
            0x08 => Opcode::Result,
            0x09 => Opcode::Prepare,
            0x0A => Opcode::Execute,
            0x0B => Opcode::Register,
            0x0C => Opcode::Event,
            0x0D => Opcode::Batch,
            0x0E => Opcode::AuthChallenge,
            0x0F => Opcode::AuthResponse,
            0x10 => Opcode::AuthSuccess,
            _ => return None,
        })
    }
}

/// A malformed frame or body. Answered with a PROTOCOL_ERROR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub(crate) String);

impl ProtocolError {
    pub(crate) fn new(msg: impl Into<String>) -> ProtocolError {
        ProtocolError(msg.into())
    }
}

/// A frame header as read from the wire.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) version: u8,
    pub(crate) flags: u8,
    pub(crate) stream: i16,
    pub(crate) opcode: u8,
    pub(crate) length: usize,
}

impl Header {
    pub(crate) fn parse(buf: &[u8]) -> Header {
        Header {
            version: buf[0],
            flags: buf[1],
            stream: i16::from_be_bytes([buf[2], buf[3]]),
            opcode: buf[4],
            length: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize,
        }
    }
}

/// A cursor over a request body with the protocol's notation readers.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

fn short_body() -> ProtocolError {
    ProtocolError::new("frame body ends before the request is complete")
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Checks a count read from the body before it sizes anything: `n`
    /// items of at least `min_len` bytes each must fit in the bytes left.
    /// No count a client sends is trusted further than its bytes go.
    pub(crate) fn count(
        &self,
        n: usize,
        min_len: usize,
        what: &str,
    ) -> Result<usize, ProtocolError> {
        let fit = self.buf.len() / min_len.max(1);
        if n > fit {
            return Err(ProtocolError::new(format!(
                "{n} {what} announced, but the {} bytes that follow hold at most {fit}",
                self.buf.len()
            )));
        }
        Ok(n)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(short_body());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn byte(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn short(&mut self) -> Result<u16, ProtocolError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn int(&mut self) -> Result<i32, ProtocolError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn long(&mut self) -> Result<i64, ProtocolError> {
        let b = self.take(8)?;
        Ok(i64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    pub(crate) fn string(&mut self) -> Result<&'a str, ProtocolError> {
        let n = self.short()? as usize;
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| ProtocolError::new("[string] is not valid UTF-8"))
    }

    pub(crate) fn long_string(&mut self) -> Result<&'a str, ProtocolError> {
        let n = self.int()?;
        if n < 0 {
            return Err(ProtocolError::new("negative [long string] length"));
        }
        std::str::from_utf8(self.take(n as usize)?)
            .map_err(|_| ProtocolError::new("[long string] is not valid UTF-8"))
    }

    pub(crate) fn short_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let n = self.short()? as usize;
        self.take(n)
    }

    /// `[bytes]`; `None` for null (-1); unset (-2) maps to [`Value::Unset`].
    pub(crate) fn value(&mut self) -> Result<Value<'a>, ProtocolError> {
        let n = self.int()?;
        match n {
            -1 => Ok(Value::Null),
            -2 => Ok(Value::Unset),
            n if n < 0 => Err(ProtocolError::new(format!("invalid [value] length {n}"))),
            n => Ok(Value::Bytes(self.take(n as usize)?)),
        }
    }

    pub(crate) fn bytes_opt(&mut self) -> Result<Option<&'a [u8]>, ProtocolError> {
        let n = self.int()?;
        if n < 0 {
            Ok(None)
        } else {
            Ok(Some(self.take(n as usize)?))
        }
    }

    pub(crate) fn string_map(&mut self) -> Result<Vec<(&'a str, &'a str)>, ProtocolError> {
        // an entry is at least two empty [string]s
        let n = self.short()?;
        let n = self.count(usize::from(n), 4, "[string map] entries")?;
        (0..n)
            .map(|_| Ok((self.string()?, self.string()?)))
            .collect()
    }

    pub(crate) fn string_list(&mut self) -> Result<Vec<&'a str>, ProtocolError> {
        let n = self.short()?;
        let n = self.count(usize::from(n), 2, "[string list] items")?;
        (0..n).map(|_| self.string()).collect()
    }
}

/// One bound value as sent by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    /// A value.
    Bytes(&'a [u8]),
    /// `null`.
    Null,
    /// Unset: leave the column as it is.
    Unset,
}

/// The parameters common to QUERY and EXECUTE.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueryParams<'a> {
    pub(crate) consistency: u16,
    pub(crate) skip_metadata: bool,
    pub(crate) values: Vec<Value<'a>>,
    pub(crate) names: Option<Vec<&'a str>>,
    pub(crate) page_size: Option<i32>,
    pub(crate) paging_state: Option<&'a [u8]>,
    pub(crate) serial_consistency: Option<u16>,
    pub(crate) timestamp: Option<i64>,
}

impl<'a> QueryParams<'a> {
    pub(crate) fn read(r: &mut Reader<'a>) -> Result<QueryParams<'a>, ProtocolError> {
        let consistency = r.short()?;
        let flags = r.byte()?;
        let mut params = QueryParams {
            consistency,
            skip_metadata: flags & 0x02 != 0,
            ..QueryParams::default()
        };
        if flags & 0x01 != 0 {
            let named = flags & 0x40 != 0;
            // a value is at least its 4-byte length, a name its 2-byte one
            let n = r.short()?;
            let n = r.count(usize::from(n), if named { 6 } else { 4 }, "values")?;
            params.values.reserve_exact(n);
            if named {
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    names.push(r.string()?);
                    params.values.push(r.value()?);
                }
                params.names = Some(names);
            } else {
                for _ in 0..n {
                    params.values.push(r.value()?);
                }
            }
        }
        if flags & 0x04 != 0 {
            params.page_size = Some(r.int()?);
        }
        if flags & 0x08 != 0 {
            params.paging_state = r.bytes_opt()?;
        }
        if flags & 0x10 != 0 {
            params.serial_consistency = Some(r.short()?);
        }
        if flags & 0x20 != 0 {
            params.timestamp = Some(r.long()?);
        }
        Ok(params)
    }
}

/// One statement of a BATCH request.
#[derive(Debug, Clone)]
pub(crate) enum BatchEntry<'a> {
    Query(&'a str, Vec<Value<'a>>),
    Prepared(&'a [u8], Vec<Value<'a>>),
}

/// A decoded BATCH request.
#[derive(Debug, Clone)]
pub(crate) struct BatchRequest<'a> {
    pub(crate) kind: u8,
    pub(crate) entries: Vec<BatchEntry<'a>>,
    pub(crate) consistency: u16,
    pub(crate) serial_consistency: Option<u16>,
    pub(crate) timestamp: Option<i64>,
}

impl<'a> BatchRequest<'a> {
    pub(crate) fn read(r: &mut Reader<'a>) -> Result<BatchRequest<'a>, ProtocolError> {
        let kind = r.byte()?;
        if kind > 2 {
            return Err(ProtocolError::new(format!("unknown batch type {kind}")));
        }
        // a statement is at least its kind, an empty id and a values count
        let n = r.short()?;
        let n = r.count(usize::from(n), 5, "batch statements")?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let entry_kind = r.byte()?;
            let entry = match entry_kind {
                0 => {
                    let text = r.long_string()?;
                    BatchEntry::Query(text, read_values(r)?)
                }
                1 => {
                    let id = r.short_bytes()?;
                    BatchEntry::Prepared(id, read_values(r)?)
                }
                k => {
                    return Err(ProtocolError::new(format!(
                        "unknown batch statement kind {k}"
                    )));
                }
            };
            entries.push(entry);
        }
        let consistency = r.short()?;
        let flags = r.byte()?;
        let serial_consistency = if flags & 0x10 != 0 {
            Some(r.short()?)
        } else {
            None
        };
        let timestamp = if flags & 0x20 != 0 {
            Some(r.long()?)
        } else {
            None
        };
        Ok(BatchRequest {
            kind,
            entries,
            consistency,
            serial_consistency,
            timestamp,
        })
    }
}

fn read_values<'a>(r: &mut Reader<'a>) -> Result<Vec<Value<'a>>, ProtocolError> {
    let n = r.short()?;
    let n = r.count(usize::from(n), 4, "values")?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        values.push(r.value()?);
    }
    Ok(values)
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Writers for the protocol's notations, on any `BufMut`.
pub(crate) trait WriteExt: BufMut {
    fn put_string(&mut self, s: &str) {
        self.put_u16(s.len() as u16);
        self.put_slice(s.as_bytes());
    }
    fn put_short_bytes(&mut self, b: &[u8]) {
        self.put_u16(b.len() as u16);
        self.put_slice(b);
    }
    fn put_value(&mut self, v: Option<&[u8]>) {
        match v {
            Some(b) => {
                self.put_i32(b.len() as i32);
                self.put_slice(b);
            }
            None => self.put_i32(-1),
        }
    }
    fn put_string_list(&mut self, list: &[&str]) {
        self.put_u16(list.len() as u16);
        for s in list {
            self.put_string(s);
        }
    }
    fn put_inet(&mut self, addr: std::net::SocketAddr) {
        match addr.ip() {
            std::net::IpAddr::V4(ip) => {
                self.put_u8(4);
                self.put_slice(&ip.octets());
            }
            std::net::IpAddr::V6(ip) => {
                self.put_u8(16);
                self.put_slice(&ip.octets());
            }
        }
        self.put_i32(i32::from(addr.port()));
    }
}

impl<T: BufMut + ?Sized> WriteExt for T {}

/// Builds one response frame in an output buffer: the header is written
/// first with a placeholder length, patched by [`FrameWriter::finish`].
#[derive(Debug)]
pub(crate) struct FrameWriter {
    start: usize,
}

impl FrameWriter {
    pub(crate) fn begin(out: &mut BytesMut, stream: i16, opcode: Opcode, flags: u8) -> FrameWriter {
        let start = out.len();
        out.put_u8(0x84);
        out.put_u8(flags);
        out.put_i16(stream);
        out.put_u8(opcode.code());
        out.put_u32(0);
        FrameWriter { start }
    }

    /// Patches the body length; compresses the body if asked to.
    pub(crate) fn finish(self, out: &mut BytesMut, compression: Compression) {
        let body_start = self.start + HEADER_LEN;
        if compression != Compression::None && out.len() > body_start {
            let body = out.split_off(body_start);
            let mut compressed = Vec::with_capacity(body.len() / 2 + 16);
            compression.compress(&body, &mut compressed);
            out.extend_from_slice(&compressed);
            out[self.start + 1] |= FLAG_COMPRESSION;
        }
        let len = (out.len() - body_start) as u32;
        out[self.start + 5..self.start + 9].copy_from_slice(&len.to_be_bytes());
    }
}

/// What [`split_frame`] found at the front of the buffer.
#[derive(Debug)]
pub(crate) enum Split {
    /// A whole frame: its header and (still compressed, if flagged) body.
    Frame(Header, Bytes),
    /// Not a whole frame yet.
    Partial,
    /// A frame whose body is larger than allowed: answer it on its stream
    /// and skip its `length` body bytes (as Cassandra does), keeping the
    /// connection. The header has been taken off the buffer.
    TooLarge(Header),
}

/// Takes one complete frame off the front of `buf`, if there is one.
/// Bodies longer than `max_body` (and the protocol's 256 MiB) are refused
/// ([`Split::TooLarge`]); the header's other fields are checked later.
pub(crate) fn split_frame(buf: &mut BytesMut, max_body: usize) -> Split {
    if buf.len() < HEADER_LEN {
        return Split::Partial;
    }
    let header = Header::parse(&buf[..HEADER_LEN]);
    if header.length > max_body.min(MAX_BODY_LEN) {
        buf.advance(HEADER_LEN);
        return Split::TooLarge(header);
    }
    if buf.len() < HEADER_LEN + header.length {
        buf.reserve((HEADER_LEN + header.length - buf.len()).min(READ_AHEAD));
        return Split::Partial;
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(header.length).freeze();
    Split::Frame(header, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_frame_waits_for_whole_frame() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[4, 0, 0, 1, 5, 0, 0, 0, 2, 0xAA]);
        assert!(matches!(split_frame(&mut buf, 1024), Split::Partial));
        buf.extend_from_slice(&[0xBB, 4]);
        let Split::Frame(h, body) = split_frame(&mut buf, 1024) else {
            panic!("a whole frame")
        };
        assert_eq!(h.stream, 1);
        assert_eq!(h.opcode, 5);
        assert_eq!(&body[..], &[0xAA, 0xBB]);
        assert_eq!(&buf[..], &[4]);
    }

    #[test]
    fn split_frame_does_not_reserve_what_a_header_announces() {
        // a header announcing 200 MiB, then 3 bytes of it
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[4, 0, 0, 1, 7]);
        buf.extend_from_slice(&(200u32 << 20).to_be_bytes());
        buf.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            split_frame(&mut buf, MAX_BODY_LEN),
            Split::Partial
        ));
        assert!(buf.capacity() <= 2 * READ_AHEAD, "{}", buf.capacity());
        // the body arrives in pieces and the frame is whole in the end
        let body: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[4, 0, 0, 1, 7]);
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        for chunk in body.chunks(50_000) {
            assert!(matches!(
                split_frame(&mut buf, MAX_BODY_LEN),
                Split::Partial
            ));
            buf.extend_from_slice(chunk);
        }
        let Split::Frame(_, got) = split_frame(&mut buf, MAX_BODY_LEN) else {
            panic!("a whole frame")
        };
        assert_eq!(&got[..], &body[..]);
    }

    #[test]
    fn split_frame_refuses_a_body_over_the_limit_without_waiting_for_it() {
        let mut buf = BytesMut::new();
        // stream 7, QUERY, a 2,000-byte body of which 3 bytes arrived
        buf.extend_from_slice(&[4, 0, 0, 7, 7, 0, 0, 0x07, 0xD0, 1, 2, 3]);
        let Split::TooLarge(h) = split_frame(&mut buf, 1000) else {
            panic!("refused")
        };
        assert_eq!((h.stream, h.length), (7, 2000));
        assert_eq!(
            &buf[..],
            &[1, 2, 3],
            "the header was taken, the body is left to skip"
        );
        // a length past the protocol's 256 MiB is refused whatever the limit
        let mut buf = BytesMut::from(&[4u8, 0, 0, 1, 7, 0x7F, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(
            split_frame(&mut buf, usize::MAX),
            Split::TooLarge(_)
        ));
    }

    #[test]
    fn query_params_decode_all_flags() {
        let mut b = BytesMut::new();
        b.put_u16(1); // consistency ONE
        b.put_u8(0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20);
        b.put_u16(3);
        b.put_value(Some(&[1, 2]));
        b.put_i32(-1);
        b.put_i32(-2);
        b.put_i32(10);
        b.put_value(Some(b"ps"));
        b.put_u16(8);
        b.put_i64(42);
        let mut r = Reader::new(&b);
        let p = QueryParams::read(&mut r).unwrap();
        assert!(p.skip_metadata);
        assert_eq!(
            p.values,
            vec![Value::Bytes(&[1, 2]), Value::Null, Value::Unset]
        );
        assert_eq!(p.page_size, Some(10));
        assert_eq!(p.paging_state, Some(&b"ps"[..]));
        assert_eq!(p.serial_consistency, Some(8));
        assert_eq!(p.timestamp, Some(42));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn counts_are_checked_against_the_bytes_that_follow() {
        let mut b = BytesMut::new();
        b.put_u16(1);
        b.put_u8(0x01);
        b.put_u16(3);
        b.put_value(Some(&[1]));
        b.put_value(None);
        let e = QueryParams::read(&mut Reader::new(&b)).unwrap_err();
        assert_eq!(
            e.0,
            "3 values announced, but the 9 bytes that follow hold at most 2"
        );
        let e = BatchRequest::read(&mut Reader::new(&[0, 0xFF, 0xFF, 0, 1])).unwrap_err();
        assert!(
            e.0.starts_with("65535 batch statements announced"),
            "{}",
            e.0
        );
        let e = Reader::new(&[0, 2, 0, 0]).string_list().unwrap_err();
        assert!(e.0.starts_with("2 [string list] items"), "{}", e.0);
        assert_eq!(
            Reader::new(&[0, 2, 0, 0, 0, 0]).string_list().unwrap(),
            ["", ""]
        );
        let e = Reader::new(&[0, 1, 0, 0]).string_map().unwrap_err();
        assert!(e.0.starts_with("1 [string map] entries"), "{}", e.0);
    }

    #[test]
    fn truncated_body_is_a_protocol_error() {
        let mut r = Reader::new(&[0, 5, b'a']);
        assert!(r.string().is_err());
    }
}
