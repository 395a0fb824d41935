//! `cosi.resource.State` on machined's socket: the node's resources,
//! read-only.
//!
//! Handlers turn wire requests into calls on [`crate::resources`] and its
//! resources back into wire messages; errors become statuses in
//! [`crate::server::ApiError`].

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use api::cosi::resource as pb;
use api::cosi::resource::state_server::State;
use api::roles::{Role, RoleSet};
use futures_util::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::resources::{Definition, Resource, ResourceError, Resources};
use crate::server::ApiError;

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// How often a watch looks for changes: resources are computed when read,
/// so a watch polls them. A node event (a service's state, the machine's
/// status, a sequence or phase) makes it look at once as well.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a watch woken by a node event waits for the events that come
/// with it, so that a burst is read once.
const WATCH_SETTLE: Duration = Duration::from_millis(20);

/// The State service.
#[derive(Debug)]
pub struct StateApi {
    resources: Arc<Resources>,
    poll: Duration,
}

impl StateApi {
    /// Serves the resources of `node`.
    #[must_use]
    pub fn new(node: Arc<Node>) -> StateApi {
        StateApi::with_poll(node, WATCH_INTERVAL)
    }

    /// As [`StateApi::new`], with watches that poll every `poll`.
    #[must_use]
    pub fn with_poll(node: Arc<Node>, poll: Duration) -> StateApi {
        StateApi {
            resources: Arc::new(Resources::new(node)),
            poll,
        }
    }
}

/// Whether the caller holds os:admin. apid always names the caller's roles
/// in `talos-role`; a call without it came straight to machined's socket,
/// which only root on the node can open.
fn is_admin<T>(request: &Request<T>) -> bool {
    let names: Vec<&str> = request
        .metadata()
        .get_all("talos-role")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    names.is_empty() || RoleSet::from_names(names).contains(Role::Admin)
}

/// An id filter from an `IDQuery`; none when the query is empty.
fn id_filter(query: Option<&pb::IdQuery>) -> Result<Option<regex::Regex>, ResourceError> {
    let Some(query) = query.filter(|q| !q.regexp.is_empty()) else {
        return Ok(None);
    };
    regex::Regex::new(&query.regexp)
        .map(Some)
        .map_err(|e| ResourceError::BadQuery {
            query: query.regexp.clone(),
            message: e.to_string(),
        })
}

fn resource_pb(r: &Resource) -> pb::Resource {
    pb::Resource {
        metadata: Some(pb::Metadata {
            namespace: r.namespace.to_owned(),
            r#type: r.type_.to_owned(),
            id: r.id.clone(),
            version: r.version.to_string(),
            owner: owner(r.type_).to_owned(),
            phase: "running".into(),
            created: Some(r.created.into()),
            updated: Some(r.updated.into()),
            finalizers: Vec::new(),
            labels: std::collections::HashMap::new(),
            annotations: std::collections::HashMap::new(),
        }),
        spec: Some(pb::Spec {
            proto_spec: r.proto.clone(),
            yaml_spec: r.yaml.clone(),
        }),
    }
}

/// Who produces resources of a type: nobody for COSI's own `meta`
/// resources (as upstream), machined for the rest.
fn owner(type_: &str) -> &'static str {
    if type_.ends_with(".meta.cosi.dev") {
        ""
    } else {
        "machined"
    }
}

fn event(resource: pb::Resource, kind: pb::EventType, old: Option<pb::Resource>) -> pb::Event {
    pb::Event {
        resource: Some(resource),
        event_type: kind.into(),
        old,
        error: None,
    }
}

#[tonic::async_trait]
impl State for StateApi {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let admin = is_admin(&request);
        let req = request.into_inner();
        let def = Resources::resolve(&req.namespace, &req.r#type, admin).map_err(ApiError::from)?;
        let resource = self
            .resources
            .get(&req.namespace, def, &req.id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetResponse {
            resource: Some(resource_pb(&resource)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<Stream_<pb::ListResponse>>, Status> {
        let admin = is_admin(&request);
        let req = request.into_inner();
        let def = Resources::resolve(&req.namespace, &req.r#type, admin).map_err(ApiError::from)?;
        let filter = id_filter(req.options.as_ref().and_then(|o| o.id_query.as_ref()))
            .map_err(ApiError::from)?;
        let listed = self
            .resources
            .list(&req.namespace, def)
            .await
            .map_err(ApiError::from)?;
        let replies: Vec<Result<pb::ListResponse, Status>> = listed
            .iter()
            .filter(|r| filter.as_ref().is_none_or(|f| f.is_match(&r.id)))
            .map(|r| {
                Ok(pb::ListResponse {
                    resource: Some(resource_pb(r)),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }

    async fn create(
        &self,
        _: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateResponse>, Status> {
        Err(ApiError::from(ResourceError::ReadOnly).into())
    }

    async fn update(
        &self,
        _: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        Err(ApiError::from(ResourceError::ReadOnly).into())
    }

    async fn destroy(
        &self,
        _: Request<pb::DestroyRequest>,
    ) -> Result<Response<pb::DestroyResponse>, Status> {
        Err(ApiError::from(ResourceError::ReadOnly).into())
    }

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Stream_<pb::WatchResponse>>, Status> {
        let admin = is_admin(&request);
        let req = request.into_inner();
        let def = Resources::resolve(&req.namespace, &req.r#type, admin).map_err(ApiError::from)?;
        let options = req.options.unwrap_or_default();
        if options.tail_events != 0 {
            return Err(ApiError::Unimplemented(
                "watch tail_events is not supported: this node keeps no resource history".into(),
            )
            .into());
        }
        if req.id.is_some() && options.bootstrap_contents {
            return Err(ApiError::Unimplemented(
                "bootstrap contents is not implemented for resource watch".into(),
            )
            .into());
        }
        let filter = id_filter(options.id_query.as_ref()).map_err(ApiError::from)?;
        let watch = Watch {
            resources: Arc::clone(&self.resources),
            namespace: req.namespace,
            def,
            id: req.id,
            filter,
            bootstrap: options.bootstrap_contents,
            bootstrapped_event: req.api_version >= 1,
            aggregated: options.aggregated,
            poll: self.poll,
        };
        // Subscribed before the first read, so no change after it is missed.
        let changes = self.resources.changes();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(watch.run(tx, changes));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One open watch.
struct Watch {
    resources: Arc<Resources>,
    namespace: String,
    def: &'static Definition,
    /// Only this resource.
    id: Option<String>,
    filter: Option<regex::Regex>,
    /// Send what exists first.
    bootstrap: bool,
    /// Mark the end of that with a BOOTSTRAPPED event.
    bootstrapped_event: bool,
    /// Several events may share a response.
    aggregated: bool,
    /// How often to look for changes no node event announces.
    poll: Duration,
}

impl Watch {
    /// A resource of the watched type with metadata only.
    fn tombstone(&self, id: &str) -> pb::Resource {
        pb::Resource {
            metadata: Some(pb::Metadata {
                namespace: self.namespace.clone(),
                r#type: self.def.type_.to_owned(),
                id: id.to_owned(),
                phase: "running".into(),
                ..pb::Metadata::default()
            }),
            spec: None,
        }
    }

    /// The watched resources now, by id.
    async fn snapshot(&self) -> Result<BTreeMap<String, Resource>, ResourceError> {
        let listed = match &self.id {
            Some(id) => match self.resources.get(&self.namespace, self.def, id).await {
                Ok(r) => vec![r],
                Err(ResourceError::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(e),
            },
            None => self.resources.list(&self.namespace, self.def).await?,
        };
        Ok(listed
            .into_iter()
            .filter(|r| self.filter.as_ref().is_none_or(|f| f.is_match(&r.id)))
            .map(|r| (r.id.clone(), r))
            .collect())
    }

    /// Sends events until the caller goes away or a read fails (which
    /// ends the stream with that error).
    async fn run(
        self,
        tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
        mut announced_changes: broadcast::Receiver<crate::events::Event>,
    ) {
        let aggregated = self.aggregated;
        let send = |events: Vec<pb::Event>| {
            let tx = tx.clone();
            async move {
                if events.is_empty() {
                    return true;
                }
                if aggregated {
                    return tx
                        .send(Ok(pb::WatchResponse { event: events }))
                        .await
                        .is_ok();
                }
                for e in events {
                    if tx
                        .send(Ok(pb::WatchResponse { event: vec![e] }))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
                true
            }
        };
        // An empty response first says the watch is established, as
        // upstream's server does.
        if tx.send(Ok(pb::WatchResponse::default())).await.is_err() {
            return;
        }
        let mut known = match self.snapshot().await {
            Ok(now) => now,
            Err(e) => {
                let _ = tx.send(Err(ApiError::from(e).into())).await;
                return;
            }
        };
        if let Some(id) = &self.id {
            // One resource: its state now comes first, as upstream's
            // server sends it (DESTROYED when there is none).
            let first = match known.get(id) {
                Some(r) => event(resource_pb(r), pb::EventType::Created, None),
                None => event(self.tombstone(id), pb::EventType::Destroyed, None),
            };
            if !send(vec![first]).await {
                return;
            }
        } else if self.bootstrap {
            let mut events: Vec<pb::Event> = known
                .values()
                .map(|r| event(resource_pb(r), pb::EventType::Created, None))
                .collect();
            if self.bootstrapped_event {
                // Upstream marks the end with a tombstone: namespace and
                // type, no id.
                events.push(event(self.tombstone(""), pb::EventType::Bootstrapped, None));
            }
            if !send(events).await {
                return;
            }
        }
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut announced = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                change = announced_changes.recv(), if announced => {
                    if matches!(change, Err(broadcast::error::RecvError::Closed)) {
                        announced = false;
                        continue;
                    }
                    // Lagged is a change too. Let the rest of a burst
                    // arrive, then read once for all of it.
                    tokio::time::sleep(WATCH_SETTLE).await;
                    while matches!(
                        announced_changes.try_recv(),
                        Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_))
                    ) {}
                }
                () = tx.closed() => return,
            }
            // A slow read must not outlive the caller.
            let now = tokio::select! {
                now = self.snapshot() => now,
                () = tx.closed() => return,
            };
            let now = match now {
                Ok(now) => now,
                Err(e) => {
                    let _ = tx.send(Err(ApiError::from(e).into())).await;
                    return;
                }
            };
            let events = changes(&known, &now);
            known = now;
            if !send(events).await {
                return;
            }
        }
    }
}

/// The events that turn `before` into `after`.
fn changes(
    before: &BTreeMap<String, Resource>,
    after: &BTreeMap<String, Resource>,
) -> Vec<pb::Event> {
    let mut events = Vec::new();
    for (id, old) in before {
        if !after.contains_key(id) {
            events.push(event(resource_pb(old), pb::EventType::Destroyed, None));
        }
    }
    for (id, new) in after {
        match before.get(id) {
            None => events.push(event(resource_pb(new), pb::EventType::Created, None)),
            Some(old) if old.version != new.version || old.created != new.created => {
                events.push(event(
                    resource_pb(new),
                    pb::EventType::Updated,
                    Some(resource_pb(old)),
                ))
            }
            Some(_) => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::events::{MachineStage, Payload};

    fn node(dir: &std::path::Path) -> Arc<Node> {
        Arc::new(crate::node::test_node(
            dir,
            machinery::mode::Mode::Container,
        ))
    }

    /// A change a node event announces reaches a watch at once, not at the
    /// next poll (here an hour away).
    #[tokio::test]
    async fn a_node_event_wakes_a_watch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node(dir.path());
        let api = StateApi::with_poll(Arc::clone(&node), Duration::from_secs(3600));
        let mut watch = api
            .watch(Request::new(pb::WatchRequest {
                namespace: "runtime".into(),
                r#type: "MachineStatuses.runtime.talos.dev".into(),
                id: Some("machine".into()),
                options: None,
                api_version: 1,
            }))
            .await
            .expect("watch")
            .into_inner();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .expect("an answer well before the next poll")
                .expect("open")
                .expect("no error")
                .event
        };
        assert!(next().await.is_empty(), "the ready signal");
        let first = next().await;
        assert_eq!(first[0].event_type(), pb::EventType::Created);
        node.events.publish(
            Payload::MachineStatus {
                stage: MachineStage::Running,
                ready: true,
                unmet: Vec::new(),
            },
            "",
        );
        let changed = next().await;
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].event_type(), pb::EventType::Updated);
        let spec = &changed[0]
            .resource
            .as_ref()
            .and_then(|r| r.spec.as_ref())
            .expect("spec")
            .yaml_spec;
        assert!(spec.contains("stage: running"), "{spec}");
    }
}
