//! Files on the node: `list` (ls), `read` (cat), `copy` (cp), `usage` (du).

use std::io::Read;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};
use api::machine::{CopyRequest, DiskUsageRequest, ListRequest, ReadRequest, list_request};
use bytes::Bytes;

use crate::cli::{CopyArgs, GlobalArgs, ListArgs, ReadArgs, UsageArgs};
use crate::client::{self, Client, NodePolicy, Options};
use crate::output::{self, Reported, Table};

/// `--type` letters (`f`, `d`, `l`/`L`, possibly several per value) as
/// request types.
///
/// # Errors
/// An unknown letter.
pub fn parse_types(values: &[String]) -> anyhow::Result<Vec<i32>> {
    let mut types = Vec::new();
    for value in values {
        for letter in value.chars() {
            let kind = match letter {
                'f' => list_request::Type::Regular,
                'd' => list_request::Type::Directory,
                'l' | 'L' => list_request::Type::Symlink,
                other => bail!("invalid file type: {other}"),
            };
            types.push(kind as i32);
        }
    }
    Ok(types)
}

/// The SELinux label of a listed file (its `security.selinux` xattr).
#[must_use]
pub fn selinux_label(info: &api::machine::FileInfo) -> String {
    info.xattrs
        .iter()
        .find(|xattr| xattr.name == "security.selinux")
        .map(|xattr| {
            String::from_utf8_lossy(&xattr.data)
                .trim_matches(['\0', '\n'])
                .to_owned()
        })
        .unwrap_or_default()
}

/// One `list -l` row: NODE, MODE, UID, GID, SIZE(B), LASTMOD, LABEL, NAME.
#[must_use]
pub fn long_row(
    node: &str,
    info: &api::machine::FileInfo,
    humanize: bool,
    now: SystemTime,
) -> Vec<String> {
    let mut name = info.relative_name.clone();
    if !info.link.is_empty() {
        name.push_str(" -> ");
        name.push_str(&info.link);
    }
    let size = if humanize {
        output::humanize_bytes(u64::try_from(info.size).unwrap_or(0))
    } else {
        info.size.to_string()
    };
    let modified = if humanize {
        let at = output::timestamp_to_system(&prost_types::Timestamp {
            seconds: info.modified,
            nanos: 0,
        });
        output::rel_time(at, now, "ago", "from now")
    } else {
        output::ls_time(info.modified, now)
    };
    vec![
        node.to_owned(),
        output::go_file_mode(info.mode),
        info.uid.to_string(),
        info.gid.to_string(),
        size,
        modified,
        selinux_label(info),
        name,
    ]
}

/// Runs `talosctl list`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn list(global: &GlobalArgs, args: ListArgs) -> anyhow::Result<()> {
    let types = parse_types(&args.types)?;
    let client = Client::connect(global, Options::default())?;
    // As upstream: --recurse means unlimited depth; a depth above one
    // implies recursion.
    let depth = if args.recurse { -1 } else { args.depth };
    let request = ListRequest {
        root: args.path,
        recurse: depth > 1 || args.recurse,
        recursion_depth: depth,
        types,
        report_xattrs: args.long,
    };
    let mut stream = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::machine(channel).list(request).await }
        })
        .await?;

    let multiple = client.multiple_nodes();
    let now = SystemTime::now();
    let mut table = if args.long {
        Table::new(&[
            "NODE", "MODE", "UID", "GID", "SIZE(B)", "LASTMOD", "LABEL", "NAME",
        ])
    } else {
        Table::new(&["NODE", "NAME"])
    };
    let mut failed = false;
    let result = loop {
        match stream.message().await {
            Ok(Some(info)) => {
                let node = client.node_of(info.metadata.as_ref());
                if let Some(error) = client::node_error(info.metadata.as_ref()) {
                    eprintln!("error: {node}: {error}");
                    failed = true;
                    continue;
                }
                if !info.error.is_empty() {
                    eprintln!(
                        "error: {node}: error reading file {}: {}",
                        info.name, info.error
                    );
                    failed = true;
                    continue;
                }
                if args.long {
                    table.push(long_row(&node, &info, args.humanize, now));
                } else if multiple {
                    table.push(vec![node, info.relative_name]);
                } else {
                    // One node: plain names as they arrive, as upstream.
                    output::out(&format!("{}\n", info.relative_name))?;
                }
            }
            Ok(None) => break Ok(()),
            Err(status) => break Err(client.status_error(&status)),
        }
    };
    // The header only comes with the first entry, as upstream.
    if table.len() > 1 {
        table.print()?;
    }
    result?;
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

/// Collects a single node's `common.Data` stream, calling `sink` per chunk.
pub(crate) async fn drain_data(
    client: &Client,
    mut stream: tonic::Streaming<api::common::Data>,
    mut sink: impl FnMut(Bytes) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    loop {
        match stream.message().await {
            Ok(Some(data)) => {
                if let Some(error) = client::node_error(data.metadata.as_ref()) {
                    let node = client.node_of(data.metadata.as_ref());
                    bail!("{node}: {error}");
                }
                if !sink(data.bytes)? {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(status) => return Err(client.status_error(&status)),
        }
    }
}

/// Runs `talosctl read`.
///
/// # Errors
/// The client setup or the call failed.
pub async fn read(global: &GlobalArgs, args: ReadArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::nodes(NodePolicy::Single("read")))?;
    let request = ReadRequest { path: args.path };
    let stream = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::machine(channel).read(request).await }
        })
        .await?;
    drain_data(&client, stream, |chunk| {
        output::out_bytes(&chunk)?;
        Ok(true)
    })
    .await
}

/// Reads bytes handed over from the async side (the gRPC stream) on a
/// blocking thread (the tar extractor).
#[derive(Debug)]
struct ChannelReader {
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        let chunk = self.current.split_to(n);
        buf[..n].copy_from_slice(&chunk);
        Ok(n)
    }
}

/// Runs `talosctl copy`.
///
/// # Errors
/// The client setup, the call or the extraction failed.
pub async fn copy(global: &GlobalArgs, args: CopyArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::nodes(NodePolicy::Single("copy")))?;
    let request = CopyRequest {
        root_path: args.src,
    };
    let mut stream = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::machine(channel).copy(request).await }
        })
        .await?;

    if args.dest == "-" {
        return drain_data(&client, stream, |chunk| {
            output::out_bytes(&chunk)?;
            Ok(true)
        })
        .await;
    }

    let dest = PathBuf::from(&args.dest);
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    let target = dest.clone();
    let extractor = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let reader = ChannelReader {
            chunks: receiver,
            current: Bytes::new(),
        };
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
        archive.set_preserve_permissions(true);
        archive.set_overwrite(true);
        archive.unpack(target)
    });

    // Chunks go to the extractor as they arrive (the channel is bounded, so
    // a slow disk slows the stream down rather than filling memory).
    let mut stream_result: anyhow::Result<()> = Ok(());
    loop {
        match stream.message().await {
            Ok(Some(data)) => {
                if let Some(error) = client::node_error(data.metadata.as_ref()) {
                    let node = client.node_of(data.metadata.as_ref());
                    stream_result = Err(anyhow!("{node}: {error}"));
                    break;
                }
                if sender.send(data.bytes).await.is_err() {
                    // The extractor stopped (finished or failed).
                    break;
                }
            }
            Ok(None) => break,
            Err(status) => {
                stream_result = Err(client.status_error(&status));
                break;
            }
        }
    }
    drop(sender);
    let extracted = extractor
        .await
        .map_err(|err| anyhow!("extracting into {}: {err}", dest.display()))?;
    stream_result?;
    extracted.with_context(|| format!("extracting into {}", dest.display()))?;
    Ok(())
}

/// Runs `talosctl usage`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn usage(global: &GlobalArgs, args: UsageArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let paths = if args.paths.is_empty() {
        vec!["/".to_owned()]
    } else {
        args.paths
    };
    let request = DiskUsageRequest {
        recursion_depth: args.depth.saturating_add(1),
        all: args.all,
        threshold: args.threshold,
        paths,
    };
    let mut stream = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::machine(channel).disk_usage(request).await }
        })
        .await?;
    let multiple = client.multiple_nodes();
    let mut table = if multiple {
        Table::new(&["NODE", "SIZE", "NAME"])
    } else {
        Table::new(&["SIZE", "NAME"])
    };
    let mut failed = false;
    let result = loop {
        match stream.message().await {
            Ok(Some(info)) => {
                let node = client.node_of(info.metadata.as_ref());
                if let Some(error) = client::node_error(info.metadata.as_ref()) {
                    eprintln!("error: {node}: {error}");
                    failed = true;
                    continue;
                }
                if !info.error.is_empty() {
                    eprintln!("{node}: {}", info.error);
                    failed = true;
                    continue;
                }
                let size = if args.humanize {
                    output::humanize_bytes(u64::try_from(info.size).unwrap_or(0))
                } else {
                    info.size.to_string()
                };
                if multiple {
                    table.push(vec![node, size, info.relative_name]);
                } else {
                    table.push(vec![size, info.relative_name]);
                }
            }
            Ok(None) => break Ok(()),
            Err(status) => break Err(client.status_error(&status)),
        }
    };
    if table.len() > 1 {
        table.print()?;
    }
    result?;
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn types_from_letters() {
        let types = parse_types(&["f".to_owned(), "dl".to_owned(), "L".to_owned()]).expect("valid");
        assert_eq!(
            types,
            [
                list_request::Type::Regular as i32,
                list_request::Type::Directory as i32,
                list_request::Type::Symlink as i32,
                list_request::Type::Symlink as i32,
            ]
        );
        let err = parse_types(&["x".to_owned()]).expect_err("invalid");
        assert_eq!(err.to_string(), "invalid file type: x");
    }

    #[test]
    fn long_rows() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let info = api::machine::FileInfo {
            name: "/etc/hosts".into(),
            relative_name: "hosts".into(),
            size: 120,
            mode: 0o644,
            modified: 1_699_000_000,
            uid: 0,
            gid: 0,
            ..Default::default()
        };
        assert_eq!(
            long_row("10.5.0.2", &info, false, now),
            [
                "10.5.0.2",
                "-rw-r--r--",
                "0",
                "0",
                "120",
                "Nov  3 08:26:40",
                "",
                "hosts"
            ]
        );
        let labelled = api::machine::FileInfo {
            xattrs: vec![api::machine::Xattr {
                name: "security.selinux".into(),
                data: b"system_u:object_r:etc_t:s0\0".to_vec(),
            }],
            ..info
        };
        assert_eq!(
            long_row("n", &labelled, false, now)[6],
            "system_u:object_r:etc_t:s0"
        );
        let link = api::machine::FileInfo {
            relative_name: "localtime".into(),
            link: "/usr/share/zoneinfo/UTC".into(),
            mode: (1 << 27) | 0o777,
            modified: 1_699_000_000,
            ..Default::default()
        };
        let row = long_row("n", &link, false, now);
        assert_eq!(row[1], "Lrwxrwxrwx");
        assert_eq!(row[7], "localtime -> /usr/share/zoneinfo/UTC");
    }

    #[test]
    fn channel_reader_reassembles_chunks() {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        sender.try_send(Bytes::from_static(b"hel")).expect("send");
        sender.try_send(Bytes::from_static(b"lo")).expect("send");
        drop(sender);
        let mut reader = ChannelReader {
            chunks: receiver,
            current: Bytes::new(),
        };
        let mut text = String::new();
        reader.read_to_string(&mut text).expect("read");
        assert_eq!(text, "hello");
    }
}
