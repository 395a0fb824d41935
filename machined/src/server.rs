//! `machine.MachineService` on machined's unix socket.
//!
//! Handlers convert wire requests into calls on the domain modules and the
//! results back; every domain error becomes a gRPC status in one place,
//! [`ApiError`]'s `From` impl. Methods not served here answer Unimplemented
//! (the generated default).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use api::common::Data;
use api::machine as pb;
use api::machine::machine_service_server::MachineService;
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::configstore::{ApplyError, ApplyMode, DEFAULT_TRY_TIMEOUT};
use crate::events::{Event, Payload, Tail};
use crate::files::{self, FileError};
use crate::install::{InstallError, MetaChange, Upgraded};
use crate::logbuf::MAX_CHUNK;
use crate::node::{Mode, Node, PowerAction};
use crate::stats::{self, StatsError};
use crate::supervisor::{Health, ServiceState, ServiceStatus, SupervisorError};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Every way a call can fail, mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad request.
    #[error("{0}")]
    InvalidArgument(String),
    /// Missing thing.
    #[error("{0}")]
    NotFound(String),
    /// Not possible in this state or mode.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Not offered here.
    #[error("{0}")]
    Unimplemented(String),
    /// Services.
    #[error(transparent)]
    Service(#[from] SupervisorError),
    /// Files.
    #[error(transparent)]
    File(#[from] FileError),
    /// Statistics.
    #[error(transparent)]
    Stats(#[from] StatsError),
    /// Config apply.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Install and upgrade.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// META key writes.
    #[error(transparent)]
    Meta(#[from] crate::install::MetaKeyError),
    /// Resource reads.
    #[error(transparent)]
    Resource(#[from] crate::resources::ResourceError),
    /// Packet captures.
    #[error(transparent)]
    Pcap(#[from] crate::pcap::PcapError),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument(_) => Status::invalid_argument(msg),
            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::Unimplemented(_) => Status::unimplemented(msg),
            ApiError::Service(s) => match s {
                SupervisorError::NotFound { .. } => Status::not_found(msg),
                SupervisorError::NotAllowed { .. } => Status::failed_precondition(msg),
                SupervisorError::ShuttingDown { .. } => Status::unavailable(msg),
                SupervisorError::DuplicateService { .. }
                | SupervisorError::UnknownDependency { .. }
                | SupervisorError::DependencyCycle { .. } => Status::internal(msg),
            },
            ApiError::File(f) => match f {
                FileError::NotFound { .. } => Status::not_found(msg),
                FileError::NotAbsolute { .. } | FileError::NotRegular { .. } => {
                    Status::invalid_argument(msg)
                }
                FileError::Io { .. } => Status::internal(msg),
            },
            ApiError::Stats(_) | ApiError::Internal(_) => Status::internal(msg),
            ApiError::Install(i) => match i {
                InstallError::NotInstalled
                | InstallError::AlreadyInstalled(_)
                | InstallError::Busy
                | InstallError::Unauthorized { .. } => Status::failed_precondition(msg),
                InstallError::NoImage
                | InstallError::BadReference { .. }
                | InstallError::Verification { .. } => Status::invalid_argument(msg),
                InstallError::Unreachable { .. } => Status::unavailable(msg),
                InstallError::NotFound { .. } => Status::not_found(msg),
                InstallError::Step { .. } => Status::internal(msg),
            },
            ApiError::Resource(r) => {
                use crate::resources::ResourceError as R;
                match r {
                    R::ReadOnly | R::UnknownNamespace(_) | R::UnknownType(_) | R::NotAuthorized => {
                        Status::permission_denied(msg)
                    }
                    R::NotFound { .. } => Status::not_found(msg),
                    R::BadQuery { .. } => Status::invalid_argument(msg),
                    R::Read { .. } => Status::internal(msg),
                }
            }
            ApiError::Meta(m) => {
                use crate::install::MetaKeyError as M;
                match m {
                    M::NoPartition => Status::failed_precondition(msg),
                    M::NotSet(_) => Status::not_found(msg),
                    M::Refused(machinery::meta::MetaError::ReservedTag) => {
                        Status::invalid_argument(msg)
                    }
                    M::Refused(_) => Status::resource_exhausted(msg),
                    M::Write { .. } => Status::internal(msg),
                }
            }
            ApiError::Apply(a) => match a {
                ApplyError::Invalid(_) | ApplyError::Refused(_) => Status::invalid_argument(msg),
                ApplyError::Busy => Status::failed_precondition(msg),
                ApplyError::Unsupported(_) => Status::unimplemented(msg),
                ApplyError::Persist(_)
                | ApplyError::LiveCopy(_)
                | ApplyError::NotRestored { .. } => Status::internal(msg),
            },
            ApiError::Pcap(p) => {
                use crate::pcap::PcapError as P;
                match p {
                    P::NotFound(_) => Status::not_found(msg),
                    P::BadName(_)
                    | P::UnsupportedLink { .. }
                    | P::SnapLen(_)
                    | P::BadInstruction { .. }
                    | P::FilterTooLong(_)
                    | P::FilterRefused(_) => Status::invalid_argument(msg),
                    P::NotPermitted { .. } => Status::failed_precondition(msg),
                    P::Io { .. } => Status::internal(msg),
                }
            }
        }
    }
}

/// The MachineService implementation.
#[derive(Debug, Clone)]
pub struct MachineApi {
    node: Arc<Node>,
}

impl MachineApi {
    /// Serves `node`.
    #[must_use]
    pub fn new(node: Arc<Node>) -> MachineApi {
        MachineApi { node }
    }

    fn supervisor_statuses(&self) -> Vec<ServiceStatus> {
        self.node
            .supervisor
            .get()
            .map(|s| s.list())
            .unwrap_or_default()
    }

    fn supervisor(&self) -> Result<&Arc<crate::supervisor::Supervisor>, ApiError> {
        self.node
            .supervisor
            .get()
            .ok_or_else(|| ApiError::FailedPrecondition("services are not started yet".into()))
    }

    /// The supervisor, to start a service with: not while the node goes
    /// down, when the services are being stopped.
    fn supervisor_to_start(&self) -> Result<&Arc<crate::supervisor::Supervisor>, ApiError> {
        if self.node.going_down() {
            return Err(going_down());
        }
        self.supervisor()
    }

    /// Changes one META key on the node's disk.
    async fn change_meta(&self, change: MetaChange) -> Result<(), ApiError> {
        self.refuse_in_container("META")?;
        tokio::task::spawn_blocking(move || crate::install::change_meta_key(&change))
            .await
            .map_err(|e| ApiError::Internal(format!("META task: {e}")))?
            .map_err(ApiError::from)
    }

    fn refuse_in_container(&self, what: &str) -> Result<(), ApiError> {
        if self.node.mode() == Mode::Container {
            return Err(ApiError::FailedPrecondition(format!(
                "{what} is not supported in container mode"
            )));
        }
        Ok(())
    }
}

/// The refusal of a lifecycle action while another is under way.
fn going_down() -> ApiError {
    ApiError::FailedPrecondition(
        "the node is already going down (a reboot, shutdown or reset is under way)".into(),
    )
}

/// What a reset is checked against: the volumes, the system disk and the
/// disks, read as `get volumestatus`, `get systemdisk` and `disks` read
/// them.
async fn reset_facts() -> Result<crate::reset::Facts, ApiError> {
    let discovered = crate::volumes::discovered_specs("/sys".into(), "/dev".into()).await?;
    let mounts = crate::resources::read_mounts().await?;
    let disks = tokio::task::spawn_blocking(|| udevd::sysfs::disks(std::path::Path::new("/sys")))
        .await
        .map_err(|e| ApiError::Internal(format!("listing disks: {e}")))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(crate::reset::Facts {
        system_disk: crate::volumes::system_disk_spec(&discovered).map(|d| d.dev_path),
        volumes: crate::volumes::volume_status_specs(&discovered, &mounts)
            .into_iter()
            .map(|(id, spec)| (id.to_owned(), spec.location, spec.parent_location))
            .collect(),
        disks: disks
            .into_iter()
            .map(|d| (format!("/dev/{}", d.name), d.readonly || d.cdrom))
            .collect(),
    })
}

/// A META key from the wire: upstream's keys are one byte.
fn meta_key(key: u32) -> Result<u8, ApiError> {
    u8::try_from(key).map_err(|_| {
        ApiError::InvalidArgument(format!("META key {key:#x} does not fit in a uint8"))
    })
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn health_pb(h: &Health) -> pb::ServiceHealth {
    pb::ServiceHealth {
        unknown: h.unknown,
        healthy: h.healthy,
        last_message: h.last_message.clone(),
        last_change: h.last_change.map(ts),
    }
}

fn service_pb(s: &ServiceStatus) -> pb::ServiceInfo {
    pb::ServiceInfo {
        id: s.id.clone(),
        state: s.state.as_str().to_owned(),
        events: Some(pb::ServiceEvents {
            events: s
                .events
                .iter()
                .map(|e| pb::ServiceEvent {
                    msg: e.msg.clone(),
                    state: e.state.as_str().to_owned(),
                    ts: Some(ts(e.ts)),
                })
                .collect(),
        }),
        health: Some(health_pb(&s.health)),
    }
}

fn event_pb(e: &Event) -> pb::Event {
    use prost::Message as _;
    let (name, bytes) = match &e.payload {
        Payload::ServiceState {
            service,
            state,
            message,
            health,
        } => (
            "machine.ServiceStateEvent",
            pb::ServiceStateEvent {
                service: service.clone(),
                action: state.number(),
                message: message.clone(),
                health: Some(health_pb(health)),
            }
            .encode_to_vec(),
        ),
        Payload::Sequence {
            sequence,
            start,
            error,
        } => (
            "machine.SequenceEvent",
            pb::SequenceEvent {
                sequence: sequence.clone(),
                action: if *start { 1 } else { 2 },
                error: error.as_ref().map(|m| api::common::Error {
                    code: 0,
                    message: m.clone(),
                    details: vec![],
                }),
            }
            .encode_to_vec(),
        ),
        Payload::Phase { phase, start } => (
            "machine.PhaseEvent",
            pb::PhaseEvent {
                phase: phase.clone(),
                action: if *start { 0 } else { 1 },
            }
            .encode_to_vec(),
        ),
        Payload::MachineStatus {
            stage,
            ready,
            unmet,
        } => (
            "machine.MachineStatusEvent",
            pb::MachineStatusEvent {
                stage: stage.number(),
                status: Some(pb::machine_status_event::MachineStatus {
                    ready: *ready,
                    unmet_conditions: unmet
                        .iter()
                        .map(|(name, reason)| {
                            pb::machine_status_event::machine_status::UnmetCondition {
                                name: name.clone(),
                                reason: reason.clone(),
                            }
                        })
                        .collect(),
                }),
            }
            .encode_to_vec(),
        ),
        Payload::ConfigLoadError { error } => (
            "machine.ConfigLoadErrorEvent",
            pb::ConfigLoadErrorEvent {
                error: error.clone(),
            }
            .encode_to_vec(),
        ),
    };
    pb::Event {
        metadata: None,
        data: Some(prost_types::Any {
            type_url: format!("talos/runtime/{name}"),
            value: bytes,
        }),
        id: e.id.clone(),
        actor_id: e.actor_id.clone(),
    }
}

fn data(bytes: Bytes) -> Data {
    Data {
        metadata: None,
        bytes,
    }
}

/// Forwards a domain channel as a response stream.
fn stream_of<T: Send + 'static, U: Send + 'static>(
    rx: mpsc::Receiver<T>,
    f: impl Fn(T) -> Result<U, Status> + Send + 'static,
) -> Stream_<U> {
    Box::pin(ReceiverStream::new(rx).map(f))
}

/// The running image's version (`VERSION_ID` of `/etc/os-release`, which
/// imager writes with `ID=talos-rs`), else this build's (container mode,
/// where `/etc/os-release` is the host's).
///
/// Read once: the image's root is read-only and a new version needs a
/// reboot, and Version is the call clients poll, so it should not open a
/// file each time.
pub fn version_tag() -> String {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let version = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| image_version(&t))
            .unwrap_or_else(|| machinery::constants::VERSION.to_owned());
        if version.starts_with('v') {
            version
        } else {
            format!("v{version}")
        }
    })
    .clone()
}

/// `VERSION_ID` of an os-release text that is ours (`ID=talos-rs`). Pure.
#[must_use]
pub fn image_version(os_release: &str) -> Option<String> {
    let value = |key: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    if value("ID=").as_deref() != Some("talos-rs") {
        return None;
    }
    value("VERSION_ID=").filter(|v| !v.is_empty())
}

/// Upgrades the node from `image` (fetch, verify, write the inactive
/// slot), holding the lifecycle lock, with the `upgrade` sequence events
/// around it. Progress lines go to `progress`.
///
/// # Errors
/// [`InstallError`].
pub async fn run_upgrade(
    node: &Arc<Node>,
    image: String,
    progress: crate::install::Progress,
) -> Result<Upgraded, InstallError> {
    if node.mode() == Mode::Container {
        return Err(InstallError::NotInstalled);
    }
    let booted = crate::bootloader::booted_slot(&crate::boot::read_cmdline())
        .ok_or(InstallError::NotInstalled)?;
    let _guard = node.lifecycle.try_lock().map_err(|_| InstallError::Busy)?;
    if node.going_down() {
        return Err(InstallError::Busy);
    }
    node.events.publish(
        Payload::Sequence {
            sequence: "upgrade".into(),
            start: true,
            error: None,
        },
        "",
    );
    let settings = crate::install::FetchSettings::from_config(node.config.current().as_deref());
    let result = tokio::task::spawn_blocking(move || {
        crate::install::upgrade(&image, booted, &settings, &progress)
    })
    .await
    .unwrap_or_else(|e| {
        Err(InstallError::Step {
            step: "upgrade task",
            message: e.to_string(),
        })
    });
    node.events.publish(
        Payload::Sequence {
            sequence: "upgrade".into(),
            start: false,
            error: result.as_ref().err().map(ToString::to_string),
        },
        "",
    );
    result
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[tonic::async_trait]
impl MachineService for MachineApi {
    async fn version(&self, _: Request<()>) -> Result<Response<pb::VersionResponse>, Status> {
        let maintenance = self.node.in_maintenance();
        Ok(Response::new(pb::VersionResponse {
            messages: vec![pb::Version {
                metadata: None,
                version: Some(pb::VersionInfo {
                    tag: version_tag(),
                    sha: option_env!("BUILD_SHA").unwrap_or("undefined").to_owned(),
                    built: String::new(),
                    go_version: "rust".to_owned(),
                    os: std::env::consts::OS.to_owned(),
                    arch: arch().to_owned(),
                }),
                platform: Some(pb::PlatformInfo {
                    name: self.node.mode().as_str().to_owned(),
                    mode: self.node.mode().as_str().to_owned(),
                }),
                features: (!maintenance).then_some(pb::FeaturesInfo { rbac: true }),
            }],
        }))
    }

    async fn hostname(&self, _: Request<()>) -> Result<Response<pb::HostnameResponse>, Status> {
        Ok(Response::new(pb::HostnameResponse {
            messages: vec![pb::Hostname {
                metadata: None,
                hostname: self.node.hostname(),
            }],
        }))
    }

    async fn service_list(
        &self,
        _: Request<()>,
    ) -> Result<Response<pb::ServiceListResponse>, Status> {
        // machined itself is a service too, as upstream lists it.
        let me = pb::ServiceInfo {
            id: "machined".into(),
            state: ServiceState::Running.as_str().into(),
            events: Some(pb::ServiceEvents {
                events: vec![pb::ServiceEvent {
                    msg: "Service started".into(),
                    state: ServiceState::Running.as_str().into(),
                    ts: Some(ts(self.node.started)),
                }],
            }),
            health: Some(pb::ServiceHealth {
                unknown: false,
                healthy: true,
                last_message: String::new(),
                last_change: Some(ts(self.node.started)),
            }),
        };
        let mut services: Vec<pb::ServiceInfo> =
            self.supervisor_statuses().iter().map(service_pb).collect();
        services.push(me);
        services.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(pb::ServiceListResponse {
            messages: vec![pb::ServiceList {
                metadata: None,
                services,
            }],
        }))
    }

    async fn service_start(
        &self,
        req: Request<pb::ServiceStartRequest>,
    ) -> Result<Response<pb::ServiceStartResponse>, Status> {
        let id = req.into_inner().id;
        self.supervisor_to_start()?
            .start(&id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ServiceStartResponse {
            messages: vec![pb::ServiceStart {
                metadata: None,
                resp: format!("Service {id:?} started"),
            }],
        }))
    }

    async fn service_stop(
        &self,
        req: Request<pb::ServiceStopRequest>,
    ) -> Result<Response<pb::ServiceStopResponse>, Status> {
        let id = req.into_inner().id;
        self.supervisor()?.stop(&id).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ServiceStopResponse {
            messages: vec![pb::ServiceStop {
                metadata: None,
                resp: format!("Service {id:?} stopped"),
            }],
        }))
    }

    async fn service_restart(
        &self,
        req: Request<pb::ServiceRestartRequest>,
    ) -> Result<Response<pb::ServiceRestartResponse>, Status> {
        let id = req.into_inner().id;
        self.supervisor_to_start()?
            .restart(&id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ServiceRestartResponse {
            messages: vec![pb::ServiceRestart {
                metadata: None,
                resp: format!("Service {id:?} restarted"),
            }],
        }))
    }

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<Stream_<Data>>, Status> {
        let req = req.into_inner();
        let log = self
            .node
            .logs
            .get(&req.id)
            .ok_or_else(|| ApiError::NotFound(format!("log {:?} not found", req.id)))?;
        let tail = usize::try_from(req.tail_lines).ok();
        let mut offset = log.start_offset(tail);
        let follow = req.follow;
        let (tx, rx) = mpsc::channel::<Result<Data, Status>>(16);
        tokio::spawn(async move {
            loop {
                let (chunk, next) = log.read(offset, MAX_CHUNK);
                if chunk.is_empty() {
                    if !follow {
                        return;
                    }
                    tokio::select! {
                        () = log.wait_beyond(offset) => continue,
                        () = tx.closed() => return,
                    }
                }
                offset = next;
                if tx.send(Ok(data(chunk))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn logs_containers(
        &self,
        _: Request<()>,
    ) -> Result<Response<pb::LogsContainersResponse>, Status> {
        Ok(Response::new(pb::LogsContainersResponse {
            messages: vec![pb::LogsContainer {
                metadata: None,
                ids: self.node.logs.ids(),
            }],
        }))
    }

    async fn dmesg(
        &self,
        req: Request<pb::DmesgRequest>,
    ) -> Result<Response<Stream_<Data>>, Status> {
        let req = req.into_inner();
        let rx = crate::kmsg::stream(req.follow, req.tail).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                ApiError::FailedPrecondition(format!("reading /dev/kmsg: {e}"))
            } else {
                ApiError::Internal(format!("reading /dev/kmsg: {e}"))
            }
        })?;
        Ok(Response::new(stream_of(rx, |line| match line {
            Ok(l) => Ok(data(Bytes::from(l))),
            Err(e) => Err(Status::internal(format!("reading /dev/kmsg: {e}"))),
        })))
    }

    async fn memory(&self, _: Request<()>) -> Result<Response<pb::MemoryResponse>, Status> {
        let m = stats::meminfo().map_err(ApiError::from)?;
        let kb = |v: u64| v / 1024;
        let okb = |v: Option<u64>| v.map_or(0, kb);
        let meminfo = pb::MemInfo {
            memtotal: kb(m.mem_total),
            memfree: kb(m.mem_free),
            memavailable: okb(m.mem_available),
            buffers: kb(m.buffers),
            cached: kb(m.cached),
            swapcached: kb(m.swap_cached),
            active: kb(m.active),
            inactive: kb(m.inactive),
            activeanon: okb(m.active_anon),
            inactiveanon: okb(m.inactive_anon),
            activefile: okb(m.active_file),
            inactivefile: okb(m.inactive_file),
            unevictable: okb(m.unevictable),
            mlocked: okb(m.mlocked),
            swaptotal: kb(m.swap_total),
            swapfree: kb(m.swap_free),
            dirty: kb(m.dirty),
            writeback: kb(m.writeback),
            anonpages: okb(m.anon_pages),
            mapped: kb(m.mapped),
            shmem: okb(m.shmem),
            slab: kb(m.slab),
            sreclaimable: okb(m.s_reclaimable),
            sunreclaim: okb(m.s_unreclaim),
            kernelstack: okb(m.kernel_stack),
            pagetables: okb(m.page_tables),
            nfsunstable: okb(m.nfs_unstable),
            bounce: okb(m.bounce),
            writebacktmp: okb(m.writeback_tmp),
            commitlimit: okb(m.commit_limit),
            committedas: kb(m.committed_as),
            vmalloctotal: kb(m.vmalloc_total),
            vmallocused: kb(m.vmalloc_used),
            vmallocchunk: kb(m.vmalloc_chunk),
            hardwarecorrupted: okb(m.hardware_corrupted),
            anonhugepages: okb(m.anon_hugepages),
            shmemhugepages: okb(m.shmem_hugepages),
            shmempmdmapped: okb(m.shmem_pmd_mapped),
            cmatotal: okb(m.cma_total),
            cmafree: okb(m.cma_free),
            hugepagestotal: m.hugepages_total.unwrap_or(0),
            hugepagesfree: m.hugepages_free.unwrap_or(0),
            hugepagesrsvd: m.hugepages_rsvd.unwrap_or(0),
            hugepagessurp: m.hugepages_surp.unwrap_or(0),
            hugepagesize: okb(m.hugepagesize),
            directmap4k: okb(m.direct_map_4k),
            directmap2m: okb(m.direct_map_2M),
            directmap1g: okb(m.direct_map_1G),
        };
        Ok(Response::new(pb::MemoryResponse {
            messages: vec![pb::Memory {
                metadata: None,
                meminfo: Some(meminfo),
            }],
        }))
    }

    async fn load_avg(&self, _: Request<()>) -> Result<Response<pb::LoadAvgResponse>, Status> {
        let l = stats::loadavg().map_err(ApiError::from)?;
        Ok(Response::new(pb::LoadAvgResponse {
            messages: vec![pb::LoadAvg {
                metadata: None,
                load1: f64::from(l.one),
                load5: f64::from(l.five),
                load15: f64::from(l.fifteen),
            }],
        }))
    }

    async fn system_stat(
        &self,
        _: Request<()>,
    ) -> Result<Response<pb::SystemStatResponse>, Status> {
        let k = stats::kernel_stats().map_err(ApiError::from)?;
        let ticks = procfs::ticks_per_second() as f64;
        let secs = |v: u64| v as f64 / ticks;
        let osecs = |v: Option<u64>| v.map_or(0.0, secs);
        let cpu = |c: &procfs::CpuTime| pb::CpuStat {
            user: secs(c.user),
            nice: secs(c.nice),
            system: secs(c.system),
            idle: secs(c.idle),
            iowait: osecs(c.iowait),
            irq: osecs(c.irq),
            soft_irq: osecs(c.softirq),
            steal: osecs(c.steal),
            guest: osecs(c.guest),
            guest_nice: osecs(c.guest_nice),
        };
        Ok(Response::new(pb::SystemStatResponse {
            messages: vec![pb::SystemStat {
                metadata: None,
                boot_time: k.btime,
                cpu_total: Some(cpu(&k.total)),
                cpu: k.cpu_time.iter().map(cpu).collect(),
                irq_total: 0,
                irq: Vec::new(),
                context_switches: k.ctxt,
                process_created: k.processes,
                process_running: u64::from(k.procs_running.unwrap_or(0)),
                process_blocked: u64::from(k.procs_blocked.unwrap_or(0)),
                soft_irq_total: 0,
                soft_irq: None,
            }],
        }))
    }

    async fn disk_stats(&self, _: Request<()>) -> Result<Response<pb::DiskStatsResponse>, Status> {
        let lines = stats::diskstats().map_err(ApiError::from)?;
        let stat = |d: &procfs::DiskStat| pb::DiskStat {
            name: d.name.clone(),
            read_completed: d.reads,
            read_merged: d.merged,
            read_sectors: d.sectors_read,
            read_time_ms: d.time_reading,
            write_completed: d.writes,
            write_merged: d.writes_merged,
            write_sectors: d.sectors_written,
            write_time_ms: d.time_writing,
            io_in_progress: d.in_progress,
            io_time_ms: d.time_in_progress,
            io_time_weighted_ms: d.weighted_time_in_progress,
            discard_completed: d.discards.unwrap_or(0),
            discard_merged: d.discards_merged.unwrap_or(0),
            discard_sectors: d.sectors_discarded.unwrap_or(0),
            discard_time_ms: d.time_discarding.unwrap_or(0),
        };
        let devices: Vec<pb::DiskStat> = lines.iter().map(stat).collect();
        // Upstream's total: the sum of every line, partitions included.
        let total = devices.iter().fold(pb::DiskStat::default(), |mut t, d| {
            t.read_completed += d.read_completed;
            t.read_merged += d.read_merged;
            t.read_sectors += d.read_sectors;
            t.read_time_ms += d.read_time_ms;
            t.write_completed += d.write_completed;
            t.write_merged += d.write_merged;
            t.write_sectors += d.write_sectors;
            t.write_time_ms += d.write_time_ms;
            t.io_in_progress += d.io_in_progress;
            t.io_time_ms += d.io_time_ms;
            t.io_time_weighted_ms += d.io_time_weighted_ms;
            t.discard_completed += d.discard_completed;
            t.discard_merged += d.discard_merged;
            t.discard_sectors += d.discard_sectors;
            t.discard_time_ms += d.discard_time_ms;
            t
        });
        Ok(Response::new(pb::DiskStatsResponse {
            messages: vec![pb::DiskStats {
                metadata: None,
                total: Some(total),
                devices,
            }],
        }))
    }

    async fn network_device_stats(
        &self,
        _: Request<()>,
    ) -> Result<Response<pb::NetworkDeviceStatsResponse>, Status> {
        let links = stats::net_dev().map_err(ApiError::from)?;
        let dev = |l: &procfs::net::DeviceStatus| pb::NetDev {
            name: l.name.clone(),
            rx_bytes: l.recv_bytes,
            rx_packets: l.recv_packets,
            rx_errors: l.recv_errs,
            rx_dropped: l.recv_drop,
            rx_fifo: l.recv_fifo,
            rx_frame: l.recv_frame,
            rx_compressed: l.recv_compressed,
            rx_multicast: l.recv_multicast,
            tx_bytes: l.sent_bytes,
            tx_packets: l.sent_packets,
            tx_errors: l.sent_errs,
            tx_dropped: l.sent_drop,
            tx_fifo: l.sent_fifo,
            tx_collisions: l.sent_colls,
            tx_carrier: l.sent_carrier,
            tx_compressed: l.sent_compressed,
        };
        let devices: Vec<pb::NetDev> = links.iter().map(dev).collect();
        let total = devices.iter().fold(
            pb::NetDev {
                name: "total".to_owned(),
                ..pb::NetDev::default()
            },
            |mut t, d| {
                t.rx_bytes += d.rx_bytes;
                t.rx_packets += d.rx_packets;
                t.rx_errors += d.rx_errors;
                t.rx_dropped += d.rx_dropped;
                t.rx_fifo += d.rx_fifo;
                t.rx_frame += d.rx_frame;
                t.rx_compressed += d.rx_compressed;
                t.rx_multicast += d.rx_multicast;
                t.tx_bytes += d.tx_bytes;
                t.tx_packets += d.tx_packets;
                t.tx_errors += d.tx_errors;
                t.tx_dropped += d.tx_dropped;
                t.tx_fifo += d.tx_fifo;
                t.tx_collisions += d.tx_collisions;
                t.tx_carrier += d.tx_carrier;
                t.tx_compressed += d.tx_compressed;
                t
            },
        );
        Ok(Response::new(pb::NetworkDeviceStatsResponse {
            messages: vec![pb::NetworkDeviceStats {
                metadata: None,
                total: Some(total),
                devices,
            }],
        }))
    }

    async fn cpu_freq_stats(
        &self,
        _: Request<()>,
    ) -> Result<Response<pb::CpuFreqStatsResponse>, Status> {
        let cpus = stats::cpu_freq(std::path::Path::new("/sys/devices/system/cpu"));
        Ok(Response::new(pb::CpuFreqStatsResponse {
            messages: vec![pb::CpUsFreqStats {
                metadata: None,
                cpu_freq_stats: cpus
                    .into_iter()
                    .map(|c| pb::CpuFreqStats {
                        current_frequency: c.current,
                        minimum_frequency: c.minimum,
                        maximum_frequency: c.maximum,
                        governor: c.governor,
                    })
                    .collect(),
            }],
        }))
    }

    async fn cpu_info(&self, _: Request<()>) -> Result<Response<pb::CpuInfoResponse>, Status> {
        let info = stats::cpuinfo().map_err(ApiError::from)?;
        let cpus = (0..info.num_cores())
            .map(|i| {
                let get = |k: &str| info.get_field(i, k).unwrap_or_default().to_owned();
                let num = |k: &str| {
                    info.get_field(i, k)
                        .and_then(|v| v.trim().parse::<u32>().ok())
                        .unwrap_or(0)
                };
                let float = |k: &str| {
                    info.get_field(i, k)
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                let list = |k: &str| {
                    info.get_field(i, k)
                        .map(|v| v.split_whitespace().map(str::to_owned).collect())
                        .unwrap_or_default()
                };
                pb::CpuInfo {
                    processor: num("processor"),
                    vendor_id: get("vendor_id"),
                    cpu_family: get("cpu family"),
                    model: get("model"),
                    model_name: get("model name"),
                    stepping: get("stepping"),
                    microcode: get("microcode"),
                    cpu_mhz: float("cpu MHz"),
                    cache_size: get("cache size"),
                    physical_id: get("physical id"),
                    siblings: num("siblings"),
                    core_id: get("core id"),
                    cpu_cores: num("cpu cores"),
                    apic_id: get("apicid"),
                    initial_apic_id: get("initial apicid"),
                    fpu: get("fpu"),
                    fpu_exception: get("fpu_exception"),
                    cpu_id_level: num("cpuid level"),
                    wp: get("wp"),
                    flags: list("flags"),
                    bugs: list("bugs"),
                    bogo_mips: float("bogomips"),
                    cl_flush_size: num("clflush size"),
                    cache_alignment: num("cache_alignment"),
                    address_sizes: get("address sizes"),
                    power_management: get("power management"),
                }
            })
            .collect();
        Ok(Response::new(pb::CpuInfoResponse {
            messages: vec![pb::CpUsInfo {
                metadata: None,
                cpu_info: cpus,
            }],
        }))
    }

    async fn processes(&self, _: Request<()>) -> Result<Response<pb::ProcessesResponse>, Status> {
        let procs = stats::processes().map_err(ApiError::from)?;
        Ok(Response::new(pb::ProcessesResponse {
            messages: vec![pb::Process {
                metadata: None,
                processes: procs
                    .into_iter()
                    .map(|p| pb::ProcessInfo {
                        pid: p.pid,
                        ppid: p.ppid,
                        state: p.state,
                        threads: p.threads,
                        cpu_time: p.cpu_time,
                        virtual_memory: p.virtual_memory,
                        resident_memory: p.resident_memory,
                        command: p.command,
                        executable: p.executable,
                        args: p.args,
                        label: String::new(),
                    })
                    .collect(),
            }],
        }))
    }

    async fn mounts(&self, _: Request<()>) -> Result<Response<pb::MountsResponse>, Status> {
        let mounts = stats::mounts().map_err(ApiError::from)?;
        Ok(Response::new(pb::MountsResponse {
            messages: vec![pb::Mounts {
                metadata: None,
                stats: mounts
                    .into_iter()
                    .map(|m| pb::MountStat {
                        filesystem: m.filesystem,
                        size: m.size,
                        available: m.available,
                        mounted_on: m.mounted_on,
                    })
                    .collect(),
            }],
        }))
    }

    async fn packet_capture(
        &self,
        req: Request<pb::PacketCaptureRequest>,
    ) -> Result<Response<Stream_<Data>>, Status> {
        let capture = crate::pcap::Capture::from_wire(req.into_inner()).map_err(ApiError::from)?;
        let rx = crate::pcap::start(capture, std::path::Path::new("/sys/class/net"))
            .map_err(ApiError::from)?;
        Ok(Response::new(stream_of(rx, |chunk| {
            chunk.map(data).map_err(|e| Status::from(ApiError::from(e)))
        })))
    }

    async fn netstat(
        &self,
        req: Request<pb::NetstatRequest>,
    ) -> Result<Response<pb::NetstatResponse>, Status> {
        use crate::netstat::{self, Filter, Proto};
        use pb::netstat_request::Filter as WireFilter;

        let req = req.into_inner();
        if let Some(name) = req.netns.as_ref().and_then(|n| n.netns.first()) {
            return Err(ApiError::InvalidArgument(format!(
                "network namespace {name:?}: only the host network is inspected (this node runs no pods)"
            ))
            .into());
        }
        let filter = match WireFilter::try_from(req.filter) {
            Ok(WireFilter::All) => Filter::All,
            Ok(WireFilter::Connected) => Filter::Connected,
            Ok(WireFilter::Listening) => Filter::Listening,
            Err(_) => {
                return Err(
                    ApiError::InvalidArgument(format!("unknown filter {}", req.filter)).into(),
                );
            }
        };
        // No family asked for means every family, as netstat without flags.
        let l4 = req.l4proto.unwrap_or_default();
        let asked = [
            l4.tcp,
            l4.tcp6,
            l4.udp,
            l4.udp6,
            l4.udplite,
            l4.udplite6,
            l4.raw,
            l4.raw6,
        ];
        let protos: Vec<Proto> = if asked.iter().any(|&a| a) {
            Proto::ALL
                .into_iter()
                .zip(asked)
                .filter_map(|(p, a)| a.then_some(p))
                .collect()
        } else {
            Proto::ALL.to_vec()
        };
        let with_pids = req.feature.is_some_and(|f| f.pid);
        let (sockets, owners) = tokio::task::spawn_blocking(move || {
            let sockets = netstat::sockets(std::path::Path::new("/proc/net"), &protos, filter)?;
            let owners = with_pids.then(|| netstat::socket_owners(std::path::Path::new("/proc")));
            Ok::<_, netstat::NetstatError>((sockets, owners))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("netstat task: {e}")))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        let records = sockets
            .into_iter()
            .map(|s| pb::ConnectRecord {
                l4proto: s.proto.name().to_owned(),
                localip: crate::netstat::shown_ip(s.local.ip()),
                localport: u32::from(s.local.port()),
                remoteip: crate::netstat::shown_ip(s.remote.ip()),
                remoteport: u32::from(s.remote.port()),
                state: i32::try_from(s.state).unwrap_or_default(),
                txqueue: s.tx_queue,
                rxqueue: s.rx_queue,
                tr: i32::try_from(s.timer).unwrap_or_default(),
                timerwhen: s.timer_when,
                retrnsmt: s.retransmits,
                uid: s.uid,
                timeout: s.timeout,
                inode: s.inode,
                r#ref: s.refs,
                pointer: s.pointer,
                process: owners.as_ref().map(|o| {
                    let (pid, name) = o.get(&s.inode).cloned().unwrap_or_default();
                    pb::connect_record::Process { pid, name }
                }),
                netns: String::new(),
            })
            .collect();
        Ok(Response::new(pb::NetstatResponse {
            messages: vec![pb::Netstat {
                metadata: None,
                connectrecord: records,
            }],
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<Stream_<pb::FileInfo>>, Status> {
        let req = req.into_inner();
        let types = req
            .types
            .iter()
            .map(|t| match pb::list_request::Type::try_from(*t) {
                Ok(pb::list_request::Type::Regular) => Ok(files::EntryType::Regular),
                Ok(pb::list_request::Type::Directory) => Ok(files::EntryType::Directory),
                Ok(pb::list_request::Type::Symlink) => Ok(files::EntryType::Symlink),
                Err(_) => Err(ApiError::InvalidArgument(format!("unknown file type {t}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rx = files::list(files::ListRequest {
            root: req.root,
            recurse: req.recurse,
            depth: u32::try_from(req.recursion_depth).unwrap_or(0),
            types,
        })
        .map_err(ApiError::from)?;
        Ok(Response::new(stream_of(rx, |e| {
            Ok(pb::FileInfo {
                metadata: None,
                name: e.name,
                size: e.size,
                mode: e.mode,
                modified: e.modified,
                is_dir: e.is_dir,
                error: e.error,
                link: e.link,
                relative_name: e.relative_name,
                uid: e.uid,
                gid: e.gid,
                xattrs: Vec::new(),
            })
        })))
    }

    async fn read(&self, req: Request<pb::ReadRequest>) -> Result<Response<Stream_<Data>>, Status> {
        let rx = files::read(&req.into_inner().path).map_err(ApiError::from)?;
        Ok(Response::new(stream_of(rx, |c| {
            c.map(data).map_err(|e| Status::from(ApiError::from(e)))
        })))
    }

    async fn copy(&self, req: Request<pb::CopyRequest>) -> Result<Response<Stream_<Data>>, Status> {
        let rx = files::copy(&req.into_inner().root_path).map_err(ApiError::from)?;
        Ok(Response::new(stream_of(rx, |c| {
            c.map(data).map_err(|e| Status::from(ApiError::from(e)))
        })))
    }

    async fn disk_usage(
        &self,
        req: Request<pb::DiskUsageRequest>,
    ) -> Result<Response<Stream_<pb::DiskUsageInfo>>, Status> {
        let req = req.into_inner();
        let rx = files::disk_usage(files::UsageRequest {
            paths: req.paths,
            all: req.all,
            depth: u32::try_from(req.recursion_depth).unwrap_or(0),
            threshold: req.threshold,
        })
        .map_err(ApiError::from)?;
        Ok(Response::new(stream_of(rx, |u| {
            Ok(pb::DiskUsageInfo {
                metadata: None,
                name: u.name,
                size: u.size,
                error: u.error,
                relative_name: u.relative_name,
            })
        })))
    }

    async fn reboot(
        &self,
        _: Request<pb::RebootRequest>,
    ) -> Result<Response<pb::RebootResponse>, Status> {
        self.refuse_in_container("reboot")?;
        let actor_id = self
            .node
            .try_request_power(PowerAction::Reboot)
            .ok_or_else(going_down)?;
        Ok(Response::new(pb::RebootResponse {
            messages: vec![pb::Reboot {
                metadata: None,
                actor_id,
            }],
        }))
    }

    async fn upgrade(
        &self,
        req: Request<pb::UpgradeRequest>,
    ) -> Result<Response<pb::UpgradeResponse>, Status> {
        self.refuse_in_container("upgrade")?;
        let req = req.into_inner();
        // `preserve` only skipped checks upstream since v1.8 (EPHEMERAL is
        // never wiped); `force` skips etcd checks this OS has none of.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        // A task of its own: a caller that goes away mid-call must not
        // drop the lifecycle lock while the installer is still writing.
        let node = Arc::clone(&self.node);
        let (image, stage) = (req.image, req.stage);
        let upgraded = tokio::spawn(async move { run_upgrade(&node, image, tx).await })
            .await
            .map_err(|e| ApiError::Internal(format!("upgrade task: {e}")))?
            .map_err(ApiError::from)?;
        let _ = drain.await;
        let (ack, actor_id) = if stage {
            (
                format!(
                    "Upgrade staged: slot {} holds {}; it boots at the next reboot",
                    upgraded.slot, upgraded.version
                ),
                String::new(),
            )
        } else {
            (
                format!(
                    "Upgrade request received: slot {} holds {}; rebooting into it",
                    upgraded.slot, upgraded.version
                ),
                self.node.request_power(PowerAction::Reboot),
            )
        };
        Ok(Response::new(pb::UpgradeResponse {
            messages: vec![pb::Upgrade {
                metadata: None,
                ack,
                actor_id,
            }],
        }))
    }

    async fn rollback(
        &self,
        _: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        self.refuse_in_container("rollback")?;
        let booted = crate::bootloader::booted_slot(&crate::boot::read_cmdline()).ok_or_else(
            || {
                ApiError::FailedPrecondition(
                    "the node was not booted from an installed disk (no talos.slot= on the kernel command line)"
                        .into(),
                )
            },
        )?;
        let _guard = self
            .node
            .lifecycle
            .try_lock()
            .map_err(|_| ApiError::from(InstallError::Busy))?;
        let result = tokio::task::spawn_blocking(move || {
            crate::bootloader::with_esp(|esp| crate::bootloader::rollback(esp, booted))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("rollback task: {e}")))?;
        let slot = match result {
            Ok(slot) => slot,
            Err(
                e @ (crate::bootloader::BootloaderError::NoOtherSlot { .. }
                | crate::bootloader::BootloaderError::FailedSlot { .. }),
            ) => {
                return Err(ApiError::FailedPrecondition(e.to_string()).into());
            }
            Err(e) => return Err(ApiError::Internal(e.to_string()).into()),
        };
        tracing::info!(from = %booted, to = %slot, "rolling back: rebooting into the other slot");
        self.node.request_power(PowerAction::Reboot);
        Ok(Response::new(pb::RollbackResponse {
            messages: vec![pb::Rollback { metadata: None }],
        }))
    }

    async fn meta_write(
        &self,
        req: Request<pb::MetaWriteRequest>,
    ) -> Result<Response<pb::MetaWriteResponse>, Status> {
        let req = req.into_inner();
        let key = meta_key(req.key)?;
        self.change_meta(MetaChange::Write(key, req.value)).await?;
        Ok(Response::new(pb::MetaWriteResponse {
            messages: vec![pb::MetaWrite { metadata: None }],
        }))
    }

    async fn meta_delete(
        &self,
        req: Request<pb::MetaDeleteRequest>,
    ) -> Result<Response<pb::MetaDeleteResponse>, Status> {
        let key = meta_key(req.into_inner().key)?;
        self.change_meta(MetaChange::Delete(key)).await?;
        Ok(Response::new(pb::MetaDeleteResponse {
            messages: vec![pb::MetaDelete { metadata: None }],
        }))
    }

    async fn shutdown(
        &self,
        _: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        self.refuse_in_container("shutdown")?;
        let actor_id = self
            .node
            .try_request_power(PowerAction::Shutdown)
            .ok_or_else(going_down)?;
        Ok(Response::new(pb::ShutdownResponse {
            messages: vec![pb::Shutdown {
                metadata: None,
                actor_id,
            }],
        }))
    }

    async fn reset(
        &self,
        req: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::ResetResponse>, Status> {
        self.refuse_in_container("reset")?;
        if self.node.powering_down() {
            return Err(going_down().into());
        }
        let request = crate::reset::ResetRequest::from_wire(req.get_ref())?;
        let plan = crate::reset::plan(&request, &reset_facts().await?)?;
        // Not in the middle of an install or upgrade.
        let _guard = self
            .node
            .lifecycle
            .try_lock()
            .map_err(|_| ApiError::from(InstallError::Busy))?;
        tracing::info!(?plan, "reset requested");
        let actor_id = self.node.request_reset(plan).ok_or_else(going_down)?;
        Ok(Response::new(pb::ResetResponse {
            messages: vec![pb::Reset {
                metadata: None,
                actor_id,
            }],
        }))
    }

    #[allow(
        deprecated,
        reason = "REBOOT is deprecated upstream but still on the wire"
    )]
    async fn apply_configuration(
        &self,
        req: Request<pb::ApplyConfigurationRequest>,
    ) -> Result<Response<pb::ApplyConfigurationResponse>, Status> {
        use pb::apply_configuration_request::Mode as M;
        let req = req.into_inner();
        let mode = match M::try_from(req.mode) {
            Ok(M::Reboot) => ApplyMode::Reboot,
            Ok(M::Auto) => ApplyMode::Auto,
            Ok(M::NoReboot) => ApplyMode::NoReboot,
            Ok(M::Staged) => ApplyMode::Staged,
            Ok(M::Try) => ApplyMode::Try(
                req.try_mode_timeout
                    .and_then(|d| Duration::try_from(d).ok())
                    .filter(|d| !d.is_zero())
                    .unwrap_or(DEFAULT_TRY_TIMEOUT),
            ),
            Err(_) => {
                return Err(
                    ApiError::InvalidArgument(format!("unknown apply mode {}", req.mode)).into(),
                );
            }
        };
        if self.node.maintenance_run && !self.node.in_maintenance() {
            return Err(ApiError::FailedPrecondition(
                "a machine config was applied in maintenance mode: the node is starting from it (or installing); apply again once it answers over mTLS".into(),
            )
            .into());
        }
        tracing::info!(?mode, dry_run = req.dry_run, "applying a machine config");
        let outcome = self
            .node
            .config
            .apply(&req.data, mode, req.dry_run, self.node.in_maintenance())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "machine config refused");
                ApiError::from(e)
            })?;
        let reply_mode = match outcome.mode {
            ApplyMode::Reboot => M::Reboot,
            ApplyMode::Auto => M::Auto,
            ApplyMode::NoReboot => M::NoReboot,
            ApplyMode::Staged => M::Staged,
            ApplyMode::Try(_) => M::Try,
        };
        Ok(Response::new(pb::ApplyConfigurationResponse {
            messages: vec![pb::ApplyConfiguration {
                metadata: None,
                warnings: outcome.warnings,
                mode: reply_mode as i32,
                mode_details: outcome.details,
            }],
        }))
    }

    async fn generate_client_configuration(
        &self,
        req: Request<pb::GenerateClientConfigurationRequest>,
    ) -> Result<Response<pb::GenerateClientConfigurationResponse>, Status> {
        let req = req.into_inner();
        let config = self.node.config.current().ok_or_else(|| {
            ApiError::FailedPrecondition("the node has no machine config yet".into())
        })?;
        let Some(key) = config.ca_key_pem() else {
            return Err(ApiError::FailedPrecondition(
                "client configuration can only be generated on a control plane node (it holds the OS CA key)".into(),
            )
            .into());
        };
        let roles = if req.roles.is_empty() {
            vec![api::roles::Role::Admin.as_str().to_owned()]
        } else {
            req.roles
        };
        if let Some(unknown) = roles.iter().find(|r| api::roles::Role::parse(r).is_none()) {
            return Err(ApiError::InvalidArgument(format!("unknown role {unknown:?}")).into());
        }
        let ttl = req
            .crt_ttl
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(machinery::pki::CLIENT_CERT_TTL);
        let ca = machinery::pki::CertificateAndKey {
            cert_pem: String::from_utf8_lossy(config.ca_crt_pem()).into_owned(),
            key_pem: String::from_utf8_lossy(key).into_owned(),
        };
        let issued = {
            let (ca, roles) = (ca.clone(), roles.clone());
            // Key generation and signing are CPU work: off the runtime.
            tokio::task::spawn_blocking(move || {
                machinery::pki::issue_client_cert(&ca, &roles, ttl, SystemTime::now())
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?
        };
        let cluster = config.cluster_name().unwrap_or("talos").to_owned();
        let mut talosconfig =
            machinery::talosconfig::TalosConfig::new_for(&cluster, &ca.cert_pem, &issued);
        if let (Some(ctx), Some(listen)) = (
            talosconfig.contexts.get_mut(&cluster),
            self.node.options.apid_listen,
        ) && !listen.ip().is_unspecified()
        {
            ctx.endpoints = vec![listen.ip().to_string()];
        }
        let talosconfig = talosconfig
            .to_yaml()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        tracing::info!(?roles, ?ttl, "issued a client configuration");
        Ok(Response::new(pb::GenerateClientConfigurationResponse {
            messages: vec![pb::GenerateClientConfiguration {
                metadata: None,
                ca: ca.cert_pem.into_bytes(),
                crt: issued.cert_pem.into_bytes(),
                key: issued.key_pem.into_bytes(),
                talosconfig: talosconfig.into_bytes(),
            }],
        }))
    }

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Stream_<pb::Event>>, Status> {
        let req = req.into_inner();
        let tail = Tail {
            events: req.tail_events,
            after_id: (!req.tail_id.is_empty()).then_some(req.tail_id),
            seconds: u32::try_from(req.tail_seconds).ok().filter(|s| *s > 0),
            actor_id: (!req.with_actor_id.is_empty()).then_some(req.with_actor_id),
        };
        let (backlog, mut live) = self.node.events.watch(&tail);
        let actor = tail.actor_id.clone();
        let (tx, rx) = mpsc::channel::<Result<pb::Event, Status>>(64);
        tokio::spawn(async move {
            // The hello event: tells the client the stream is up.
            let hello = pb::Event {
                metadata: None,
                data: Some(prost_types::Any::default()),
                id: String::new(),
                actor_id: String::new(),
            };
            if tx.send(Ok(hello)).await.is_err() {
                return;
            }
            for e in &backlog {
                if tx.send(Ok(event_pb(e))).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    e = live.recv() => match e {
                        Ok(e) => {
                            if actor.as_deref().is_some_and(|a| a != e.actor_id) {
                                continue;
                            }
                            if tx.send(Ok(event_pb(&e))).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(skipped = n, "events watcher lagged");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// `machine.LifecycleService`: install and upgrade with streamed progress.
/// Neither reboots: the caller does (talosctl calls Reboot), as upstream.
#[derive(Debug, Clone)]
pub struct LifecycleApi {
    node: Arc<Node>,
}

impl LifecycleApi {
    /// Serves `node`.
    #[must_use]
    pub fn new(node: Arc<Node>) -> LifecycleApi {
        LifecycleApi { node }
    }
}

/// The progress stream of an install or upgrade: each line, then the exit
/// code (0, or the failure's code with its message as the last line).
fn progress_stream<T: Send + 'static>(
    wrap: fn(pb::LifecycleServiceInstallProgress) -> T,
    work: impl Future<Output = Result<(), InstallError>> + Send + 'static,
    mut lines: mpsc::UnboundedReceiver<String>,
) -> Stream_<T> {
    use pb::lifecycle_service_install_progress::Response as P;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let forward = async {
            while let Some(line) = lines.recv().await {
                let msg = wrap(pb::LifecycleServiceInstallProgress {
                    response: Some(P::Message(line)),
                });
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
        };
        let (result, ()) = tokio::join!(work, forward);
        let code = match &result {
            Ok(()) => 0,
            Err(e) => {
                let _ = tx
                    .send(Ok(wrap(pb::LifecycleServiceInstallProgress {
                        response: Some(P::Message(format!("error: {e}"))),
                    })))
                    .await;
                exit_code_of(e)
            }
        };
        let _ = tx
            .send(Ok(wrap(pb::LifecycleServiceInstallProgress {
                response: Some(P::ExitCode(code)),
            })))
            .await;
    });
    Box::pin(ReceiverStream::new(rx))
}

/// The exit code a failed install or upgrade reports.
fn exit_code_of(e: &InstallError) -> i32 {
    use crate::install::exit;
    match e {
        InstallError::BadReference { .. } | InstallError::NoImage => exit::BAD_REFERENCE,
        InstallError::Unreachable { .. } => exit::UNREACHABLE,
        InstallError::NotFound { .. } => exit::NOT_FOUND,
        InstallError::Verification { .. } => exit::VERIFICATION,
        InstallError::Unauthorized { .. } => exit::UNAUTHORIZED,
        _ => 1,
    }
}

#[tonic::async_trait]
impl pb::lifecycle_service_server::LifecycleService for LifecycleApi {
    async fn install(
        &self,
        req: Request<pb::LifecycleServiceInstallRequest>,
    ) -> Result<Response<Stream_<pb::LifecycleServiceInstallResponse>>, Status> {
        if self.node.mode() == Mode::Container {
            return Err(Status::failed_precondition(
                "install is not supported in container mode",
            ));
        }
        if let Some(slot) = crate::bootloader::booted_slot(&crate::boot::read_cmdline()) {
            return Err(ApiError::from(InstallError::AlreadyInstalled(slot)).into());
        }
        let req = req.into_inner();
        let image = req.source.map(|s| s.image_name).unwrap_or_default();
        let disk = req.destination.map(|d| d.disk).unwrap_or_default();
        if image.trim().is_empty() {
            return Err(ApiError::from(InstallError::NoImage).into());
        }
        let is_block_device = std::fs::metadata(&disk)
            .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
            .unwrap_or(false);
        if !disk.starts_with("/dev/") || disk.contains("/../") || !is_block_device {
            return Err(ApiError::InvalidArgument(format!(
                "destination disk {disk:?}: not a block device under /dev"
            ))
            .into());
        }
        let node = Arc::clone(&self.node);
        let (tx, rx) = mpsc::unbounded_channel();
        let work = async move {
            let _guard = node.lifecycle.try_lock().map_err(|_| InstallError::Busy)?;
            if node.going_down() {
                return Err(InstallError::Busy);
            }
            let config = node
                .config
                .persisted_bytes()
                .await
                .map_err(|e| InstallError::Step {
                    step: "reading the machine config",
                    message: e.to_string(),
                })?
                .unwrap_or_default();
            let settings =
                crate::install::FetchSettings::from_config(node.config.current().as_deref());
            tokio::task::spawn_blocking(move || {
                crate::install::install(&image, &disk, &config, &settings, &tx).map(|_| ())
            })
            .await
            .unwrap_or_else(|e| {
                Err(InstallError::Step {
                    step: "install task",
                    message: e.to_string(),
                })
            })
        };
        Ok(Response::new(progress_stream(
            |progress| pb::LifecycleServiceInstallResponse {
                progress: Some(progress),
            },
            work,
            rx,
        )))
    }

    async fn upgrade(
        &self,
        req: Request<pb::LifecycleServiceUpgradeRequest>,
    ) -> Result<Response<Stream_<pb::LifecycleServiceUpgradeResponse>>, Status> {
        if self.node.mode() == Mode::Container {
            return Err(Status::failed_precondition(
                "upgrade is not supported in container mode",
            ));
        }
        if crate::bootloader::booted_slot(&crate::boot::read_cmdline()).is_none() {
            return Err(ApiError::from(InstallError::NotInstalled).into());
        }
        let image = req
            .into_inner()
            .source
            .map(|s| s.image_name)
            .unwrap_or_default();
        if image.trim().is_empty() {
            return Err(ApiError::from(InstallError::NoImage).into());
        }
        let node = Arc::clone(&self.node);
        let (tx, rx) = mpsc::unbounded_channel();
        let work = async move { run_upgrade(&node, image, tx).await.map(|_| ()) };
        Ok(Response::new(progress_stream(
            |progress| pb::LifecycleServiceUpgradeResponse {
                progress: Some(progress),
            },
            work,
            rx,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::MetaKeyError;
    use machinery::meta::MetaError;

    #[test]
    fn meta_errors_take_upstreams_codes() {
        let code = |e: ApiError| Status::from(e).code();
        assert_eq!(
            code(meta_key(256).unwrap_err()),
            tonic::Code::InvalidArgument
        );
        assert_eq!(meta_key(0x0c).unwrap(), 0x0c);
        let too_big = MetaError::TooBig {
            tag: 12,
            size: 1 << 20,
            needed: 1 << 20,
            available: machinery::meta::DATA_LENGTH,
        };
        for (error, expect) in [
            (MetaKeyError::NoPartition, tonic::Code::FailedPrecondition),
            (MetaKeyError::NotSet(12), tonic::Code::NotFound),
            (
                MetaKeyError::Refused(MetaError::ReservedTag),
                tonic::Code::InvalidArgument,
            ),
            (
                MetaKeyError::Refused(too_big),
                tonic::Code::ResourceExhausted,
            ),
        ] {
            assert_eq!(code(ApiError::Meta(error)), expect);
        }
    }
}
