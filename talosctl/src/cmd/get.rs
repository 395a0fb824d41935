//! `talosctl get`: a node's resources through `cosi.resource.State`.
//!
//! As upstream: the type name is resolved against the node's
//! `ResourceDefinitions` (canonical type or any alias, any case), then each
//! node is asked in turn with `node` metadata (COSI calls are one-to-one).
//! Output is a table with the definition's extra columns, YAML documents or
//! JSON objects; `--watch` prints the changes as they come.

use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};
use api::cosi::resource as pb;
use api::cosi::resource::meta::ResourceDefinitionSpec;
use api::cosi::resource::state_client::StateClient;
use prost::Message as _;
use serde_yaml_ng::Value;
use tonic::transport::Channel;

use crate::cli::{GetArgs, GetOutput, GlobalArgs};
use crate::client::{self, CallError, Client, Options};
use crate::output::{self, StreamTable};

/// Namespace of the resource definitions.
pub const META_NAMESPACE: &str = "meta";
/// Type of the resource definitions.
pub const DEFINITION_TYPE: &str = "ResourceDefinitions.meta.cosi.dev";

/// A State client with upstream's message limits.
#[must_use]
pub fn state(channel: Channel) -> StateClient<Channel> {
    StateClient::new(channel)
        .max_decoding_message_size(api::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(api::MAX_MESSAGE_SIZE)
}

/// A resource type as a node defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind {
    /// Canonical type.
    pub type_: String,
    /// Singular name for tables.
    pub display: String,
    /// Where its resources live.
    pub namespace: String,
    /// Extra columns: (header, JSONPath).
    pub columns: Vec<(String, String)>,
}

/// Picks the definition `name` means: the canonical type or one of its
/// aliases, ignoring case.
///
/// # Errors
/// No definition matches, or several do.
pub fn resolve_kind(definitions: &[ResourceDefinitionSpec], name: &str) -> anyhow::Result<Kind> {
    let wanted = name.to_lowercase();
    let matches: Vec<&ResourceDefinitionSpec> = definitions
        .iter()
        .filter(|d| {
            d.resource_type.to_lowercase() == wanted
                || d.all_aliases.iter().any(|a| a.to_lowercase() == wanted)
        })
        .collect();
    match matches.as_slice() {
        [] => bail!("resource {name:?} is not registered (`talosctl get rd` lists the types)"),
        [one] => Ok(Kind {
            type_: one.resource_type.clone(),
            display: one.display_type.clone(),
            namespace: one.default_namespace.clone(),
            columns: one
                .print_columns
                .iter()
                .map(|c| (c.name.clone(), c.json_path.clone()))
                .collect(),
        }),
        many => bail!(
            "resource type {name:?} is ambiguous: {:?}",
            many.iter().map(|d| &d.resource_type).collect::<Vec<_>>()
        ),
    }
}

/// Reads the value a simple JSONPath template selects from `spec`:
/// `{@}` (the whole spec) or `{.a.b}`, with `[n]` for list items.
/// Anything it cannot follow yields an empty cell, as upstream prints.
#[must_use]
pub fn json_path(spec: &Value, template: &str) -> String {
    let path = template
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(template)
        .trim();
    let mut value = spec;
    if path != "@" {
        for part in path
            .trim_start_matches('.')
            .split('.')
            .filter(|p| !p.is_empty())
        {
            let (key, index) = match part.split_once('[') {
                Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            if !key.is_empty() {
                match value.get(key) {
                    Some(v) => value = v,
                    None => return String::new(),
                }
            }
            if let Some(i) = index {
                match value.get(i) {
                    Some(v) => value = v,
                    None => return String::new(),
                }
            }
        }
    }
    scalar_text(value)
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// The spec of a resource as YAML data (the YAML spec as sent).
fn spec_value(resource: &pb::Resource) -> Value {
    resource
        .spec
        .as_ref()
        .map(|s| {
            serde_yaml_ng::from_str(&s.yaml_spec).unwrap_or(Value::String(s.yaml_spec.clone()))
        })
        .unwrap_or(Value::Null)
}

fn time_text(ts: Option<&prost_types::Timestamp>) -> Option<Value> {
    ts.and_then(|t| SystemTime::try_from(*t).ok())
        .map(|t| Value::String(output::rfc3339(t)))
}

/// The document `-o yaml` and `-o json` print for one resource.
#[must_use]
pub fn document(node: &str, event: Option<&str>, resource: &pb::Resource) -> Value {
    let md = resource.metadata.clone().unwrap_or_default();
    let mut metadata = serde_yaml_ng::Mapping::new();
    let mut put = |k: &str, v: Value| {
        metadata.insert(Value::String(k.to_owned()), v);
    };
    put("namespace", Value::String(md.namespace));
    put("type", Value::String(md.r#type));
    put("id", Value::String(md.id));
    // A number, as upstream writes it (`version: 2`, `"version": 2`).
    put(
        "version",
        md.version
            .parse::<u64>()
            .map_or(Value::String(md.version), Value::from),
    );
    put("owner", Value::String(md.owner));
    put("phase", Value::String(md.phase));
    for (key, at) in [("created", &md.created), ("updated", &md.updated)] {
        if let Some(text) = time_text(at.as_ref()) {
            put(key, text);
        }
    }
    for (key, map) in [("labels", md.labels), ("annotations", md.annotations)] {
        if map.is_empty() {
            continue;
        }
        let mut pairs: Vec<_> = map.into_iter().collect();
        pairs.sort();
        put(
            key,
            Value::Mapping(
                pairs
                    .into_iter()
                    .map(|(k, v)| (Value::String(k), Value::String(v)))
                    .collect(),
            ),
        );
    }
    if !md.finalizers.is_empty() {
        put(
            "finalizers",
            Value::Sequence(md.finalizers.into_iter().map(Value::String).collect()),
        );
    }
    let mut doc = serde_yaml_ng::Mapping::new();
    doc.insert("node".into(), Value::String(node.to_owned()));
    if let Some(event) = event {
        doc.insert("event".into(), Value::String(event.to_owned()));
    }
    doc.insert("metadata".into(), Value::Mapping(metadata));
    doc.insert("spec".into(), spec_value(resource));
    Value::Mapping(doc)
}

/// How events and resources are printed.
struct Printer {
    format: GetOutput,
    kind: Kind,
    watch: bool,
    /// Watch tables are printed row by row, widening as they go.
    table: StreamTable,
    header_done: bool,
    /// Other tables are aligned once all rows are in.
    rows: Vec<Vec<String>>,
    documents: usize,
}

impl Printer {
    fn new(format: GetOutput, kind: Kind, watch: bool) -> Printer {
        Printer {
            format,
            kind,
            watch,
            table: StreamTable::new(3),
            header_done: false,
            rows: Vec::new(),
            documents: 0,
        }
    }

    fn header(&self) -> Vec<String> {
        let mut cells = vec!["NODE".to_owned()];
        if self.watch {
            cells.push("*".to_owned());
        }
        cells.extend(["NAMESPACE", "TYPE", "ID", "VERSION"].map(str::to_owned));
        cells.extend(
            self.kind
                .columns
                .iter()
                .map(|(name, _)| name.to_uppercase()),
        );
        cells
    }

    fn row(
        &self,
        node: &str,
        event: Option<pb::EventType>,
        resource: &pb::Resource,
    ) -> Vec<String> {
        let md = resource.metadata.clone().unwrap_or_default();
        let mut cells = vec![node.to_owned()];
        if self.watch {
            let mark = match event {
                Some(pb::EventType::Created) => "+",
                Some(pb::EventType::Destroyed) => "-",
                _ => " ",
            };
            cells.push(mark.to_owned());
        }
        cells.extend([md.namespace, self.kind.display.clone(), md.id, md.version]);
        let spec = spec_value(resource);
        cells.extend(
            self.kind
                .columns
                .iter()
                .map(|(_, path)| json_path(&spec, path)),
        );
        cells
    }

    /// Text for one resource (or event).
    fn render(
        &mut self,
        node: &str,
        event: Option<pb::EventType>,
        resource: &pb::Resource,
    ) -> anyhow::Result<String> {
        let event_name = event.map(|e| e.as_str_name().to_lowercase());
        Ok(match &self.format {
            GetOutput::Table if !self.watch => {
                self.rows.push(self.row(node, event, resource));
                String::new()
            }
            GetOutput::Table => {
                let mut text = String::new();
                if !self.header_done {
                    self.header_done = true;
                    text.push_str(&self.table.line(&self.header()));
                }
                text.push_str(&self.table.line(&self.row(node, event, resource)));
                text
            }
            GetOutput::Yaml => {
                let doc = document(node, event_name.as_deref(), resource);
                let mut text = String::new();
                if self.documents > 0 {
                    text.push_str("---\n");
                }
                self.documents += 1;
                text.push_str(&serde_yaml_ng::to_string(&doc).context("rendering YAML")?);
                text
            }
            GetOutput::JsonPath(template) => {
                let doc = document(node, event_name.as_deref(), resource);
                let json: serde_json::Value =
                    serde_json::to_value(&doc).context("rendering JSON")?;
                template.render(&json).map_err(|e| {
                    anyhow!(
                        "error finding result for jsonpath {:?}: {e}",
                        template.source()
                    )
                })?
            }
            GetOutput::Json => {
                let doc = document(node, event_name.as_deref(), resource);
                let json: serde_json::Value =
                    serde_json::to_value(&doc).context("rendering JSON")?;
                let mut text = output::to_json_indent4(&json).context("rendering JSON")?;
                text.push('\n');
                text
            }
        })
    }

    /// The table collected so far (a header alone when it has no rows),
    /// or the header of a watch table.
    fn table_text(&mut self) -> String {
        if !matches!(self.format, GetOutput::Table) || self.header_done {
            return String::new();
        }
        self.header_done = true;
        if self.watch {
            return self.table.line(&self.header());
        }
        let mut rows = vec![self.header()];
        rows.append(&mut self.rows);
        output::render_rows(&rows, 3)
    }
}

/// Lists every resource definition of the node `client` targets.
///
/// # Errors
/// The call failed, or a definition does not decode.
pub async fn definitions(client: &Client) -> Result<Vec<ResourceDefinitionSpec>, CallError> {
    list(client, META_NAMESPACE, DEFINITION_TYPE)
        .await?
        .into_iter()
        .filter_map(|r| r.spec)
        .map(|spec| {
            ResourceDefinitionSpec::decode(spec.proto_spec.as_slice())
                .map_err(|e| CallError::Status(tonic::Status::internal(e.to_string())))
        })
        .collect()
}

/// Every resource of `type_` in `namespace` on the node `client` targets.
///
/// # Errors
/// The call or the stream failed.
pub async fn list(
    client: &Client,
    namespace: &str,
    type_: &str,
) -> Result<Vec<pb::Resource>, CallError> {
    let mut stream = client
        .try_call(|channel| {
            let request = client.request(pb::ListRequest {
                namespace: namespace.to_owned(),
                r#type: type_.to_owned(),
                options: None,
            });
            async move { state(channel).list(request).await }
        })
        .await?;
    let mut out = Vec::new();
    while let Some(reply) = stream.message().await.map_err(CallError::Status)? {
        out.extend(reply.resource);
    }
    Ok(out)
}

/// The resource `id` of `type_` in `namespace` on the node `client`
/// targets (`None` only if the node answers without one).
///
/// # Errors
/// The call failed (NotFound when there is no such resource).
pub async fn get_one(
    client: &Client,
    namespace: &str,
    type_: &str,
    id: &str,
) -> Result<Option<pb::Resource>, CallError> {
    let reply = client
        .try_call(|channel| {
            let request = client.request(pb::GetRequest {
                namespace: namespace.to_owned(),
                r#type: type_.to_owned(),
                id: id.to_owned(),
                options: None,
            });
            async move { state(channel).get(request).await }
        })
        .await?;
    Ok(reply.resource)
}

/// Runs `talosctl get`.
///
/// # Errors
/// The type is unknown, the client setup or a call failed, or a node
/// failed (reported after the others are printed).
pub async fn get(global: &GlobalArgs, args: GetArgs) -> anyhow::Result<()> {
    let client = Client::connect(
        global,
        Options {
            insecure: args.insecure,
            ..Options::default()
        },
    )?;
    let nodes = client.per_node();
    let first = nodes.first().ok_or_else(|| anyhow!("no node to ask"))?;
    let kind = match definitions(first).await {
        Ok(defs) => resolve_kind(&defs, &args.resource)?,
        Err(err) => return Err(first.call_error(err)),
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| kind.namespace.clone());
    let mut printer = Printer::new(args.output.clone(), kind.clone(), args.watch);
    if args.watch {
        return watch(&nodes, &kind, &namespace, args.id.as_deref(), &mut printer).await;
    }
    let mut failed = Vec::new();
    let mut text = String::new();
    for node_client in &nodes {
        let node = node_client.default_node().to_owned();
        match read(node_client, &kind, &namespace, args.id.as_deref()).await {
            Ok(resources) => {
                for resource in &resources {
                    text.push_str(&printer.render(&node, None, resource)?);
                }
            }
            Err(CallError::Status(status)) => {
                failed.push((node, client::rpc_error_text(&status)));
            }
            // No endpoint answers: the nodes after this one cannot be
            // reached either; what the others said is still printed.
            Err(err @ CallError::Transport(_)) => {
                text.push_str(&printer.table_text());
                output::out(&text)?;
                return Err(node_client.call_error(err));
            }
        }
    }
    text.push_str(&printer.table_text());
    output::out(&text)?;
    client::report(&failed)
}

/// One node's resources: the one named, or all of the type.
async fn read(
    client: &Client,
    kind: &Kind,
    namespace: &str,
    id: Option<&str>,
) -> Result<Vec<pb::Resource>, CallError> {
    match id {
        Some(id) => Ok(get_one(client, namespace, &kind.type_, id)
            .await?
            .into_iter()
            .collect()),
        None => list(client, namespace, &kind.type_).await,
    }
}

/// Prints the changes on every node until interrupted or a node's watch
/// ends.
async fn watch(
    nodes: &[Client],
    kind: &Kind,
    namespace: &str,
    id: Option<&str>,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, anyhow::Result<pb::Event>)>(64);
    let mut tasks = tokio::task::JoinSet::new();
    for node_client in nodes {
        let mut stream = node_client
            .call(|channel| {
                let request = node_client.request(pb::WatchRequest {
                    namespace: namespace.to_owned(),
                    r#type: kind.type_.clone(),
                    id: id.map(str::to_owned),
                    options: Some(pb::WatchOptions {
                        bootstrap_contents: id.is_none(),
                        ..pb::WatchOptions::default()
                    }),
                    api_version: 1,
                });
                async move { state(channel).watch(request).await }
            })
            .await?;
        let node = node_client.default_node().to_owned();
        let error_client = node_client.clone();
        let tx = tx.clone();
        tasks.spawn(async move {
            loop {
                let item = match stream.message().await {
                    Ok(Some(reply)) => {
                        for event in reply.event {
                            if tx.send((node.clone(), Ok(event))).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    Ok(None) => Err(anyhow!("{node}: the watch ended")),
                    Err(status) => Err(error_client.status_error(&status)),
                };
                let _ = tx.send((node.clone(), item)).await;
                return;
            }
        });
    }
    drop(tx);
    output::out(&printer.table_text())?;
    while let Some((node, event)) = rx.recv().await {
        let event = event?;
        let kind = event.event_type();
        let Some(resource) = event.resource else {
            continue;
        };
        match kind {
            pb::EventType::Created | pb::EventType::Updated | pb::EventType::Destroyed => {
                output::out(&printer.render(&node, Some(kind), &resource)?)?;
            }
            pb::EventType::Errored => {
                bail!("{node}: {}", event.error.unwrap_or_default());
            }
            pb::EventType::Bootstrapped | pb::EventType::Noop => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::cosi::resource::meta::resource_definition_spec::PrintColumn;

    fn definition(type_: &str, aliases: &[&str]) -> ResourceDefinitionSpec {
        ResourceDefinitionSpec {
            resource_type: type_.to_owned(),
            display_type: type_.split('.').next().unwrap_or_default().to_owned(),
            default_namespace: "runtime".to_owned(),
            aliases: Vec::new(),
            all_aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
            print_columns: vec![PrintColumn {
                name: "Value".to_owned(),
                json_path: "{.value}".to_owned(),
            }],
            sensitivity: 0,
        }
    }

    #[test]
    fn kinds_resolve_by_type_or_alias_and_ambiguity_is_refused() {
        let defs = vec![
            definition("MetaKeys.runtime.talos.dev", &["metakeys", "meta", "mk"]),
            definition("Services.v1alpha1.talos.dev", &["services", "svc", "mk"]),
        ];
        let kind = resolve_kind(&defs, "META").expect("alias");
        assert_eq!(kind.type_, "MetaKeys.runtime.talos.dev");
        assert_eq!(kind.columns, [("Value".to_owned(), "{.value}".to_owned())]);
        let kind = resolve_kind(&defs, "services.v1alpha1.talos.dev").expect("type");
        assert_eq!(kind.type_, "Services.v1alpha1.talos.dev");
        let err = resolve_kind(&defs, "nosuch")
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("\"nosuch\" is not registered"), "{err}");
        let err = resolve_kind(&defs, "mk")
            .expect_err("ambiguous")
            .to_string();
        assert!(err.contains("ambiguous"), "{err}");
    }

    #[test]
    fn json_paths_pick_values_and_blank_what_is_missing() {
        let spec: Value =
            serde_yaml_ng::from_str("value: x\nstatus:\n  ready: true\n  list: [a, b]\nn: 3\n")
                .expect("yaml");
        assert_eq!(json_path(&spec, "{.value}"), "x");
        assert_eq!(json_path(&spec, "{.status.ready}"), "true");
        assert_eq!(json_path(&spec, "{.status.list[1]}"), "b");
        assert_eq!(json_path(&spec, "{.n}"), "3");
        assert_eq!(json_path(&spec, "{.missing.deeper}"), "");
        assert_eq!(json_path(&Value::String("worker".into()), "{@}"), "worker");
    }

    #[test]
    fn documents_carry_node_metadata_and_the_parsed_spec() {
        let resource = pb::Resource {
            metadata: Some(pb::Metadata {
                namespace: "runtime".into(),
                r#type: "MetaKeys.runtime.talos.dev".into(),
                id: "0x0c".into(),
                version: "2".into(),
                owner: "machined".into(),
                phase: "running".into(),
                created: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 0,
                }),
                finalizers: vec!["network.LinkStatusController".into()],
                annotations: [("note".to_owned(), "x".to_owned())].into(),
                ..pb::Metadata::default()
            }),
            spec: Some(pb::Spec {
                proto_spec: Vec::new(),
                yaml_spec: "value: hello\n".into(),
            }),
        };
        let text = serde_yaml_ng::to_string(&document("10.5.0.2", Some("created"), &resource))
            .expect("yaml");
        assert!(
            text.starts_with("node: 10.5.0.2\nevent: created\nmetadata:\n"),
            "{text}"
        );
        assert!(text.contains("  id: '0x0c'\n"), "{text}");
        // The version is a number, as upstream writes it; annotations and
        // finalizers follow the labels.
        assert!(text.contains("  version: 2\n"), "{text}");
        assert!(
            text.contains(
                "  annotations:\n    note: x\n  finalizers:\n  - network.LinkStatusController\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(document("10.5.0.2", None, &resource)).expect("json");
        assert_eq!(json["metadata"]["version"], serde_json::json!(2));
        assert!(text.contains("  created: 1970-01-01T00:00:00Z\n"), "{text}");
        assert!(!text.contains("updated"), "{text}");
        assert!(text.ends_with("spec:\n  value: hello\n"), "{text}");
    }
}
