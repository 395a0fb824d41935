//! `talosctl logs <id>` and `talosctl dmesg`: byte streams to stdout.
//!
//! Both print every line as `<node>: <line>`, one node or several, as
//! upstream's talosctl does (the node is the one named, or the endpoint
//! without `-n`).

use std::collections::HashMap;

use api::common::ContainerDriver;
use api::machine::{DmesgRequest, LogsRequest};

use crate::cli::{DmesgArgs, GlobalArgs, LogsArgs};
use crate::client::{self, Client, Options};
use crate::output::{self, Reported};

/// Splits chunks of nodes' streams into lines prefixed with the node.
#[derive(Debug, Default)]
pub struct LinePrefixer {
    pending: HashMap<String, Vec<u8>>,
}

impl LinePrefixer {
    /// The bytes to print for a chunk from `node`: its complete lines (the
    /// rest waits for the next chunk of that node).
    pub fn feed(&mut self, node: &str, chunk: &[u8]) -> Vec<u8> {
        let buffer = self.pending.entry(node.to_owned()).or_default();
        buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(newline) = buffer.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = buffer.drain(..=newline).collect();
            out.extend_from_slice(node.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&line);
        }
        out
    }

    /// Whatever is left (unterminated last lines), each with a newline.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut nodes: Vec<String> = self.pending.keys().cloned().collect();
        nodes.sort();
        for node in nodes {
            if let Some(rest) = self.pending.remove(&node)
                && !rest.is_empty()
            {
                out.extend_from_slice(node.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(&rest);
                out.push(b'\n');
            }
        }
        out
    }
}

/// Copies a `common.Data` stream to stdout through `prefixer`; metadata
/// errors are printed as `error: <node>: <cause>` and fail the command at
/// the end.
async fn pump(
    client: &Client,
    mut stream: tonic::Streaming<api::common::Data>,
    mut prefixer: LinePrefixer,
) -> anyhow::Result<()> {
    let mut failed = false;
    loop {
        match stream.message().await {
            Ok(Some(data)) => {
                let node = client.node_of(data.metadata.as_ref());
                if let Some(error) = client::node_error(data.metadata.as_ref()) {
                    eprintln!("error: {node}: {error}");
                    failed = true;
                    continue;
                }
                let bytes = prefixer.feed(&node, &data.bytes);
                if !bytes.is_empty() {
                    output::out_bytes(&bytes)?;
                }
            }
            Ok(None) => break,
            Err(status) => {
                let rest = prefixer.finish();
                if !rest.is_empty() {
                    output::out_bytes(&rest)?;
                }
                return Err(client.status_error(&status));
            }
        }
    }
    let rest = prefixer.finish();
    if !rest.is_empty() {
        output::out_bytes(&rest)?;
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

/// Runs `talosctl logs`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn logs(global: &GlobalArgs, args: LogsArgs) -> anyhow::Result<()> {
    if args.kubernetes {
        anyhow::bail!(
            "-k/--kubernetes: this OS runs no containerd or Kubernetes; `talosctl logs <service>` reads the node's own services (`talosctl services` lists them)"
        );
    }
    let client = Client::connect(global, Options::default())?;
    let (namespace, driver) = ("system", ContainerDriver::Containerd);
    let request = LogsRequest {
        namespace: namespace.to_owned(),
        id: args.id,
        driver: driver as i32,
        follow: args.follow,
        tail_lines: args.tail,
    };
    let stream = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::machine(channel).logs(request).await }
        })
        .await?;
    pump(&client, stream, LinePrefixer::default()).await
}

/// Runs `talosctl dmesg`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn dmesg(global: &GlobalArgs, args: &DmesgArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let request = DmesgRequest {
        follow: args.follow,
        tail: args.tail,
    };
    let stream = client
        .call(|channel| {
            let request = client.request(request);
            async move { client::machine(channel).dmesg(request).await }
        })
        .await?;
    pump(&client, stream, LinePrefixer::default()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_whole_lines_per_node() {
        let mut prefixer = LinePrefixer::default();
        assert_eq!(prefixer.feed("a", b"one\ntw"), b"a: one\n");
        assert_eq!(prefixer.feed("b", b"x\n"), b"b: x\n");
        assert_eq!(prefixer.feed("a", b"o\nthree"), b"a: two\n");
        assert_eq!(prefixer.finish(), b"a: three\n");
    }
}
