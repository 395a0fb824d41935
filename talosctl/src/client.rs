//! Talking to nodes.
//!
//! - Which talosconfig, context, endpoints and nodes: `--talosconfig` (else
//!   `$TALOSCONFIG`, `~/.talos/config`, ...), `--context` (else the current
//!   one), `-e` (else the context's endpoints), `-n` (else the context's
//!   nodes; none is an error for commands that target nodes).
//! - TLS: the server is verified against the context's `ca` with the
//!   endpoint's host as server name; the context's `crt`/`key` are presented.
//!   The client certificate's expiry is checked before connecting.
//!   `--insecure` (maintenance mode) verifies nothing and presents nothing.
//! - Node targeting: one node → gRPC metadata `node` (apid forwards the call
//!   untouched); several → one `nodes` entry per node (apid fans out and tags
//!   each reply with `metadata.hostname`, or `metadata.error` for a failed
//!   node).
//! - Fail-over: several endpoints are tried in random order; a call that
//!   cannot reach an endpoint is retried on the next one.
//! - Errors: transport failures become one line naming the endpoint and what
//!   to check; server errors read `rpc error: code = ... desc = ...`.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{anyhow, bail};
use api::common::Metadata;
use machinery::pki::SpkiFingerprint;
use machinery::talosconfig::{Context, Endpoint, TalosConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::transport::Channel;

use crate::cli::GlobalArgs;
use crate::output::{self, Reported};

/// Upstream's error when a command targets nodes and none are set.
pub const NODES_NOT_SET: &str = "nodes are not set for the command: please use `--nodes` flag or configuration file to set the nodes to run the command against";

/// The well-known path of the kernel boot ID (changes on every boot).
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

// === talosconfig ===

/// Where the talosconfig is (`--talosconfig`, else the environment and the
/// default locations).
#[must_use]
pub fn talosconfig_path(global: &GlobalArgs) -> PathBuf {
    machinery::talosconfig::resolve_path_from_env(global.talosconfig.as_deref())
}

/// Loads the talosconfig; a missing file says how to get one.
///
/// # Errors
/// The file is missing, unreadable or not a talosconfig.
pub fn load_talosconfig(path: &Path) -> anyhow::Result<TalosConfig> {
    TalosConfig::load(path).map_err(|err| {
        if err.is_not_found() {
            anyhow!("{err}: run \"talosctl gen config\" or pass --talosconfig")
        } else {
            anyhow!("{err}")
        }
    })
}

/// Loads the talosconfig, or an empty one when the file does not exist yet
/// (`config add`, `config merge`, `config contexts`).
///
/// # Errors
/// The file exists but is unreadable or not a talosconfig.
pub fn load_talosconfig_or_default(path: &Path) -> anyhow::Result<TalosConfig> {
    match TalosConfig::load(path) {
        Ok(config) => Ok(config),
        Err(err) if err.is_not_found() => Ok(TalosConfig::default()),
        Err(err) => Err(anyhow!("{err}")),
    }
}

// === options ===

/// How a command targets nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePolicy {
    /// One or more nodes (upstream `WithClient`).
    Required,
    /// Exactly one node; the name is the command in the error message.
    Single(&'static str),
    /// Zero or one node: without nodes the endpoint itself answers.
    Optional(&'static str),
}

/// How to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Maintenance mode: no server verification, no client certificate, the
    /// (first) node is the endpoint.
    pub insecure: bool,
    /// Node targeting.
    pub nodes: NodePolicy,
    /// In maintenance mode, the server's key must have one of these SPKI
    /// fingerprints (`--cert-fingerprint`); empty: no check, as upstream.
    pub cert_fingerprints: Vec<SpkiFingerprint>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            insecure: false,
            nodes: NodePolicy::Required,
            cert_fingerprints: Vec::new(),
        }
    }
}

impl Options {
    /// Default options with `nodes`.
    #[must_use]
    pub fn nodes(nodes: NodePolicy) -> Self {
        Self {
            nodes,
            ..Self::default()
        }
    }
}

fn clean(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

fn check_nodes(nodes: &[String], policy: NodePolicy) -> anyhow::Result<()> {
    match policy {
        NodePolicy::Required if nodes.is_empty() => bail!("{NODES_NOT_SET}"),
        NodePolicy::Single(_) if nodes.is_empty() => bail!("{NODES_NOT_SET}"),
        NodePolicy::Single(command) | NodePolicy::Optional(command) if nodes.len() > 1 => {
            bail!("command {command:?} is not supported with multiple nodes")
        }
        _ => Ok(()),
    }
}

// === the client ===

#[derive(Debug, Clone)]
struct Conn {
    /// `host:port`, as messages name it.
    name: String,
    host: String,
    port: u16,
    channel: Channel,
}

/// A connected (lazily) client: endpoints, target nodes, context.
#[derive(Debug, Clone)]
pub struct Client {
    conns: Vec<Conn>,
    targets: Vec<String>,
    node_values: Vec<MetadataValue<Ascii>>,
    context: String,
    default_node: String,
    endpoints: Vec<String>,
}

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// No endpoint could be reached (one line per endpoint, joined).
    Transport(String),
    /// The server (apid or the node) answered with an error.
    Status(tonic::Status),
}

impl Client {
    /// Builds the client for a command. Channels connect on first use, so
    /// this must run inside the tokio runtime but does no I/O besides
    /// reading the talosconfig.
    ///
    /// # Errors
    /// Talosconfig, context, endpoints, nodes or credentials are unusable.
    pub fn connect(global: &GlobalArgs, options: Options) -> anyhow::Result<Self> {
        if options.insecure {
            return Self::connect_insecure(global, options.nodes, &options.cert_fingerprints);
        }
        let path = talosconfig_path(global);
        let config = load_talosconfig(&path)?;
        let (name, context) = config
            .current(global.context.as_deref())
            .map_err(|err| anyhow!("{err}"))?;

        let endpoints = if global.endpoints.is_empty() {
            clean(&context.endpoints)
        } else {
            clean(&global.endpoints)
        };
        if endpoints.is_empty() {
            bail!(
                "no endpoints are set for talosconfig context {name:?}: use --endpoints or \"talosctl config endpoint <address>\""
            );
        }
        let nodes = if global.nodes.is_empty() {
            clean(&context.nodes)
        } else {
            clean(&global.nodes)
        };
        check_nodes(&nodes, options.nodes)?;
        Self::secure(name, context, endpoints, nodes)
    }

    /// A client with the credentials of `context` (not read from a file, as
    /// rotate-ca's clients for the new CA are), its endpoints, and `nodes`.
    ///
    /// # Errors
    /// The context has no endpoints or unusable credentials.
    pub fn for_context(name: &str, context: &Context, nodes: Vec<String>) -> anyhow::Result<Self> {
        let endpoints = clean(&context.endpoints);
        if endpoints.is_empty() {
            bail!("no endpoints are set for talosconfig context {name:?}");
        }
        Self::secure(name, context, endpoints, nodes)
    }

    fn secure(
        name: &str,
        context: &Context,
        endpoints: Vec<String>,
        nodes: Vec<String>,
    ) -> anyhow::Result<Self> {
        let tls = secure_tls_config(name, context, SystemTime::now())?;
        let mut conns = endpoints
            .iter()
            .map(|endpoint| make_conn(endpoint, &tls))
            .collect::<anyhow::Result<Vec<_>>>()?;
        shuffle(&mut conns);
        Self::assemble(conns, nodes, name.to_owned(), endpoints)
    }

    fn connect_insecure(
        global: &GlobalArgs,
        policy: NodePolicy,
        fingerprints: &[SpkiFingerprint],
    ) -> anyhow::Result<Self> {
        let mut candidates = clean(&global.nodes);
        if candidates.is_empty() {
            candidates = clean(&global.endpoints);
        }
        if candidates.is_empty() {
            // Fall back to the talosconfig, if there is a usable one.
            let path = talosconfig_path(global);
            if let Ok(config) = TalosConfig::load(&path)
                && let Ok((_, context)) = config.current(global.context.as_deref())
            {
                candidates = clean(&context.nodes);
                if candidates.is_empty() {
                    candidates = clean(&context.endpoints);
                }
            }
        }
        let Some(target) = candidates.first() else {
            bail!("{NODES_NOT_SET}");
        };
        if candidates.len() > 1 {
            if let NodePolicy::Single(command) | NodePolicy::Optional(command) = policy {
                bail!("command {command:?} is not supported with multiple nodes");
            }
            bail!("--insecure talks to one node at a time: pass a single node with --nodes");
        }
        let tls = pinned_tls_config(fingerprints)?;
        let conn = make_conn(target, &tls)?;
        let endpoints = vec![target.clone()];
        Self::assemble(vec![conn], Vec::new(), String::new(), endpoints)
    }

    fn assemble(
        conns: Vec<Conn>,
        targets: Vec<String>,
        context: String,
        endpoints: Vec<String>,
    ) -> anyhow::Result<Self> {
        let node_values = node_metadata_values(&targets)?;
        let default_node = match targets.as_slice() {
            [one] => one.clone(),
            _ => conns
                .first()
                .map(|conn| conn.host.clone())
                .unwrap_or_default(),
        };
        Ok(Self {
            conns,
            targets,
            node_values,
            context,
            default_node,
            endpoints,
        })
    }

    /// The target nodes (empty: the endpoint itself).
    #[must_use]
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// Whether several nodes are targeted (replies carry their node name).
    #[must_use]
    pub fn multiple_nodes(&self) -> bool {
        self.targets.len() > 1
    }

    /// The node name used for replies that do not name one.
    #[must_use]
    pub fn default_node(&self) -> &str {
        &self.default_node
    }

    /// The endpoints as configured (or given with `-e`).
    #[must_use]
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// One client per target node (each with `node` metadata), or this
    /// client when it targets at most one node.
    #[must_use]
    pub fn per_node(&self) -> Vec<Client> {
        if self.targets.len() <= 1 {
            return vec![self.clone()];
        }
        self.targets
            .iter()
            .zip(&self.node_values)
            .map(|(target, value)| Client {
                conns: self.conns.clone(),
                targets: vec![target.clone()],
                node_values: vec![value.clone()],
                context: self.context.clone(),
                default_node: target.clone(),
                endpoints: self.endpoints.clone(),
            })
            .collect()
    }

    /// This client for those of its target nodes named in `names` only (in
    /// its own order), fanning out to them as it would to all; itself when
    /// it targets at most one node (named by [`Client::default_node`]).
    /// `None` when no target is named: a client without targets would
    /// mean the endpoint itself.
    #[must_use]
    pub fn only(&self, names: &[String]) -> Option<Client> {
        if self.targets.len() <= 1 {
            return names.contains(&self.default_node).then(|| self.clone());
        }
        let (targets, node_values): (Vec<String>, Vec<MetadataValue<Ascii>>) = self
            .targets
            .iter()
            .zip(&self.node_values)
            .filter(|(target, _)| names.contains(target))
            .map(|(t, v)| (t.clone(), v.clone()))
            .unzip();
        let default_node = match targets.as_slice() {
            [] => return None,
            [one] => one.clone(),
            _ => self.default_node.clone(),
        };
        Some(Client {
            conns: self.conns.clone(),
            targets,
            node_values,
            context: self.context.clone(),
            default_node,
            endpoints: self.endpoints.clone(),
        })
    }

    /// A request carrying the node-targeting metadata.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        apply_node_metadata(request.metadata_mut(), &self.node_values);
        request
    }

    /// Runs `rpc` against the endpoints in turn until one can be reached.
    ///
    /// # Errors
    /// [`CallError::Transport`] when no endpoint could be reached,
    /// [`CallError::Status`] when the server answered with an error.
    pub async fn try_call<R, F, Fut>(&self, mut rpc: F) -> Result<R, CallError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let mut failures = Vec::new();
        for conn in &self.conns {
            match rpc(conn.channel.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if is_transport(&status) => failures.push(describe_transport(
                    &conn.name,
                    &conn.host,
                    conn.port,
                    &self.context,
                    &chain_text(&status),
                )),
                Err(status) => return Err(CallError::Status(status)),
            }
        }
        if failures.is_empty() {
            failures.push("no endpoints to connect to".to_owned());
        }
        Err(CallError::Transport(failures.join("; ")))
    }

    /// [`Client::try_call`] with the error as an operator-facing message.
    ///
    /// # Errors
    /// See [`Client::try_call`].
    pub async fn call<R, F, Fut>(&self, rpc: F) -> anyhow::Result<R>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        self.try_call(rpc).await.map_err(|err| self.call_error(err))
    }

    /// Calls a MachineService method that takes no argument:
    /// `client.machine_call(|mut m, r| async move { m.version(r).await })`.
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn machine_call<R, F, Fut>(&self, rpc: F) -> anyhow::Result<R>
    where
        F: Fn(
            api::machine::machine_service_client::MachineServiceClient<Channel>,
            tonic::Request<()>,
        ) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        self.call(|channel| rpc(machine(channel), self.request(())))
            .await
    }

    /// The message for a failed call.
    #[must_use]
    pub fn call_error(&self, err: CallError) -> anyhow::Error {
        match err {
            CallError::Transport(message) => anyhow!("{message}"),
            CallError::Status(status) => self.status_error(&status),
        }
    }

    /// The message for an error status (of a call or in the middle of a
    /// stream): names the node when one node is targeted.
    #[must_use]
    pub fn status_error(&self, status: &tonic::Status) -> anyhow::Error {
        if is_transport(status) {
            return anyhow!("connection to the node lost: {}", status.message());
        }
        let text = rpc_error_text(status);
        match self.targets.as_slice() {
            [] => anyhow!("{}: {text}", self.default_node),
            [node] => anyhow!("{node}: {text}"),
            _ => anyhow!("{text}"),
        }
    }

    /// The node a reply comes from: its `metadata.hostname`, else the
    /// default node.
    #[must_use]
    pub fn node_of(&self, metadata: Option<&Metadata>) -> String {
        metadata
            .map(|metadata| metadata.hostname.as_str())
            .filter(|hostname| !hostname.is_empty())
            .map_or_else(|| self.default_node.clone(), str::to_owned)
    }

    /// Splits unary replies into successful nodes and failed ones.
    #[must_use]
    pub fn split<T: Reply>(&self, messages: Vec<T>) -> NodeResults<T> {
        let mut results = NodeResults {
            ok: Vec::new(),
            failed: Vec::new(),
        };
        for message in messages {
            let node = self.node_of(message.metadata());
            match node_error(message.metadata()) {
                Some(error) => results.failed.push((node, error)),
                None => results.ok.push((node, message)),
            }
        }
        results
    }
}

/// Replies per node.
#[derive(Debug)]
pub struct NodeResults<T> {
    /// `(node, reply)` of the nodes that answered.
    pub ok: Vec<(String, T)>,
    /// `(node, error)` of the nodes that failed.
    pub failed: Vec<(String, String)>,
}

/// Prints `error: <node>: <cause>` for each failed node; an error (already
/// reported) when there was any.
///
/// # Errors
/// [`Reported`] when `failed` is not empty.
pub fn report(failed: &[(String, String)]) -> anyhow::Result<()> {
    for (node, error) in failed {
        eprintln!("error: {node}: {error}");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Reported.into())
    }
}

/// The error a proxy put into a reply's metadata, if any.
#[must_use]
pub fn node_error(metadata: Option<&Metadata>) -> Option<String> {
    let metadata = metadata?;
    if !metadata.error.is_empty() {
        return Some(metadata.error.clone());
    }
    match &metadata.status {
        Some(status) if status.code != 0 => Some(format!(
            "rpc error: code = {} desc = {}",
            code_name(tonic::Code::from_i32(status.code)),
            status.message
        )),
        _ => None,
    }
}

/// Replies that carry `common.Metadata` in field 1.
pub trait Reply {
    /// The metadata, if set.
    fn metadata(&self) -> Option<&Metadata>;
}

macro_rules! impl_reply {
    ($($reply:ty),* $(,)?) => {
        $(
            impl Reply for $reply {
                fn metadata(&self) -> Option<&Metadata> {
                    self.metadata.as_ref()
                }
            }
        )*
    };
}

impl_reply!(
    api::common::Data,
    api::machine::ApplyConfiguration,
    api::machine::DiskStats,
    api::machine::DiskUsageInfo,
    api::machine::Event,
    api::machine::FileInfo,
    api::machine::GenerateClientConfiguration,
    api::machine::Memory,
    api::machine::MetaDelete,
    api::machine::MetaWrite,
    api::machine::Mounts,
    api::machine::Netstat,
    api::machine::Process,
    api::machine::Reboot,
    api::machine::Reset,
    api::machine::Rollback,
    api::machine::ServiceList,
    api::machine::ServiceRestart,
    api::machine::ServiceStart,
    api::machine::ServiceStop,
    api::machine::Shutdown,
    api::machine::Upgrade,
    api::machine::Version,
    api::storage::Disks,
    api::storage::BlockDeviceWipe,
    api::time::Time,
    api::network::Interfaces,
    api::network::Routes,
    api::cluster::HealthCheckProgress,
);

// === service clients ===

/// A MachineService client with upstream's 32 MiB message limits.
#[must_use]
pub fn machine(
    channel: Channel,
) -> api::machine::machine_service_client::MachineServiceClient<Channel> {
    api::machine::machine_service_client::MachineServiceClient::new(channel)
        .max_decoding_message_size(api::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(api::MAX_MESSAGE_SIZE)
}

/// A machine.LifecycleService client.
#[must_use]
pub fn lifecycle(
    channel: Channel,
) -> api::machine::lifecycle_service_client::LifecycleServiceClient<Channel> {
    api::machine::lifecycle_service_client::LifecycleServiceClient::new(channel)
        .max_decoding_message_size(api::MAX_MESSAGE_SIZE)
}

/// A storage.StorageService client.
#[must_use]
pub fn storage(
    channel: Channel,
) -> api::storage::storage_service_client::StorageServiceClient<Channel> {
    api::storage::storage_service_client::StorageServiceClient::new(channel)
        .max_decoding_message_size(api::MAX_MESSAGE_SIZE)
}

/// A TimeService client.
#[must_use]
pub fn time(channel: Channel) -> api::time::time_service_client::TimeServiceClient<Channel> {
    api::time::time_service_client::TimeServiceClient::new(channel)
        .max_decoding_message_size(api::MAX_MESSAGE_SIZE)
}

/// A NetworkService client.
#[must_use]
pub fn network(
    channel: Channel,
) -> api::network::network_service_client::NetworkServiceClient<Channel> {
    api::network::network_service_client::NetworkServiceClient::new(channel)
        .max_decoding_message_size(api::MAX_MESSAGE_SIZE)
}

/// A ClusterService client.
#[must_use]
pub fn cluster(
    channel: Channel,
) -> api::cluster::cluster_service_client::ClusterServiceClient<Channel> {
    api::cluster::cluster_service_client::ClusterServiceClient::new(channel)
        .max_decoding_message_size(api::MAX_MESSAGE_SIZE)
}

// === node metadata ===

fn node_metadata_values(nodes: &[String]) -> anyhow::Result<Vec<MetadataValue<Ascii>>> {
    nodes
        .iter()
        .map(|node| {
            MetadataValue::try_from(node.as_str())
                .map_err(|_| anyhow!("node {node:?} is not a valid node name or address"))
        })
        .collect()
}

/// Sets the node-targeting metadata: nothing for no node, `node` for one,
/// one `nodes` entry per node for several.
pub fn apply_node_metadata(metadata: &mut MetadataMap, nodes: &[MetadataValue<Ascii>]) {
    match nodes {
        [] => {}
        [node] => {
            let _ = metadata.insert("node", node.clone());
        }
        many => {
            for node in many {
                let _ = metadata.append("nodes", node.clone());
            }
        }
    }
}

fn shuffle<T>(items: &mut [T]) {
    let state = RandomState::new();
    for index in (1..items.len()).rev() {
        let mut hasher = state.build_hasher();
        hasher.write_usize(index);
        let bound = u64::try_from(index + 1).unwrap_or(u64::MAX);
        let pick = usize::try_from(hasher.finish() % bound).unwrap_or(0);
        items.swap(index, pick);
    }
}

// === TLS ===

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn make_conn(text: &str, tls: &Arc<rustls::ClientConfig>) -> anyhow::Result<Conn> {
    let endpoint =
        Endpoint::parse(text).map_err(|reason| anyhow!("endpoint {text:?}: {reason}"))?;
    let name = endpoint.authority();
    let channel = if endpoint.plaintext {
        tonic::transport::Endpoint::from_shared(format!("http://{name}"))
            .map_err(|err| anyhow!("endpoint {text:?}: {err}"))?
            .connect_lazy()
    } else {
        machinery::grpc::tls_channel(name.clone(), &endpoint.host, Arc::clone(tls))
            .map_err(|err| anyhow!("endpoint {text:?}: {err}"))?
    };
    Ok(Conn {
        name,
        host: endpoint.host,
        port: endpoint.port,
        channel,
    })
}

/// Fails when the client certificate `crt_pem` of context `context_name`
/// has expired at `now`.
///
/// # Errors
/// The certificate cannot be read or has expired.
pub fn check_client_cert(
    context_name: &str,
    crt_pem: &[u8],
    now: SystemTime,
) -> anyhow::Result<()> {
    let info = machinery::pki::cert_info(crt_pem)
        .map_err(|err| anyhow!("talosconfig context {context_name:?}: crt: {err}"))?;
    if info.not_after < now {
        bail!(
            "client certificate in context {context_name:?} expired at {}: generate a new one with \"talosctl config new\"",
            output::rfc3339(info.not_after)
        );
    }
    Ok(())
}

/// The mTLS client config of a context: its CA as the only root, its
/// certificate and key as client credentials.
///
/// # Errors
/// Missing or malformed credentials, or an expired client certificate.
pub fn secure_tls_config(
    context_name: &str,
    context: &Context,
    now: SystemTime,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    if context.ca.is_empty() {
        bail!(
            "talosconfig context {context_name:?} has no CA certificate (\"ca\"): the server cannot be verified"
        );
    }
    let ca = context.ca_pem().map_err(|err| anyhow!("{err}"))?;
    let client = if context.has_client_cert() {
        let crt = context.crt_pem().map_err(|err| anyhow!("{err}"))?;
        check_client_cert(context_name, &crt, now)?;
        let key = context.key_pem().map_err(|err| anyhow!("{err}"))?;
        Some((crt, key))
    } else {
        None
    };
    machinery::grpc::client_tls_config(
        &ca,
        client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    )
    .map_err(|err| anyhow!("talosconfig context {context_name:?}: {err}"))
}

/// Maintenance mode: accepts any server certificate (its handshake
/// signature is still checked), presents no client certificate.
///
/// # Errors
/// The TLS library refuses the protocol versions (never in practice).
pub fn insecure_tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    pinned_tls_config(&[])
}

/// [`insecure_tls_config`], except that with `fingerprints` the server's
/// certificate must carry a key with one of them (`--cert-fingerprint`).
///
/// # Errors
/// The TLS library refuses the protocol versions (never in practice).
pub fn pinned_tls_config(
    fingerprints: &[SpkiFingerprint],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| anyhow!("TLS setup: {err}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MaintenanceServerCert {
            provider,
            fingerprints: fingerprints.to_vec(),
        }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `--insecure`: trusts whatever certificate the node shows, or, given
/// fingerprints, only a certificate whose key has one of them (the leaf's;
/// nothing else in the chain counts, as upstream).
#[derive(Debug)]
struct MaintenanceServerCert {
    provider: Arc<CryptoProvider>,
    fingerprints: Vec<SpkiFingerprint>,
}

impl ServerCertVerifier for MaintenanceServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.fingerprints.is_empty() {
            return Ok(ServerCertVerified::assertion());
        }
        let presented = SpkiFingerprint::of_certificate(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if self.fingerprints.contains(&presented) {
            return Ok(ServerCertVerified::assertion());
        }
        let wanted: Vec<String> = self.fingerprints.iter().map(ToString::to_string).collect();
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(FingerprintMismatch {
                wanted,
                presented,
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Upstream's words for a maintenance-mode server whose key is not among
/// `--cert-fingerprint`.
const FINGERPRINT_MISMATCH: &str = "leaf peer certificate doesn't match the provided fingerprints";

/// A maintenance-mode server whose key is not among `--cert-fingerprint`.
struct FingerprintMismatch {
    wanted: Vec<String>,
    presented: SpkiFingerprint,
}

impl std::fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Upstream's words, then what the node showed.
        write!(
            f,
            "{FINGERPRINT_MISMATCH}: [{}]; the node presented {}",
            self.wanted.join(" "),
            self.presented
        )
    }
}

// rustls shows the error inside its own with `{:?}`: the same words then.
impl std::fmt::Debug for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for FingerprintMismatch {}

// === errors ===

/// Whether a status comes from our side of the connection (connect, TLS,
/// HTTP/2) rather than from a server: tonic attaches the cause as source.
#[must_use]
pub fn is_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Everything a status knows, as text to classify: its message, every cause
/// in the chain, and for I/O errors their kind and inner error (rustls
/// errors hide there).
#[must_use]
pub fn chain_text(status: &tonic::Status) -> String {
    let mut parts = vec![status.message().to_owned()];
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        parts.push(err.to_string());
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            parts.push(format!("{:?}", io.kind()));
            if let Some(inner) = io.get_ref() {
                parts.push(inner.to_string());
                parts.push(format!("{inner:?}"));
            }
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            parts.push(format!("{tls:?}"));
        }
        source = err.source();
    }
    parts.join(" | ")
}

/// What went wrong reaching an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportProblem {
    /// Nothing listens on the port.
    Refused,
    /// The server certificate is not signed by the talosconfig CA.
    UnknownAuthority,
    /// The server certificate does not cover the endpoint's name or address.
    NameMismatch,
    /// The server certificate has expired or is not valid yet.
    ServerCertExpired,
    /// The server rejected our client certificate (a TLS alert).
    ClientCertRejected(String),
    /// No route to the host.
    Unreachable,
    /// Connecting timed out.
    Timeout,
    /// The host name does not resolve.
    Unresolvable,
    /// The connection was closed or reset during the handshake.
    Closed,
    /// The maintenance-mode server's key is not among `--cert-fingerprint`
    /// (the whole sentence, fingerprints kept as they are).
    FingerprintMismatch(String),
    /// Another TLS failure.
    Tls(String),
    /// Something else.
    Other,
}

/// Classifies transport failure text (see [`chain_text`]).
#[must_use]
pub fn classify_transport(text: &str) -> TransportProblem {
    let lower = text.to_lowercase();
    let has = |needle: &str| lower.contains(needle);
    // rustls: Display "received fatal alert: X", Debug "AlertReceived(X)".
    for marker in ["received fatal alert: ", "AlertReceived("] {
        if let Some((_, after)) = text.split_once(marker) {
            let alert: String = after
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            return TransportProblem::ClientCertRejected(alert);
        }
    }
    // Before anything lowercases it: base64 is case-sensitive.
    if let Some(at) = text.find(FINGERPRINT_MISMATCH) {
        let sentence: String = text[at..].chars().take_while(|c| *c != ')').collect();
        return TransportProblem::FingerprintMismatch(sentence);
    }
    // A certificate from another CA with the same issuer name (every OS CA
    // is O=talos) fails its signature check rather than the issuer lookup.
    if has("unknownissuer")
        || has("unknown issuer")
        || has("unknown authority")
        || (has("invalid peer certificate") && has("badsignature"))
    {
        return TransportProblem::UnknownAuthority;
    }
    if has("notvalidforname") || has("not valid for name") {
        return TransportProblem::NameMismatch;
    }
    if has("invalid peer certificate")
        && (has("expired") || has("notvalidyet") || has("not valid yet"))
    {
        return TransportProblem::ServerCertExpired;
    }
    if has("invalid peer certificate") {
        let detail = lower
            .split(" | ")
            .find(|part| part.contains("invalid peer certificate"))
            .unwrap_or("invalid peer certificate")
            .to_owned();
        return TransportProblem::Tls(detail);
    }
    if has("connection refused") || has("connectionrefused") {
        return TransportProblem::Refused;
    }
    if has("no route to host")
        || has("hostunreachable")
        || has("network is unreachable")
        || has("networkunreachable")
    {
        return TransportProblem::Unreachable;
    }
    if has("timed out") || has("timedout") {
        return TransportProblem::Timeout;
    }
    if has("failed to lookup address")
        || has("name or service not known")
        || has("temporary failure in name resolution")
        || has("dns error")
    {
        return TransportProblem::Unresolvable;
    }
    if has("connection reset")
        || has("connectionreset")
        || has("broken pipe")
        || has("unexpected eof")
        || has("unexpectedeof")
        || has("connection closed")
        || has("handshake eof")
    {
        return TransportProblem::Closed;
    }
    if has("corrupt message")
        || has("invalidcontenttype")
        || has("peer is incompatible")
        || (has("handshake") && has("tls"))
    {
        let detail = text.split(" | ").next().unwrap_or(text).to_owned();
        return TransportProblem::Tls(detail);
    }
    TransportProblem::Other
}

/// The one-line message for a transport failure reaching `endpoint`
/// (`host:port`) with talosconfig context `context` (empty in `--insecure`
/// mode).
#[must_use]
pub fn describe_transport(
    endpoint: &str,
    host: &str,
    port: u16,
    context: &str,
    text: &str,
) -> String {
    let by_context = if context.is_empty() {
        "the talosconfig".to_owned()
    } else {
        format!("talosconfig context {context:?}")
    };
    match classify_transport(text) {
        TransportProblem::Refused => {
            format!("{endpoint}: connection refused (is the node up and is port {port} reachable?)")
        }
        TransportProblem::UnknownAuthority => format!(
            "{endpoint}: server certificate signed by unknown authority: it is not trusted by the CA of {by_context} (does the talosconfig belong to another cluster? a node in maintenance mode needs --insecure)"
        ),
        TransportProblem::NameMismatch => format!(
            "{endpoint}: server certificate is not valid for {host:?} (use an endpoint address the node's certificate lists, or add it to machine.certSANs)"
        ),
        TransportProblem::ServerCertExpired => format!(
            "{endpoint}: server certificate has expired or is not valid yet (are the clocks of this machine and the node right?)"
        ),
        TransportProblem::ClientCertRejected(alert) => format!(
            "{endpoint}: the node rejected the client certificate of {by_context} (TLS alert {alert}): the talosconfig may belong to another cluster, or its certificate may have expired"
        ),
        TransportProblem::Unreachable => {
            format!("{endpoint}: no route to host (is the address right and the network up?)")
        }
        TransportProblem::Timeout => {
            format!(
                "{endpoint}: connection timed out (is the node up and is port {port} reachable?)"
            )
        }
        TransportProblem::Unresolvable => format!("{endpoint}: cannot resolve host name {host:?}"),
        TransportProblem::Closed => format!(
            "{endpoint}: connection closed during the TLS handshake (is this a Talos API endpoint?)"
        ),
        TransportProblem::FingerprintMismatch(sentence) => format!("{endpoint}: {sentence}"),
        TransportProblem::Tls(detail) => format!("{endpoint}: TLS handshake failed: {detail}"),
        TransportProblem::Other => {
            let first = text.split(" | ").next().unwrap_or(text);
            format!("{endpoint}: {first}")
        }
    }
}

/// Go's name of a gRPC code (`Canceled`, `PermissionDenied`, ...).
#[must_use]
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Canceled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

/// Go's `rpc error: code = <Code> desc = <message>`.
#[must_use]
pub fn rpc_error_text(status: &tonic::Status) -> String {
    format!(
        "rpc error: code = {} desc = {}",
        code_name(status.code()),
        status.message()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn values(nodes: &[&str]) -> Vec<MetadataValue<Ascii>> {
        node_metadata_values(&nodes.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("valid")
    }

    #[test]
    fn only_keeps_the_named_targets() {
        let names = |v: &[&str]| v.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let all = Client::assemble(
            Vec::new(),
            names(&["a", "b", "c"]),
            "ctx".into(),
            names(&["ep"]),
        )
        .expect("client");
        let two = all.only(&names(&["c", "a"])).expect("two");
        assert_eq!(two.targets(), ["a", "c"]);
        let mut map = MetadataMap::new();
        apply_node_metadata(&mut map, &two.node_values);
        let sent: Vec<&str> = map
            .get_all("nodes")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(sent, ["a", "c"]);
        let one = all.only(&names(&["b"])).expect("one");
        assert_eq!(one.targets(), ["b"]);
        assert_eq!(one.default_node(), "b");
        assert!(!one.multiple_nodes());
        // None named: no client (not one for the endpoint itself).
        assert!(all.only(&names(&["x"])).is_none());
        assert!(all.only(&[]).is_none());
        // A client for one node is that node's, if named.
        assert_eq!(one.only(&names(&["b"])).expect("b").targets(), ["b"]);
        assert!(one.only(&names(&["x"])).is_none());
    }

    #[test]
    fn no_node_sets_no_metadata() {
        let mut map = MetadataMap::new();
        apply_node_metadata(&mut map, &values(&[]));
        assert!(map.get("node").is_none());
        assert!(map.get("nodes").is_none());
    }

    #[test]
    fn one_node_uses_the_node_key() {
        let mut map = MetadataMap::new();
        apply_node_metadata(&mut map, &values(&["10.5.0.3"]));
        assert_eq!(
            map.get("node").and_then(|v| v.to_str().ok()),
            Some("10.5.0.3")
        );
        assert!(map.get("nodes").is_none());
    }

    #[test]
    fn several_nodes_use_one_nodes_entry_each() {
        let mut map = MetadataMap::new();
        apply_node_metadata(&mut map, &values(&["10.5.0.2", "10.5.0.3", "node-3"]));
        assert!(map.get("node").is_none());
        let all: Vec<&str> = map
            .get_all("nodes")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(all, ["10.5.0.2", "10.5.0.3", "node-3"]);
    }

    #[test]
    fn invalid_node_names_are_refused() {
        assert!(node_metadata_values(&["bad\nnode".to_owned()]).is_err());
    }

    #[test]
    fn node_policies() {
        let none: Vec<String> = Vec::new();
        let one = vec!["a".to_owned()];
        let two = vec!["a".to_owned(), "b".to_owned()];
        let err = check_nodes(&none, NodePolicy::Required).expect_err("no nodes");
        assert_eq!(err.to_string(), NODES_NOT_SET);
        assert!(check_nodes(&two, NodePolicy::Required).is_ok());
        let err = check_nodes(&two, NodePolicy::Single("read")).expect_err("two nodes");
        assert_eq!(
            err.to_string(),
            "command \"read\" is not supported with multiple nodes"
        );
        assert!(check_nodes(&one, NodePolicy::Single("read")).is_ok());
        assert!(check_nodes(&none, NodePolicy::Optional("health")).is_ok());
    }

    #[test]
    fn a_fingerprint_mismatch_keeps_its_case() {
        let text = "transport error | invalid peer certificate: Other(OtherError(leaf peer certificate doesn't match the provided fingerprints: [AAAA+/= BbBb=]; the node presented xJtX+Q0=)) | InvalidData";
        let message = describe_transport("10.5.0.2:50000", "10.5.0.2", 50000, "", text);
        assert_eq!(
            message,
            "10.5.0.2:50000: leaf peer certificate doesn't match the provided fingerprints: [AAAA+/= BbBb=]; the node presented xJtX+Q0="
        );
    }

    #[test]
    fn refused_names_the_endpoint_and_port() {
        let text = "tcp connect error | Connection refused (os error 111) | ConnectionRefused";
        assert_eq!(classify_transport(text), TransportProblem::Refused);
        let message = describe_transport("10.5.0.2:50000", "10.5.0.2", 50000, "prod", text);
        assert_eq!(
            message,
            "10.5.0.2:50000: connection refused (is the node up and is port 50000 reachable?)"
        );
    }

    #[test]
    fn unknown_issuer_says_certificate_and_unknown_authority() {
        let text = "invalid peer certificate: UnknownIssuer | InvalidData | invalid peer certificate: UnknownIssuer | InvalidCertificate(UnknownIssuer)";
        assert!(matches!(
            classify_transport("TLS handshake failed: invalid peer certificate: BadSignature"),
            TransportProblem::UnknownAuthority
        ));
        assert_eq!(classify_transport(text), TransportProblem::UnknownAuthority);
        let message = describe_transport("127.0.0.1:50000", "127.0.0.1", 50000, "other", text);
        assert!(message.contains("certificate"), "{message}");
        assert!(message.contains("unknown authority"), "{message}");
        assert!(message.contains("not trusted"), "{message}");
        assert!(message.contains("another cluster"), "{message}");
        assert!(message.starts_with("127.0.0.1:50000: "), "{message}");
    }

    #[test]
    fn rejected_client_certificate() {
        let text = "h2 protocol error | received fatal alert: BadCertificate";
        assert_eq!(
            classify_transport(text),
            TransportProblem::ClientCertRejected("BadCertificate".to_owned())
        );
        let message = describe_transport("n:50000", "n", 50000, "prod", text);
        assert!(
            message.contains("rejected the client certificate"),
            "{message}"
        );
        assert!(message.contains("BadCertificate"), "{message}");
    }

    #[test]
    fn other_transport_problems() {
        assert_eq!(
            classify_transport("invalid peer certificate: certificate not valid for name \"x\""),
            TransportProblem::NameMismatch
        );
        assert_eq!(
            classify_transport("invalid peer certificate: Expired"),
            TransportProblem::ServerCertExpired
        );
        assert_eq!(
            classify_transport("No route to host (os error 113) | HostUnreachable"),
            TransportProblem::Unreachable
        );
        assert_eq!(
            classify_transport("connection timed out"),
            TransportProblem::Timeout
        );
        assert_eq!(
            classify_transport("failed to lookup address information: Name or service not known"),
            TransportProblem::Unresolvable
        );
        assert_eq!(
            classify_transport("Connection reset by peer (os error 104)"),
            TransportProblem::Closed
        );
        assert_eq!(classify_transport("something odd"), TransportProblem::Other);
        assert_eq!(
            describe_transport("e:1", "e", 1, "", "something odd | cause"),
            "e:1: something odd"
        );
    }

    #[test]
    fn status_texts_like_go() {
        let status = tonic::Status::permission_denied("not authorized");
        assert_eq!(
            rpc_error_text(&status),
            "rpc error: code = PermissionDenied desc = not authorized"
        );
        assert!(!is_transport(&status));
        assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
    }

    #[test]
    fn metadata_errors() {
        let metadata = Metadata {
            hostname: "10.5.0.3".to_owned(),
            error: "connection refused".to_owned(),
            status: None,
        };
        assert_eq!(
            node_error(Some(&metadata)).as_deref(),
            Some("connection refused")
        );
        let ok = Metadata {
            hostname: "10.5.0.3".to_owned(),
            ..Metadata::default()
        };
        assert_eq!(node_error(Some(&ok)), None);
        assert_eq!(node_error(None), None);
    }

    #[test]
    fn expired_client_certificate_is_refused_before_connecting() {
        let now = SystemTime::now();
        let two_days_ago = now - Duration::from_secs(2 * 86400);
        let ca = machinery::pki::generate_os_ca(two_days_ago).expect("ca");
        let client = machinery::pki::issue_client_cert(
            &ca,
            &["os:admin".to_owned()],
            Duration::from_secs(86400),
            two_days_ago,
        )
        .expect("client cert");
        let err = check_client_cert("prod", client.cert_pem.as_bytes(), now).expect_err("expired");
        let message = err.to_string();
        assert!(
            message.starts_with("client certificate in context \"prod\" expired at "),
            "{message}"
        );
        assert!(message.contains("talosctl config new"), "{message}");

        let fresh = machinery::pki::issue_client_cert(
            &ca,
            &["os:admin".to_owned()],
            Duration::from_secs(86400),
            now,
        )
        .expect("client cert");
        assert!(check_client_cert("prod", fresh.cert_pem.as_bytes(), now).is_ok());
    }

    #[test]
    fn shuffle_keeps_every_item() {
        let mut items = vec![1, 2, 3, 4, 5];
        shuffle(&mut items);
        items.sort_unstable();
        assert_eq!(items, [1, 2, 3, 4, 5]);
    }
}
