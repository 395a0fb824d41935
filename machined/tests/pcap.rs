//! PacketCapture against the real kernel: a capture on loopback, filtered by
//! a program tcpdump compiled, and read back by tcpdump. Needs root
//! (`CAP_NET_RAW`) and tcpdump, as CI has (`scripts/setup` installs it).
//! Only datagrams to ports this test picks are captured, so other traffic
//! on loopback does not matter.

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use machined::pcap::{Capture, Instruction, PcapError};

fn require_root_and_tcpdump() {
    assert!(
        rustix::process::geteuid().is_root(),
        "tests/pcap.rs needs root (packet sockets); run it as root, as CI does"
    );
    assert!(
        Command::new("tcpdump")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "tests/pcap.rs needs tcpdump (Debian package tcpdump; scripts/setup installs it)"
    );
}

/// `expression` compiled by tcpdump for Ethernet frames.
fn compile(expression: &str) -> Vec<Instruction> {
    let out = Command::new("tcpdump")
        .args(["-dd", "-y", "EN10MB", expression])
        .output()
        .expect("tcpdump -dd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    machinery::bpf::parse_tcpdump_dd(&text)
        .expect("tcpdump -dd output")
        .into_iter()
        .map(|i| Instruction {
            code: i.op,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port()
}

/// Captures on `lo` while `send` runs, until `records` packets came.
async fn capture(capture: Capture, records: usize, send: impl Fn()) -> Vec<u8> {
    let mut rx = machined::pcap::start(capture, Path::new("/sys/class/net")).expect("start");
    let header = rx.recv().await.expect("header").expect("header");
    assert_eq!(header.len(), 24, "the header comes first, alone");
    let mut file = header.to_vec();
    send();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&file) < records {
        let chunk = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("packets within 10 s")
            .expect("open")
            .expect("chunk");
        file.extend_from_slice(&chunk);
    }
    file
}

/// Records in a pcap file.
fn count(file: &[u8]) -> usize {
    records(file).len()
}

/// (captured, original, data) of each record.
fn records(file: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let word = |i: usize| u32::from_le_bytes(file[i..i + 4].try_into().expect("4"));
        let kept = word(at + 8);
        let end = at + 16 + kept as usize;
        if end > file.len() {
            break;
        }
        out.push((kept, word(at + 12), file[at + 16..end].to_vec()));
        at = end;
    }
    out
}

#[tokio::test]
async fn loopback_capture_filtered_and_read_by_tcpdump() {
    require_root_and_tcpdump();
    let wanted = free_udp_port();
    let other = free_udp_port();
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let file = capture(
        Capture {
            interface: "lo".into(),
            promiscuous: true,
            snap_len: 65536,
            filter: compile(&format!("udp and dst port {wanted}")),
        },
        3,
        || {
            for i in 0..3 {
                sender
                    .send_to(format!("other-{i}").as_bytes(), ("127.0.0.1", other))
                    .expect("send");
                sender
                    .send_to(format!("pcap-test-{i}").as_bytes(), ("127.0.0.1", wanted))
                    .expect("send");
            }
        },
    )
    .await;

    // The header: classic pcap, Ethernet frames, the snap length asked for.
    assert_eq!(&file[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
    assert_eq!(
        u32::from_le_bytes(file[16..20].try_into().expect("4")),
        65536
    );
    assert_eq!(u32::from_le_bytes(file[20..24].try_into().expect("4")), 1);
    // Each datagram once (loopback's outgoing copies are ignored), and
    // only the filtered port's.
    let got = records(&file);
    assert_eq!(got.len(), 3, "{got:?}");
    for (i, (kept, original, data)) in got.iter().enumerate() {
        let payload = format!("pcap-test-{i}");
        assert_eq!(*kept, *original);
        assert_eq!(*original as usize, 14 + 20 + 8 + payload.len());
        assert!(data.ends_with(payload.as_bytes()), "{data:?}");
    }

    // tcpdump reads the file as a pcap file.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("lo.pcap");
    std::fs::write(&path, &file).expect("write");
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&path)
        .output()
        .expect("tcpdump -r");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for line in lines {
        assert!(
            line.contains(&format!("> 127.0.0.1.{wanted}: UDP, length 11")),
            "{line}"
        );
    }
}

#[tokio::test]
async fn snap_length_cuts_packets_and_keeps_their_length() {
    require_root_and_tcpdump();
    let port = free_udp_port();
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let payload = vec![b'x'; 200];
    let file = capture(
        Capture {
            interface: "lo".into(),
            promiscuous: false,
            snap_len: 50,
            filter: compile(&format!("udp and dst port {port}")),
        },
        1,
        || {
            sender.send_to(&payload, ("127.0.0.1", port)).expect("send");
        },
    )
    .await;
    assert_eq!(u32::from_le_bytes(file[16..20].try_into().expect("4")), 50);
    let got = records(&file);
    assert_eq!(got[0].0, 50);
    assert_eq!(got[0].1, 14 + 20 + 8 + 200);
}

#[tokio::test]
async fn refusals_name_what_was_wrong() {
    require_root_and_tcpdump();
    let start = |interface: &str, filter: Vec<Instruction>| {
        machined::pcap::start(
            Capture {
                interface: interface.into(),
                promiscuous: false,
                snap_len: 1500,
                filter,
            },
            Path::new("/sys/class/net"),
        )
        .map(|_| ())
    };
    let e = start("nosuch0", vec![]).expect_err("no link");
    assert!(matches!(e, PcapError::NotFound(_)), "{e}");
    assert_eq!(e.to_string(), "interface \"nosuch0\" not found");
    // A jump past the end: the kernel's checker refuses it.
    let bad = vec![
        Instruction {
            code: 0x15,
            jt: 5,
            jf: 0,
            k: 0,
        },
        Instruction {
            code: 0x6,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let e = start("lo", bad).expect_err("bad program");
    assert!(matches!(e, PcapError::FilterRefused(_)), "{e}");
    assert!(
        e.to_string()
            .starts_with("the kernel refused the BPF filter"),
        "{e}"
    );
}
