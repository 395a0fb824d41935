//! `talosctl support`: a zip of what a bug report needs, node by node.
//!
//! Upstream's layout: under `<node>/`, `summary` (client and server
//! versions), `dmesg.log`, `controller-runtime.log` (here machined's own
//! log), `mounts`, `devices` (`/proc/bus/pci/devices`), `io` (disk
//! statistics), `processes`, `service-logs/<id>.log` and `<id>.state`, and
//! `resources/<definition>.yaml` for every resource type the node serves,
//! with the spec of sensitive types (the machine config) replaced by
//! `<REDACTED>`. A part that cannot be collected is listed at the end with
//! its error and the rest of the bundle is still written. Nothing is
//! Kubernetes here, so upstream's cluster and pod parts do not exist.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use api::cosi::resource::meta::ResourceDefinitionSpec;
use api::cosi::resource::meta::resource_definition_spec::Sensitivity;
use api::machine::{LogsRequest, ReadRequest};
use prost::Message as _;
use tokio::task::JoinSet;

use crate::cli::{GlobalArgs, SupportArgs};
use crate::client::{self, Client, NodePolicy, Options};
use crate::output::Table;

/// One file of the bundle, before it is collected.
#[derive(Debug, Clone)]
enum Part {
    Summary,
    Dmesg,
    Log(String),
    Mounts,
    Devices,
    Io,
    Processes,
    ServiceState(String),
    Resources(ResourceDefinitionSpec),
}

/// A collected file (`None`: nothing to write, as an empty resource list).
type Collected = anyhow::Result<Option<Vec<u8>>>;

/// Runs `talosctl support`.
///
/// # Errors
/// No node, the output cannot be written, or the operator declined to
/// overwrite it.
pub async fn run(global: &GlobalArgs, args: SupportArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::nodes(NodePolicy::Required)).map_err(|e| {
        if global.nodes.is_empty() {
            anyhow!(
                "please provide at least a single node to gather the debug information from ({e})"
            )
        } else {
            e
        }
    })?;
    let output = args.output.clone();
    if std::path::Path::new(&output).exists() && !confirm_overwrite(&output)? {
        bail!("operation aborted");
    }
    let workers = args.num_workers.max(1);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut errors: Vec<(String, String)> = Vec::new();
    for node_client in client.per_node() {
        let node = node_client.default_node().to_owned();
        let parts = match plan(&node_client).await {
            Ok(parts) => parts,
            Err(e) => {
                errors.push((node, format!("{e:#}")));
                continue;
            }
        };
        let node_client = Arc::new(node_client);
        let limit = Arc::new(tokio::sync::Semaphore::new(workers));
        let mut tasks = JoinSet::new();
        for (path, part) in parts {
            let client = Arc::clone(&node_client);
            let limit = Arc::clone(&limit);
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let result = collect(&client, &part).await;
                (path, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (path, result) = joined.context("a collector panicked")?;
            if args.verbose {
                eprintln!("{node}: collected {path}");
            }
            match result {
                Ok(Some(bytes)) => files.push((format!("{node}/{path}"), bytes)),
                Ok(None) => {}
                Err(e) => errors.push((node.clone(), format!("{path}: {e:#}"))),
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    write_zip(&output, &files)?;
    if !errors.is_empty() {
        eprintln!("Processed with errors:");
        let mut table = Table::new(&["", "SOURCE", "ERROR"]);
        for (source, error) in &errors {
            let mut lines = error.lines();
            table.push(vec![
                String::new(),
                source.clone(),
                lines.next().unwrap_or_default().to_owned(),
            ]);
            for line in lines {
                table.push(vec![String::new(), String::new(), line.trim().to_owned()]);
            }
        }
        eprint!("{}", table.render());
    }
    eprintln!("Support bundle is written to {output}");
    Ok(())
}

fn confirm_overwrite(path: &str) -> anyhow::Result<bool> {
    print!("{path} already exists, overwrite? [y/N]: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim().eq_ignore_ascii_case("y"))
}

/// What to collect from one node: the fixed parts, a log and a state per
/// service, a file per resource type.
async fn plan(client: &Client) -> anyhow::Result<Vec<(String, Part)>> {
    let mut parts = vec![
        ("summary".to_owned(), Part::Summary),
        ("dmesg.log".to_owned(), Part::Dmesg),
        (
            "controller-runtime.log".to_owned(),
            Part::Log("machined".to_owned()),
        ),
        ("mounts".to_owned(), Part::Mounts),
        ("devices".to_owned(), Part::Devices),
        ("io".to_owned(), Part::Io),
        ("processes".to_owned(), Part::Processes),
    ];
    let services = client
        .machine_call(|mut m, r| async move { m.service_list(r).await })
        .await
        .context("listing services")?;
    for reply in services.messages {
        for service in reply.services {
            parts.push((
                format!("service-logs/{}.log", service.id),
                Part::Log(service.id.clone()),
            ));
            parts.push((
                format!("service-logs/{}.state", service.id),
                Part::ServiceState(service.id),
            ));
        }
    }
    let definitions = super::get::list(
        client,
        super::get::META_NAMESPACE,
        super::get::DEFINITION_TYPE,
    )
    .await
    .map_err(|e| client.call_error(e))
    .context("listing resource definitions")?;
    for definition in definitions {
        let id = definition.metadata.map(|m| m.id).unwrap_or_default();
        let spec = definition
            .spec
            .map(|s| ResourceDefinitionSpec::decode(s.proto_spec.as_slice()))
            .transpose()
            .with_context(|| format!("decoding resource definition {id}"))?;
        if let Some(spec) = spec {
            parts.push((format!("resources/{id}.yaml"), Part::Resources(spec)));
        }
    }
    Ok(parts)
}

async fn collect(client: &Client, part: &Part) -> Collected {
    match part {
        Part::Summary => summary(client).await,
        Part::Dmesg => {
            let stream = client
                .call(|channel| {
                    let request = client.request(api::machine::DmesgRequest {
                        follow: false,
                        tail: false,
                    });
                    async move { client::machine(channel).dmesg(request).await }
                })
                .await?;
            drain(client, stream).await.map(Some)
        }
        Part::Log(id) => {
            let stream = client
                .call(|channel| {
                    let request = client.request(LogsRequest {
                        namespace: "system".to_owned(),
                        id: id.clone(),
                        driver: api::common::ContainerDriver::Containerd as i32,
                        follow: false,
                        tail_lines: -1,
                    });
                    async move { client::machine(channel).logs(request).await }
                })
                .await?;
            drain(client, stream).await.map(Some)
        }
        Part::Devices => {
            let stream = client
                .call(|channel| {
                    let request = client.request(ReadRequest {
                        path: "/proc/bus/pci/devices".to_owned(),
                    });
                    async move { client::machine(channel).read(request).await }
                })
                .await?;
            drain(client, stream).await.map(Some)
        }
        Part::Mounts => {
            let reply = client
                .machine_call(|mut m, r| async move { m.mounts(r).await })
                .await?;
            let rows: Vec<_> = ok(client, reply.messages)?
                .into_iter()
                .flat_map(|(node, m)| m.stats.into_iter().map(move |s| (node.clone(), s)))
                .collect();
            Ok(Some(
                super::system::mounts_table(&rows).render().into_bytes(),
            ))
        }
        Part::Io => {
            let reply = client
                .machine_call(|mut m, r| async move { m.disk_stats(r).await })
                .await?;
            let mut table = Table::new(&[
                "NAME",
                "IO_TIME",
                "IO_TIME_WEIGHTED",
                "DISK_WRITE_SECTORS",
                "DISK_READ_SECTORS",
            ]);
            for (_, stats) in ok(client, reply.messages)? {
                for d in stats.devices {
                    table.push(vec![
                        d.name,
                        d.io_time_ms.to_string(),
                        d.io_time_weighted_ms.to_string(),
                        d.write_sectors.to_string(),
                        d.read_sectors.to_string(),
                    ]);
                }
            }
            Ok(Some(table.render().into_bytes()))
        }
        Part::Processes => {
            let reply = client
                .machine_call(|mut m, r| async move { m.processes(r).await })
                .await?;
            let nodes = ok(client, reply.messages)?
                .into_iter()
                .map(|(node, p)| (node, p.processes))
                .collect();
            let table = super::system::processes_table(nodes, crate::cli::ProcessSort::default());
            Ok(Some(table.render().into_bytes()))
        }
        Part::ServiceState(id) => {
            let reply = client
                .machine_call(|mut m, r| async move { m.service_list(r).await })
                .await?;
            let now = std::time::SystemTime::now();
            let mut table = Table::headerless(crate::output::PADDING);
            for (node, list) in ok(client, reply.messages)? {
                for service in list.services.iter().filter(|s| &s.id == id) {
                    for row in super::services::detail_rows(&node, service, now) {
                        table.push(row);
                    }
                }
            }
            Ok(Some(table.render().into_bytes()))
        }
        Part::Resources(spec) => resources(client, spec).await,
    }
}

/// The replies of the one node, or its error.
fn ok<T: client::Reply>(client: &Client, messages: Vec<T>) -> anyhow::Result<Vec<(String, T)>> {
    let results = client.split(messages);
    if let Some((_, error)) = results.failed.first() {
        bail!("{error}");
    }
    Ok(results.ok)
}

async fn drain(
    client: &Client,
    stream: tonic::Streaming<api::common::Data>,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    super::files::drain_data(client, stream, |chunk| {
        out.extend_from_slice(&chunk);
        Ok(true)
    })
    .await?;
    Ok(out)
}

async fn summary(client: &Client) -> Collected {
    let reply = client
        .machine_call(|mut m, r| async move { m.version(r).await })
        .await?;
    let mut text = format!(
        "Client:\n{}",
        super::version::long_version(&super::version::client_version())
    );
    text.push_str("Server:\n");
    for (_, version) in ok(client, reply.messages)? {
        text.push_str(&super::version::long_version(
            &version.version.unwrap_or_default(),
        ));
    }
    Ok(Some(text.into_bytes()))
}

/// Every resource of the type, one YAML document each; the spec of a
/// sensitive type is redacted. Nothing when there is none.
async fn resources(client: &Client, spec: &ResourceDefinitionSpec) -> Collected {
    let items = super::get::list(client, &spec.default_namespace, &spec.resource_type)
        .await
        .map_err(|e| client.call_error(e))?;
    if items.is_empty() {
        return Ok(None);
    }
    let sensitive = spec.sensitivity == Sensitivity::Sensitive as i32;
    let mut text = String::new();
    for item in &items {
        let mut doc = super::get::document(client.default_node(), None, item);
        if sensitive && let serde_yaml_ng::Value::Mapping(map) = &mut doc {
            map.insert(
                serde_yaml_ng::Value::String("spec".to_owned()),
                serde_yaml_ng::Value::String("<REDACTED>".to_owned()),
            );
        }
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(&doc).context("rendering YAML")?);
    }
    Ok(Some(text.into_bytes()))
}

fn write_zip(path: &str, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {path}"))?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (name, bytes) in files {
        zip.start_file(name.as_str(), options)
            .with_context(|| format!("writing {name} into {path}"))?;
        zip.write_all(bytes)
            .with_context(|| format!("writing {name} into {path}"))?;
    }
    zip.finish().with_context(|| format!("writing {path}"))?;
    Ok(())
}
