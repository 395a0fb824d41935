//! `talosctl pcap`: a node's packets, as a pcap file or one line each.
//!
//! The node streams a pcap file (PacketCapture). With `--output` it is
//! written as it comes (`-` is stdout, for `| tcpdump -r -`); without, each
//! packet is printed as one tcpdump-style line. A BPF filter is given
//! compiled, in `tcpdump -dd` format, as upstream takes it: the node runs no
//! filter compiler.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use api::machine::{BpfInstruction, PacketCaptureRequest};
use bytes::Bytes;
use machinery::endian::{array, be32, le32};

use crate::cli::{GlobalArgs, PcapArgs};
use crate::client::{self, Client, NodePolicy, Options};
use crate::output;

/// Runs `talosctl pcap`.
///
/// # Errors
/// A bad filter, the client setup, the call, or writing the output failed.
pub async fn run(global: &GlobalArgs, args: PcapArgs) -> anyhow::Result<()> {
    let request = PacketCaptureRequest {
        interface: args.interface.clone(),
        promiscuous: args.promiscuous,
        snap_len: args.snaplen,
        bpf_filter: parse_bpf(&args.bpf_filter)?,
    };
    let client = Client::connect(global, Options::nodes(NodePolicy::Single("pcap")))?;
    let mut sink = Sink::open(args.output.as_deref())?;
    let capture = async {
        let stream = client
            .call(|channel| {
                let request = client.request(request.clone());
                async move { client::machine(channel).packet_capture(request).await }
            })
            .await?;
        super::files::drain_data(&client, stream, |chunk| {
            sink.write(chunk)?;
            Ok(true)
        })
        .await
    };
    // The capture runs until the duration is over (the call is then
    // dropped, which ends it on the node) or the operator interrupts.
    match args.duration {
        Some(d) if !d.is_zero() => tokio::time::timeout(d, capture).await.unwrap_or(Ok(())),
        _ => capture.await,
    }
}

/// Parses a BPF program in `tcpdump -dd` format, one instruction a line:
/// `{ 0x28, 0, 0, 0x0000000c },` ([`machinery::bpf`]).
///
/// # Errors
/// A line that is not four numbers in braces, or a number out of range.
pub fn parse_bpf(text: &str) -> anyhow::Result<Vec<BpfInstruction>> {
    Ok(machinery::bpf::parse_tcpdump_dd(text)?
        .into_iter()
        .map(|i| BpfInstruction {
            op: u32::from(i.op),
            jt: u32::from(i.jt),
            jf: u32::from(i.jf),
            k: i.k,
        })
        .collect())
}

/// Where the capture goes.
enum Sink {
    /// The pcap file as it is (a file or stdout).
    Raw(Box<dyn std::io::Write>),
    /// One line per packet on stdout.
    Decode(Reader),
}

impl Sink {
    fn open(output: Option<&str>) -> anyhow::Result<Sink> {
        Ok(match output {
            None => Sink::Decode(Reader::default()),
            Some("-") => Sink::Raw(Box::new(std::io::stdout())),
            Some(path) => Sink::Raw(Box::new(
                std::fs::File::create(path).with_context(|| format!("creating {path}"))?,
            )),
        })
    }

    fn write(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        match self {
            // Each chunk is written through at once: a capture without
            // --duration ends with ^C, and a reader on a pipe waits.
            Sink::Raw(w) => w
                .write_all(&chunk)
                .and_then(|()| w.flush())
                .context("writing the capture")?,
            Sink::Decode(reader) => {
                reader.push(&chunk);
                while let Some(packet) = reader.next_packet()? {
                    output::out_bytes(format!("{}\n", packet.summary()).as_bytes())?;
                }
            }
        }
        Ok(())
    }
}

/// The longest record a capture can hold (the largest snap length).
const MAX_RECORD: usize = 262_144;

/// One captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// When it was captured.
    pub at: Duration,
    /// Its pcap link type.
    pub link_type: u32,
    /// Its bytes as captured (perhaps cut to the snap length).
    pub data: Vec<u8>,
    /// Its length on the wire.
    pub original: u32,
}

/// A pcap stream read as it arrives.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
    /// Link type and whether timestamps are nanoseconds, once the header
    /// is read.
    header: Option<(u32, bool, bool)>,
}

impl Reader {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole packet, if one has arrived.
    ///
    /// # Errors
    /// The stream is not a pcap file.
    pub fn next_packet(&mut self) -> anyhow::Result<Option<Packet>> {
        let (link_type, nanos, big) = match self.header {
            Some(h) => h,
            None => {
                if self.buf.len() < 24 {
                    return Ok(None);
                }
                let magic: [u8; 4] = array(&self.buf, 0).unwrap_or_default();
                let (nanos, big) = match magic {
                    [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
                    [0x4d, 0x3c, 0xb2, 0xa1] => (true, false),
                    [0xa1, 0xb2, 0xc3, 0xd4] => (false, true),
                    [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
                    _ => bail!("the node's capture is not a pcap file (magic {magic:02x?})"),
                };
                let link_type = word(&self.buf, 20, big);
                self.buf.drain(..24);
                self.header = Some((link_type, nanos, big));
                (link_type, nanos, big)
            }
        };
        if self.buf.len() < 16 {
            return Ok(None);
        }
        let captured = usize::try_from(word(&self.buf, 8, big)).unwrap_or(usize::MAX);
        // No record is longer than the largest snap length: a longer one is
        // a broken stream, and waiting for it would buffer without end.
        if captured > MAX_RECORD {
            bail!("the node's capture has a record of {captured} bytes, more than {MAX_RECORD}");
        }
        if self.buf.len() - 16 < captured {
            return Ok(None);
        }
        let secs = u64::from(word(&self.buf, 0, big));
        let frac = word(&self.buf, 4, big);
        let at = Duration::from_secs(secs)
            + if nanos {
                Duration::from_nanos(u64::from(frac))
            } else {
                Duration::from_micros(u64::from(frac))
            };
        let original = word(&self.buf, 12, big);
        let data = self.buf[16..16 + captured].to_vec();
        self.buf.drain(..16 + captured);
        Ok(Some(Packet {
            at,
            link_type,
            data,
            original,
        }))
    }
}

/// A header word of the file's byte order (the caller checked the length).
fn word(b: &[u8], at: usize, big: bool) -> u32 {
    if big { be32(b, at) } else { le32(b, at) }
}

/// A field of a packet, which may be cut short.
fn be16(b: &[u8], at: usize) -> Option<u16> {
    array(b, at).map(u16::from_be_bytes)
}

impl Packet {
    /// One line, as tcpdump prints it without options (UTC times).
    #[must_use]
    pub fn summary(&self) -> String {
        let secs = self.at.as_secs() % 86_400;
        let time = format!(
            "{:02}:{:02}:{:02}.{:06}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            self.at.subsec_micros()
        );
        let what = match self.link_type {
            1 => ethernet(&self.data),
            101 => match self.data.first().map(|b| b >> 4) {
                Some(4) => ipv4(&self.data),
                Some(6) => ipv6(&self.data),
                _ => None,
            },
            _ => None,
        };
        let what = what.unwrap_or_else(|| format!("length {}", self.original));
        format!("{time} {what}")
    }
}

fn ethernet(frame: &[u8]) -> Option<String> {
    let ethertype = be16(frame, 12)?;
    let payload = frame.get(14..)?;
    match ethertype {
        0x0800 => ipv4(payload),
        0x86dd => ipv6(payload),
        0x0806 => arp(payload),
        other => Some(format!("ethertype 0x{other:04x}, length {}", frame.len())),
    }
}

fn arp(p: &[u8]) -> Option<String> {
    let op = be16(p, 6)?;
    let ip = |at: usize| -> Option<std::net::Ipv4Addr> {
        let b: [u8; 4] = array(p, at)?;
        Some(b.into())
    };
    let mac = p.get(8..14)?;
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Some(match op {
        1 => format!(
            "ARP, Request who-has {} tell {}, length {}",
            ip(24)?,
            ip(14)?,
            p.len()
        ),
        2 => format!("ARP, Reply {} is-at {mac}, length {}", ip(14)?, p.len()),
        other => format!("ARP, op {other}, length {}", p.len()),
    })
}

fn ipv4(p: &[u8]) -> Option<String> {
    let ihl = usize::from(p.first()? & 0x0f) * 4;
    let total = usize::from(be16(p, 2)?);
    let proto = *p.get(9)?;
    let src: [u8; 4] = array(p, 12)?;
    let dst: [u8; 4] = array(p, 16)?;
    let body = p.get(ihl..total.min(p.len()).max(ihl))?;
    let payload_len = total.saturating_sub(ihl);
    Some(transport(
        "IP",
        &std::net::Ipv4Addr::from(src).to_string(),
        &std::net::Ipv4Addr::from(dst).to_string(),
        proto,
        body,
        payload_len,
    ))
}

fn ipv6(p: &[u8]) -> Option<String> {
    let payload_len = usize::from(be16(p, 4)?);
    let next = *p.get(6)?;
    let src: [u8; 16] = array(p, 8)?;
    let dst: [u8; 16] = array(p, 24)?;
    let body = p.get(40..)?;
    Some(transport(
        "IP6",
        &std::net::Ipv6Addr::from(src).to_string(),
        &std::net::Ipv6Addr::from(dst).to_string(),
        next,
        body,
        payload_len,
    ))
}

/// The transport part of a line; `length` is the IP payload's length.
fn transport(family: &str, src: &str, dst: &str, proto: u8, body: &[u8], length: usize) -> String {
    let ports = || Some((be16(body, 0)?, be16(body, 2)?));
    match (proto, ports()) {
        (6, Some((sp, dp))) => {
            let offset = body.get(12).map_or(20, |b| usize::from(b >> 4) * 4);
            let flags = body.get(13).copied().unwrap_or(0);
            let names: String = [
                (0x02, 'S'),
                (0x01, 'F'),
                (0x04, 'R'),
                (0x08, 'P'),
                (0x10, '.'),
            ]
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, c)| *c)
            .collect();
            format!(
                "{family} {src}.{sp} > {dst}.{dp}: Flags [{}], length {}",
                if names.is_empty() { "none" } else { &names },
                length.saturating_sub(offset)
            )
        }
        (17, Some((sp, dp))) => format!(
            "{family} {src}.{sp} > {dst}.{dp}: UDP, length {}",
            length.saturating_sub(8)
        ),
        (1 | 58, _) => {
            let name = if proto == 1 { "ICMP" } else { "ICMP6" };
            let (t, c) = (
                body.first().copied().unwrap_or(0),
                body.get(1).copied().unwrap_or(0),
            );
            format!("{family} {src} > {dst}: {name} type {t} code {c}, length {length}")
        }
        _ => format!("{family} {src} > {dst}: ip-proto-{proto} {length}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpdump_dd_output_becomes_the_request_program() {
        let text = "{ 0x28, 0, 0, 0x0000000c },\n{ 0x15, 0, 7, 0x00000800 },\n";
        let p = parse_bpf(text).expect("parse");
        assert_eq!(p.len(), 2);
        assert_eq!((p[1].op, p[1].jt, p[1].jf, p[1].k), (0x15, 0, 7, 0x800));
        let e = parse_bpf("udp port 53")
            .expect_err("expression")
            .to_string();
        assert!(e.contains("as tcpdump -dd prints it"), "{e}");
    }

    fn udp_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = u16::try_from(20 + 8 + payload.len()).expect("len");
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[10, 5, 0, 2, 10, 5, 0, 1]);
        f.extend_from_slice(&5353u16.to_be_bytes());
        f.extend_from_slice(&40123u16.to_be_bytes());
        f.extend_from_slice(&u16::try_from(8 + payload.len()).expect("len").to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn reads_a_stream_split_anywhere_and_summarizes() {
        let mut file = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&65536u32.to_le_bytes());
        file.extend_from_slice(&1u32.to_le_bytes());
        let frame = udp_frame(b"hello");
        for secs in [3_723u32, 3_724] {
            file.extend_from_slice(&secs.to_le_bytes());
            file.extend_from_slice(&42u32.to_le_bytes());
            file.extend_from_slice(&u32::try_from(frame.len()).expect("len").to_le_bytes());
            file.extend_from_slice(&u32::try_from(frame.len()).expect("len").to_le_bytes());
            file.extend_from_slice(&frame);
        }
        let mut reader = Reader::default();
        let mut packets = Vec::new();
        for piece in file.chunks(7) {
            reader.push(piece);
            while let Some(p) = reader.next_packet().expect("pcap") {
                packets.push(p);
            }
        }
        assert_eq!(packets.len(), 2);
        assert_eq!(
            packets[0].summary(),
            "01:02:03.000042 IP 10.5.0.2.5353 > 10.5.0.1.40123: UDP, length 5"
        );
        let mut bad = Reader::default();
        bad.push(&[0u8; 24]);
        assert!(bad.next_packet().is_err());
        let mut huge = Reader::default();
        huge.push(&file[..24]);
        huge.push(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        let e = huge.next_packet().expect_err("too long").to_string();
        assert!(e.contains("more than 262144"), "{e}");
    }
}
