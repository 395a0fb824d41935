//! This node's backends, reached through routerd's routing by connection.
//!
//! For each gRPC package apid serves locally it asks routerd once for a
//! connection to the package's backend ([`machinery::handoff`]) and then
//! sends that package's calls straight on it: routerd keeps the route table
//! and decides where each package goes, but does not relay every frame of
//! every call. A connection that breaks (the backend restarted) is asked
//! for again on the next call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use machinery::h2::{Body, ClientError, H2Client, RecvBody};
use machinery::handoff::{self, HandoffError};

/// At most this many packages keep a connection: routerd's table has a
/// handful, so only a table grown far beyond today's would reach it.
const MAX_PACKAGES: usize = 64;

/// The local backends.
#[derive(Debug)]
pub struct Local {
    routerd: PathBuf,
    clients: Mutex<HashMap<String, H2Client>>,
}

impl Local {
    /// Backends routed by the routerd listening at `routerd`.
    #[must_use]
    pub fn new(routerd: PathBuf) -> Local {
        Local {
            routerd,
            clients: Mutex::default(),
        }
    }

    /// The connection for `package`, made (lazily) by asking for `service`.
    fn client(&self, package: &str, service: &str) -> H2Client {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(package) {
            return client.clone();
        }
        let client = client_for(self.routerd.clone(), package, service);
        if clients.len() < MAX_PACKAGES {
            clients.insert(package.to_owned(), client.clone());
        }
        client
    }

    /// Sends a call to the backend of its service.
    ///
    /// # Errors
    /// The status the call ends with: routerd's refusal (Unimplemented for
    /// an unknown service, Unavailable for a backend that is down), or
    /// Unavailable when routerd or the backend connection fails.
    pub async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<RecvBody>, tonic::Status> {
        let path = request.uri().path();
        let Some(service) = api::methods::service_of(path) else {
            return Err(tonic::Status::unimplemented(format!(
                "malformed gRPC method path {path:?}"
            )));
        };
        let package = api::methods::package_of_service(service)
            .unwrap_or_default()
            .to_owned();
        let service_name = service.to_owned();
        let client = self.client(&package, service);
        client.send(request).await.map_err(|e| {
            let ClientError::Connect { source, .. } = &e else {
                return tonic::Status::unavailable(e.to_string());
            };
            // No connection was made: nothing stays cached for the package
            // (only packages routerd routed fill the cache).
            self.clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&package);
            match source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<HandoffError>())
            {
                Some(HandoffError::Refused { code, message }) => {
                    tonic::Status::new(tonic::Code::from(*code), message.clone())
                }
                // A name routerd's protocol cannot carry is no service it
                // routes, as routerd would have answered.
                Some(HandoffError::Exchange { source, .. })
                    if source.kind() == std::io::ErrorKind::InvalidInput =>
                {
                    tonic::Status::unimplemented(format!("unknown service {service_name}"))
                }
                Some(other) => tonic::Status::unavailable(format!("routerd unavailable: {other}")),
                None => tonic::Status::unavailable(e.to_string()),
            }
        })
    }
}

/// A client whose connections routerd hands over for `package`.
fn client_for(routerd: PathBuf, package: &str, service: &str) -> H2Client {
    let service: Arc<str> = Arc::from(service);
    H2Client::new(format!("backend of {package}"), move || {
        let routerd = routerd.clone();
        let service = Arc::clone(&service);
        async move {
            handoff::request(&routerd, &service)
                .await
                .map(|routed| routed.into_stream())
                .map_err(std::io::Error::other)
        }
    })
}
