//! The body compressions a client can negotiate in STARTUP (LZ4 and
//! Snappy), and the bound on what a compressed body may announce.

use crate::frame::{MAX_BODY_LEN, ProtocolError};

/// The compression negotiated in STARTUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Lz4,
    Snappy,
}

impl Compression {
    pub(crate) fn from_name(name: &str) -> Option<Compression> {
        match name.to_ascii_lowercase().as_str() {
            "lz4" => Some(Compression::Lz4),
            "snappy" => Some(Compression::Snappy),
            _ => None,
        }
    }

    /// Decompresses a request body. The uncompressed length the body
    /// announces sizes the output buffer, so it is checked first against
    /// what its compressed bytes can hold at most (and the protocol's
    /// 256 MiB).
    pub(crate) fn decompress(self, body: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        match self {
            Compression::None => Ok(body.to_vec()),
            Compression::Lz4 => {
                if body.len() < 4 {
                    return Err(ProtocolError::new(
                        "lz4 body shorter than its length prefix",
                    ));
                }
                let len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
                let block = &body[4..];
                check_expansion("lz4", len, block.len(), LZ4_MAX_EXPANSION)?;
                lz4_flex::block::decompress(block, len)
                    .map_err(|e| ProtocolError::new(format!("invalid lz4 body: {e}")))
            }
            Compression::Snappy => {
                let len = snap::raw::decompress_len(body)
                    .map_err(|e| ProtocolError::new(format!("invalid snappy body: {e}")))?;
                check_expansion("snappy", len, body.len(), SNAPPY_MAX_EXPANSION)?;
                snap::raw::Decoder::new()
                    .decompress_vec(body)
                    .map_err(|e| ProtocolError::new(format!("invalid snappy body: {e}")))
            }
        }
    }

    pub(crate) fn compress(self, body: &[u8], out: &mut Vec<u8>) {
        match self {
            Compression::None => out.extend_from_slice(body),
            Compression::Lz4 => {
                out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                out.extend_from_slice(&lz4_flex::block::compress(body));
            }
            Compression::Snappy => {
                let compressed = snap::raw::Encoder::new()
                    .compress_vec(body)
                    .expect("snappy compression of an in-memory buffer cannot fail");
                out.extend_from_slice(&compressed);
            }
        }
    }
}

/// The most an LZ4 block expands: a match-length byte adds at most 255
/// bytes of output, every other byte less.
const LZ4_MAX_EXPANSION: usize = 255;
/// The most a Snappy block expands: a 3-byte copy writes at most 64
/// bytes (21.3x); 32 leaves room.
const SNAPPY_MAX_EXPANSION: usize = 32;

/// Refuses an announced uncompressed length that `compressed` bytes cannot
/// produce, or that is over the protocol's limit.
fn check_expansion(
    name: &str,
    len: usize,
    compressed: usize,
    max_expansion: usize,
) -> Result<(), ProtocolError> {
    let most = compressed.saturating_mul(max_expansion).min(MAX_BODY_LEN);
    if len > most {
        return Err(ProtocolError::new(format!(
            "{name} body announces {len} bytes uncompressed, but its {compressed} compressed bytes hold at most {most}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lz4_and_snappy_round_trip() {
        let body: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 97).to_be_bytes())
            .collect();
        for c in [Compression::Lz4, Compression::Snappy] {
            let mut out = Vec::new();
            c.compress(&body, &mut out);
            assert!(out.len() < body.len());
            assert_eq!(c.decompress(&out).unwrap(), body);
        }
        assert!(Compression::Lz4.decompress(&[0, 0]).is_err());
    }

    #[test]
    fn a_compressed_body_cannot_announce_more_than_it_can_hold() {
        let e = Compression::Lz4
            .decompress(&[0x0F, 0xFF, 0xFF, 0xFF, 0])
            .unwrap_err();
        assert!(e.0.contains("268435455 bytes"), "{}", e.0);
        let e = Compression::Snappy
            .decompress(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x00, 0x61])
            .unwrap_err();
        assert!(e.0.contains("4294967295 bytes"), "{}", e.0);
        // the most any real block expands still decompresses
        let zeros = vec![0u8; 1 << 20];
        for c in [Compression::Lz4, Compression::Snappy] {
            let mut out = Vec::new();
            c.compress(&zeros, &mut out);
            assert_eq!(c.decompress(&out).unwrap(), zeros, "{c:?}");
        }
        assert_eq!(Compression::Lz4.decompress(&[0, 0, 0, 0, 0]).unwrap(), b"");
    }
}
