//! `talosctl service [<id> [start|stop|restart|status]]` (alias `services`).

use std::time::SystemTime;

use anyhow::bail;
use api::machine::{ServiceInfo, ServiceRestartRequest, ServiceStartRequest, ServiceStopRequest};
use serde::Serialize;

use crate::cli::{GlobalArgs, OutputFormat, ServiceArgs};
use crate::client::{self, Client, Options};
use crate::output::{self, Table};

/// Runs `talosctl service`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn run(global: &GlobalArgs, args: ServiceArgs) -> anyhow::Result<()> {
    let action = args.action.as_deref().unwrap_or("status");
    match (args.id.as_deref(), action) {
        (None, _) => list(global, args.output).await,
        (Some(id), "status") => info(global, id).await,
        (Some(id), "start" | "stop" | "restart") => control(global, id, action).await,
        (Some(_), other) => bail!("unsupported service action: {other:?}"),
    }
}

/// HEALTH column: `?` unknown, `OK`, `Fail`.
#[must_use]
pub fn health_status(service: &ServiceInfo) -> &'static str {
    match &service.health {
        None => "?",
        Some(health) if health.unknown => "?",
        Some(health) if health.healthy => "OK",
        Some(_) => "Fail",
    }
}

fn events(service: &ServiceInfo) -> &[api::machine::ServiceEvent] {
    match &service.events {
        Some(events) => &events.events,
        None => &[],
    }
}

/// LAST CHANGE column without the ` ago` suffix (empty without events).
#[must_use]
pub fn last_updated(service: &ServiceInfo, now: SystemTime) -> String {
    events(service)
        .last()
        .and_then(|event| event.ts.as_ref())
        .map(|ts| output::since_rounded(ts, now))
        .unwrap_or_default()
}

/// LAST EVENT column (`<none>` without events).
#[must_use]
pub fn last_event(service: &ServiceInfo) -> String {
    events(service)
        .last()
        .map_or_else(|| "<none>".to_owned(), |event| event.msg.clone())
}

/// The service list table.
#[must_use]
pub fn list_table(rows: &[(String, ServiceInfo)], now: SystemTime) -> Table {
    let mut table = Table::new(&[
        "NODE",
        "SERVICE",
        "STATE",
        "HEALTH",
        "LAST CHANGE",
        "LAST EVENT",
    ]);
    for (node, service) in rows {
        table.push(vec![
            node.clone(),
            service.id.clone(),
            service.state.clone(),
            health_status(service).to_owned(),
            format!("{} ago", last_updated(service, now)),
            last_event(service),
        ]);
    }
    table
}

/// The `-o json|yaml` view of one service on one node.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceView {
    node: String,
    id: String,
    state: String,
    health: String,
    last_change: String,
    last_event: String,
    health_message: String,
}

async fn list(global: &GlobalArgs, format: OutputFormat) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let response = client
        .machine_call(|mut m, r| async move { m.service_list(r).await })
        .await?;
    let results = client.split(response.messages);
    let rows: Vec<(String, ServiceInfo)> = results
        .ok
        .into_iter()
        .flat_map(|(node, reply)| {
            reply
                .services
                .into_iter()
                .map(move |service| (node.clone(), service))
        })
        .collect();
    let now = SystemTime::now();
    if format == OutputFormat::Text {
        list_table(&rows, now).print()?;
    } else {
        let views: Vec<ServiceView> = rows
            .iter()
            .map(|(node, service)| ServiceView {
                node: node.clone(),
                id: service.id.clone(),
                state: service.state.clone(),
                health: health_status(service).to_owned(),
                last_change: events(service)
                    .last()
                    .and_then(|event| event.ts.as_ref())
                    .map(|ts| output::rfc3339(output::timestamp_to_system(ts)))
                    .unwrap_or_default(),
                last_event: last_event(service),
                health_message: service
                    .health
                    .as_ref()
                    .map(|health| health.last_message.clone())
                    .unwrap_or_default(),
            })
            .collect();
        output::print_views(&views, format)?;
    }
    client::report(&results.failed)
}

/// The detail view of one service on one node (rows of a two-column table).
#[must_use]
pub fn detail_rows(node: &str, service: &ServiceInfo, now: SystemTime) -> Vec<Vec<String>> {
    let mut rows = vec![
        vec!["NODE".to_owned(), node.to_owned()],
        vec!["ID".to_owned(), service.id.clone()],
        vec!["STATE".to_owned(), service.state.clone()],
        vec!["HEALTH".to_owned(), health_status(service).to_owned()],
    ];
    if let Some(health) = &service.health
        && !health.last_message.is_empty()
    {
        rows.push(vec![
            "LAST HEALTH MESSAGE".to_owned(),
            health.last_message.clone(),
        ]);
    }
    let mut label = "EVENTS";
    for event in events(service).iter().rev() {
        let ago = event
            .ts
            .as_ref()
            .map(|ts| output::since_rounded(ts, now))
            .unwrap_or_else(|| "0s".to_owned());
        rows.push(vec![
            label.to_owned(),
            format!("[{}]: {} ({ago} ago)", event.state, event.msg),
        ]);
        label = "";
    }
    rows
}

async fn info(global: &GlobalArgs, id: &str) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let response = client
        .machine_call(|mut m, r| async move { m.service_list(r).await })
        .await?;
    let results = client.split(response.messages);
    let now = SystemTime::now();
    let mut table = Table::headerless(output::PADDING);
    let mut found = 0;
    for (node, reply) in &results.ok {
        for service in reply.services.iter().filter(|service| service.id == id) {
            found += 1;
            for row in detail_rows(node, service, now) {
                table.push(row);
            }
        }
    }
    if found == 0 {
        client::report(&results.failed)?;
        bail!("service {id:?} is not registered on any nodes");
    }
    table.print()?;
    client::report(&results.failed)
}

async fn control(global: &GlobalArgs, id: &str, action: &str) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let id = id.to_owned();
    let replies: Vec<(String, String)>;
    let failed: Vec<(String, String)>;
    match action {
        "start" => {
            let response = client
                .call(|channel| {
                    let request = client.request(ServiceStartRequest { id: id.clone() });
                    async move { client::machine(channel).service_start(request).await }
                })
                .await?;
            let results = client.split(response.messages);
            replies = results
                .ok
                .into_iter()
                .map(|(node, reply)| (node, reply.resp))
                .collect();
            failed = results.failed;
        }
        "stop" => {
            let response = client
                .call(|channel| {
                    let request = client.request(ServiceStopRequest { id: id.clone() });
                    async move { client::machine(channel).service_stop(request).await }
                })
                .await?;
            let results = client.split(response.messages);
            replies = results
                .ok
                .into_iter()
                .map(|(node, reply)| (node, reply.resp))
                .collect();
            failed = results.failed;
        }
        _ => {
            let response = client
                .call(|channel| {
                    let request = client.request(ServiceRestartRequest { id: id.clone() });
                    async move { client::machine(channel).service_restart(request).await }
                })
                .await?;
            let results = client.split(response.messages);
            replies = results
                .ok
                .into_iter()
                .map(|(node, reply)| (node, reply.resp))
                .collect();
            failed = results.failed;
        }
    }
    let mut table = Table::new(&["NODE", "RESPONSE"]);
    for (node, resp) in replies {
        table.push(vec![node, resp]);
    }
    table.print()?;
    client::report(&failed)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use api::machine::{ServiceEvent, ServiceEvents, ServiceHealth};

    use super::*;

    fn service(
        id: &str,
        health: Option<ServiceHealth>,
        events: &[(&str, &str, i64)],
    ) -> ServiceInfo {
        ServiceInfo {
            id: id.to_owned(),
            state: "Running".to_owned(),
            events: Some(ServiceEvents {
                events: events
                    .iter()
                    .map(|(msg, state, ts)| ServiceEvent {
                        msg: (*msg).to_owned(),
                        state: (*state).to_owned(),
                        ts: Some(prost_types::Timestamp {
                            seconds: *ts,
                            nanos: 0,
                        }),
                    })
                    .collect(),
            }),
            health,
        }
    }

    #[test]
    fn list_like_upstream() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let rows = vec![
            (
                "10.5.0.2".to_owned(),
                service(
                    "apid",
                    Some(ServiceHealth {
                        unknown: false,
                        healthy: true,
                        last_message: String::new(),
                        last_change: None,
                    }),
                    &[
                        ("Starting", "Starting", 900),
                        ("Health check successful", "Running", 935),
                    ],
                ),
            ),
            ("10.5.0.2".to_owned(), service("udevd", None, &[])),
        ];
        assert_eq!(
            list_table(&rows, now).render(),
            "NODE       SERVICE   STATE     HEALTH   LAST CHANGE   LAST EVENT\n\
             10.5.0.2   apid      Running   OK       1m5s ago      Health check successful\n\
             10.5.0.2   udevd     Running   ?         ago          <none>\n"
        );
    }

    #[test]
    fn health_states() {
        let unknown = ServiceHealth {
            unknown: true,
            ..ServiceHealth::default()
        };
        let failing = ServiceHealth::default();
        assert_eq!(health_status(&service("a", Some(unknown), &[])), "?");
        assert_eq!(health_status(&service("a", Some(failing), &[])), "Fail");
    }

    #[test]
    fn detail_newest_event_first() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let svc = service(
            "etcd",
            Some(ServiceHealth {
                unknown: false,
                healthy: false,
                last_message: "probe failed".to_owned(),
                last_change: None,
            }),
            &[("Starting", "Starting", 990), ("Failed", "Failed", 995)],
        );
        let mut table = Table::headerless(3);
        for row in detail_rows("n1", &svc, now) {
            table.push(row);
        }
        assert_eq!(
            table.render(),
            "NODE                  n1\n\
             ID                    etcd\n\
             STATE                 Running\n\
             HEALTH                Fail\n\
             LAST HEALTH MESSAGE   probe failed\n\
             EVENTS                [Failed]: Failed (5s ago)\n\
             \x20                     [Starting]: Starting (10s ago)\n"
        );
    }
}
