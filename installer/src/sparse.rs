//! The encoding the filesystem templates travel in: a fresh xfs image is
//! hundreds of MiB of which a few hold data, so only its non-zero parts
//! are kept, gzipped.
//!
//! # Format
//!
//! gzip of:
//!
//! - the magic `TRSPARSE1\n`;
//! - the image's total length, u64 little-endian;
//! - records `offset: u64 LE, length: u32 LE, bytes`, one per run of
//!   non-zero [`CHUNK`]-byte chunks (adjacent ones merged), in ascending
//!   order;
//! - an end record: offset `u64::MAX`, length 0.
//!
//! Everything not in a record is zero. [`encode`] runs on the build host
//! (the imager makes the templates with `mkfs.xfs`); [`apply`] runs on the
//! build host and in the node, and refuses anything that would write
//! outside the target range.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::target::RangeWriter;

/// The magic at the start of the decompressed stream.
pub const MAGIC: &[u8; 10] = b"TRSPARSE1\n";

/// The granularity of the zero detection.
pub const CHUNK: usize = 64 * 1024;

/// The longest record [`encode`] writes (well below `u32::MAX`, and a
/// bound on what [`apply`] holds in memory at once: it streams records in
/// pieces anyway).
const MAX_RECORD: usize = 64 * 1024 * 1024;

/// Bytes [`apply`] reads and writes at a time.
const PIECE: usize = 1024 * 1024;

/// The end record's offset.
const END: u64 = u64::MAX;

/// Encoding or applying a sparse image failed.
#[derive(Debug, thiserror::Error)]
pub enum SparseError {
    /// Reading the input or writing the output failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file (or the target's description).
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The stream does not start with [`MAGIC`] (not gzip, or not ours).
    #[error("not a sparse image (no TRSPARSE1 magic)")]
    BadMagic,
    /// The stream is cut short or corrupt.
    #[error("reading the sparse image, {what}: {source}")]
    Corrupt {
        /// Where in the stream.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The image is larger than where it is to go.
    #[error("the image is {total} bytes, more than the {range} bytes it is to be written into")]
    TooLarge {
        /// The image's length.
        total: u64,
        /// The target range's length.
        range: u64,
    },
    /// A record lies outside the image's length.
    #[error("a record at offset {offset} of {length} bytes lies outside the image's {total} bytes")]
    OutOfRange {
        /// The record's offset.
        offset: u64,
        /// Its length.
        length: u32,
        /// The image's length.
        total: u64,
    },
    /// Bytes follow the end record.
    #[error("data after the end record of the sparse image")]
    TrailingData,
    /// Writing into the target failed.
    #[error("{operation} at {offset} (+{length} bytes) of the target: {source}")]
    Target {
        /// What was being done.
        operation: &'static str,
        /// Where.
        offset: u64,
        /// How much.
        length: u64,
        /// The cause.
        source: io::Error,
    },
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SparseError + use<> {
    let path = path.to_path_buf();
    move |source| SparseError::Io {
        operation,
        path,
        source,
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Encodes the image file `input` into `output` (replaced).
///
/// # Errors
/// [`SparseError::Io`] naming the file and the step.
pub fn encode(input: &Path, output: &Path) -> Result<(), SparseError> {
    let src = File::open(input).map_err(io_err("opening", input))?;
    let total = src.metadata().map_err(io_err("inspecting", input))?.len();
    let dst = File::create(output).map_err(io_err("creating", output))?;
    let mut gz = GzEncoder::new(BufWriter::new(dst), Compression::best());
    encode_stream(&mut BufReader::new(src), total, &mut gz).map_err(|e| match e {
        StreamError::Read(source) => SparseError::Io {
            operation: "reading",
            path: input.to_path_buf(),
            source,
        },
        StreamError::Write(source) => SparseError::Io {
            operation: "writing",
            path: output.to_path_buf(),
            source,
        },
    })?;
    let mut inner = gz.finish().map_err(io_err("writing", output))?;
    inner.flush().map_err(io_err("writing", output))?;
    inner
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", output))
}

enum StreamError {
    Read(io::Error),
    Write(io::Error),
}

/// The uncompressed stream of `total` bytes from `input`, into `out`.
fn encode_stream(
    input: &mut impl Read,
    total: u64,
    out: &mut impl Write,
) -> Result<(), StreamError> {
    out.write_all(MAGIC).map_err(StreamError::Write)?;
    out.write_all(&total.to_le_bytes())
        .map_err(StreamError::Write)?;
    let mut chunk = vec![0u8; CHUNK];
    // The run being collected: its offset and bytes.
    let mut run: Vec<u8> = Vec::new();
    let mut run_at = 0u64;
    let mut pos = 0u64;
    let flush = |out: &mut dyn Write, at: u64, run: &mut Vec<u8>| -> io::Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        out.write_all(&at.to_le_bytes())?;
        // MAX_RECORD keeps it within u32.
        out.write_all(&(run.len() as u32).to_le_bytes())?;
        out.write_all(run)?;
        run.clear();
        Ok(())
    };
    while pos < total {
        let want = (total - pos).min(CHUNK as u64) as usize;
        let n = fill(input, &mut chunk[..want]).map_err(StreamError::Read)?;
        if n < want {
            return Err(StreamError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended at {} bytes of {total}", pos + n as u64),
            )));
        }
        let data = &chunk[..n];
        if data.iter().any(|&b| b != 0) {
            if run.is_empty() {
                run_at = pos;
            }
            run.extend_from_slice(data);
            if run.len() >= MAX_RECORD {
                flush(out, run_at, &mut run).map_err(StreamError::Write)?;
            }
        } else {
            flush(out, run_at, &mut run).map_err(StreamError::Write)?;
        }
        pos += n as u64;
    }
    flush(out, run_at, &mut run).map_err(StreamError::Write)?;
    out.write_all(&END.to_le_bytes())
        .map_err(StreamError::Write)?;
    out.write_all(&0u32.to_le_bytes())
        .map_err(StreamError::Write)
}

/// The image length a sparse image declares (its header), without
/// applying it.
///
/// # Errors
/// [`SparseError::BadMagic`] or [`SparseError::Corrupt`].
pub fn total_len(encoded: impl Read) -> Result<u64, SparseError> {
    let mut stream = GzDecoder::new(encoded);
    read_header(&mut stream)
}

fn read_header(stream: &mut impl Read) -> Result<u64, SparseError> {
    let mut magic = [0u8; MAGIC.len()];
    match stream.read_exact(&mut magic) {
        Ok(()) if &magic == MAGIC => {}
        // Not gzip at all, or gzip of something else.
        Ok(()) => return Err(SparseError::BadMagic),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Err(SparseError::BadMagic),
        Err(source) => {
            return Err(SparseError::Corrupt {
                what: "the magic",
                source,
            });
        }
    }
    let mut total = [0u8; 8];
    stream
        .read_exact(&mut total)
        .map_err(|source| SparseError::Corrupt {
            what: "the total length",
            source,
        })?;
    Ok(u64::from_le_bytes(total))
}

/// Writes the sparse image read from `encoded` (gzipped, as [`encode`]
/// writes it) into `target`: the image's span is zeroed first, then every
/// record is written. The rest of the target, past the image, is zeroed
/// where that is cheap (see [`RangeWriter::zero_cheaply`]): a filesystem
/// smaller than its partition initialises what it grows into itself.
///
/// Returns the bytes of data written (the records' total).
///
/// # Errors
/// The image is larger than the target, a record lies outside the image,
/// the stream is corrupt, or writing failed. The target is then partly
/// written.
pub fn apply(encoded: impl Read, target: &mut dyn RangeWriter) -> Result<u64, SparseError> {
    let mut stream = GzDecoder::new(BufReader::new(encoded));
    let total = read_header(&mut stream)?;
    let range = target.len();
    if total > range {
        return Err(SparseError::TooLarge { total, range });
    }
    let target_err = |operation, offset, length| {
        move |source| SparseError::Target {
            operation,
            offset,
            length,
            source,
        }
    };
    target
        .zero(0, total)
        .map_err(target_err("zeroing", 0, total))?;
    target
        .zero_cheaply(total, range - total)
        .map_err(target_err("zeroing", total, range - total))?;
    let mut written = 0u64;
    let mut buf = vec![0u8; PIECE];
    loop {
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .map_err(|source| SparseError::Corrupt {
                what: "a record header",
                source,
            })?;
        let offset = u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8]));
        let length = u32::from_le_bytes(head[8..].try_into().unwrap_or([0; 4]));
        if offset == END {
            break;
        }
        if offset
            .checked_add(u64::from(length))
            .is_none_or(|end| end > total)
        {
            return Err(SparseError::OutOfRange {
                offset,
                length,
                total,
            });
        }
        let mut left = u64::from(length);
        let mut at = offset;
        while left > 0 {
            let n = left.min(PIECE as u64) as usize;
            stream
                .read_exact(&mut buf[..n])
                .map_err(|source| SparseError::Corrupt {
                    what: "a record's data",
                    source,
                })?;
            target
                .write_at(&buf[..n], at)
                .map_err(target_err("writing", at, n as u64))?;
            at += n as u64;
            left -= n as u64;
        }
        written += u64::from(length);
    }
    let mut extra = [0u8; 1];
    match fill(&mut stream, &mut extra) {
        Ok(0) => Ok(written),
        Ok(_) => Err(SparseError::TrailingData),
        Err(source) => Err(SparseError::Corrupt {
            what: "the end of the stream",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny xorshift generator: the test data differs between runs of
    /// the loop but needs no dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// `len` bytes, zero but for a few runs of random bytes (some
    /// crossing chunk boundaries, one at the very end).
    fn sparse_data(len: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        let mut data = vec![0u8; len];
        for _ in 0..6 {
            let at = (xorshift(&mut s) as usize) % len;
            let n = ((xorshift(&mut s) as usize) % (3 * CHUNK)).min(len - at);
            for b in &mut data[at..at + n] {
                *b = (xorshift(&mut s) as u8) | 1;
            }
        }
        let end = len - 10;
        data[end..].fill(0x5A);
        data
    }

    fn encode_bytes(data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("image");
        let output = dir.path().join("image.sparse");
        std::fs::write(&input, data).expect("write");
        encode(&input, &output).expect("encode");
        std::fs::read(&output).expect("read")
    }

    /// The records of an encoded image: (offset, length).
    fn records(encoded: &[u8]) -> Vec<(u64, u32)> {
        let mut raw = Vec::new();
        GzDecoder::new(encoded)
            .read_to_end(&mut raw)
            .expect("gunzip");
        assert_eq!(&raw[..10], MAGIC);
        let mut at = 18;
        let mut out = Vec::new();
        loop {
            let offset = u64::from_le_bytes(raw[at..at + 8].try_into().expect("8"));
            let length = u32::from_le_bytes(raw[at + 8..at + 12].try_into().expect("4"));
            at += 12;
            if offset == u64::MAX {
                assert_eq!(length, 0);
                assert_eq!(at, raw.len(), "nothing after the end record");
                return out;
            }
            out.push((offset, length));
            at += length as usize;
        }
    }

    #[test]
    fn round_trip_with_random_sparse_data() {
        for seed in [1u64, 7, 12345, 0xdead_beef] {
            // Not a multiple of CHUNK: the last chunk is partial.
            let len = 40 * CHUNK + 1234;
            let data = sparse_data(len, seed);
            let encoded = encode_bytes(&data);
            assert!(encoded.len() < len / 4, "compressed: {}", encoded.len());
            assert_eq!(total_len(&encoded[..]).expect("header"), len as u64);

            // Into a larger range full of garbage: the image's span comes
            // out exact, the rest is zeroed (cheaply, here).
            let mut target = vec![0xEEu8; len + 3 * CHUNK];
            let written = apply(&encoded[..], &mut target).expect("apply");
            assert_eq!(&target[..len], &data[..], "seed {seed}");
            assert!(target[len..].iter().all(|&b| b == 0));

            let recs = records(&encoded);
            let sum: u64 = recs.iter().map(|&(_, l)| u64::from(l)).sum();
            assert_eq!(written, sum);
            // Records are whole chunks (but the last), merged: never
            // adjacent, never all zero.
            for pair in recs.windows(2) {
                assert!(pair[0].0 + u64::from(pair[0].1) < pair[1].0, "{pair:?}");
            }
            for &(offset, length) in &recs {
                assert_eq!(offset % CHUNK as u64, 0);
                let bytes = &data[offset as usize..offset as usize + length as usize];
                for chunk in bytes.chunks(CHUNK) {
                    assert!(chunk.iter().any(|&b| b != 0));
                }
            }
            // Zero chunks are not stored.
            let nonzero_chunks = data.chunks(CHUNK).filter(|c| c.iter().any(|&b| b != 0));
            assert_eq!(
                sum,
                nonzero_chunks.map(|c| c.len() as u64).sum::<u64>(),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn all_zero_and_empty_images() {
        let encoded = encode_bytes(&vec![0u8; 5 * CHUNK]);
        assert!(records(&encoded).is_empty());
        let mut target = vec![1u8; 5 * CHUNK];
        assert_eq!(apply(&encoded[..], &mut target).expect("apply"), 0);
        assert!(target.iter().all(|&b| b == 0));

        let encoded = encode_bytes(&[]);
        let mut target = vec![1u8; 3];
        assert_eq!(apply(&encoded[..], &mut target).expect("apply"), 0);
        assert_eq!(target, [0, 0, 0], "the rest is zeroed where cheap");
    }

    fn gzip(raw: &[u8]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(raw).expect("gzip");
        gz.finish().expect("gzip")
    }

    fn stream(total: u64, records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut raw = MAGIC.to_vec();
        raw.extend_from_slice(&total.to_le_bytes());
        for (offset, bytes) in records {
            raw.extend_from_slice(&offset.to_le_bytes());
            raw.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            raw.extend_from_slice(bytes);
        }
        raw.extend_from_slice(&u64::MAX.to_le_bytes());
        raw.extend_from_slice(&0u32.to_le_bytes());
        raw
    }

    #[test]
    fn refuses_records_outside_the_range() {
        // A record past the declared length.
        let bad = gzip(&stream(100, &[(98, b"abc")]));
        let mut target = vec![0u8; 1000];
        let err = apply(&bad[..], &mut target).expect_err("out of range");
        assert!(
            matches!(
                err,
                SparseError::OutOfRange {
                    offset: 98,
                    length: 3,
                    total: 100
                }
            ),
            "{err}"
        );
        // Nothing past the image's span was written.
        assert!(target[100..].iter().all(|&b| b == 0));

        // An offset whose end overflows.
        let bad = gzip(&stream(100, &[(u64::MAX - 1, b"ab")]));
        let err = apply(&bad[..], &mut vec![0u8; 100]).expect_err("overflow");
        assert!(matches!(err, SparseError::OutOfRange { .. }), "{err}");

        // An image larger than the target: refused before any write.
        let big = gzip(&stream(2000, &[(0, b"abc")]));
        let mut target = vec![7u8; 1000];
        let err = apply(&big[..], &mut target).expect_err("too large");
        assert!(
            matches!(
                err,
                SparseError::TooLarge {
                    total: 2000,
                    range: 1000
                }
            ),
            "{err}"
        );
        assert!(target.iter().all(|&b| b == 7), "untouched");
        assert!(err.to_string().contains("2000"), "{err}");

        // A record exactly at the end is fine.
        let ok = gzip(&stream(100, &[(97, b"abc")]));
        let mut target = vec![9u8; 100];
        assert_eq!(apply(&ok[..], &mut target).expect("fits"), 3);
        assert_eq!(&target[97..], b"abc");
        assert!(target[..97].iter().all(|&b| b == 0));
    }

    #[test]
    fn refuses_corrupt_streams() {
        let mut target = vec![0u8; 100];
        let err = apply(&b"plain text, not gzip"[..], &mut target).expect_err("not gzip");
        assert!(matches!(err, SparseError::BadMagic), "{err}");
        let err = apply(&gzip(b"TRSPARSE2\nxxxxxxxx")[..], &mut target).expect_err("magic");
        assert!(matches!(err, SparseError::BadMagic), "{err}");

        let mut cut = stream(100, &[(0, b"abcdef")]);
        cut.truncate(MAGIC.len() + 8 + 12 + 2);
        let err = apply(&gzip(&cut)[..], &mut target).expect_err("cut short");
        assert!(matches!(err, SparseError::Corrupt { .. }), "{err}");

        let mut trailing = stream(100, &[(0, b"abc")]);
        trailing.push(0);
        let err = apply(&gzip(&trailing)[..], &mut target).expect_err("trailing");
        assert!(matches!(err, SparseError::TrailingData), "{err}");
    }

    #[test]
    fn encode_names_a_missing_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = encode(&dir.path().join("nope"), &dir.path().join("out")).expect_err("missing");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
