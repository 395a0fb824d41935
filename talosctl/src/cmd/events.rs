//! `talosctl events`: the runtime event stream as a growing table
//! `NODE  ID  EVENT  ACTOR  SOURCE  MESSAGE`.

use anyhow::anyhow;
use api::machine::{
    AddressEvent, ConfigLoadErrorEvent, ConfigValidationErrorEvent, EventsRequest,
    MachineStatusEvent, PhaseEvent, RestartEvent, SequenceEvent, ServiceStateEvent, TaskEvent,
};
use prost::Message as _;

use crate::cli::{EventsArgs, GlobalArgs};
use crate::client::{self, Client, Options};
use crate::output::{self, Reported, StreamTable};

/// The prefix of every event payload type URL.
pub const TYPE_URL_PREFIX: &str = "talos/runtime/";

/// The SOURCE and MESSAGE columns of an event payload, or `None` for an
/// event type this client does not show (as upstream skips them).
///
/// # Errors
/// The payload does not decode as its type says.
pub fn describe(
    type_url: &str,
    value: &[u8],
) -> Result<Option<(String, String)>, prost::DecodeError> {
    let Some(name) = type_url.strip_prefix(TYPE_URL_PREFIX) else {
        return Ok(None);
    };
    let described = match name {
        "machine.SequenceEvent" => {
            let event = SequenceEvent::decode(value)?;
            let message = match &event.error {
                Some(error) => format!("error: {}", error.message),
                None => api::machine::sequence_event::Action::try_from(event.action)
                    .map_or("UNKNOWN", |action| action.as_str_name())
                    .to_owned(),
            };
            (event.sequence, message)
        }
        "machine.PhaseEvent" => {
            let event = PhaseEvent::decode(value)?;
            let action = api::machine::phase_event::Action::try_from(event.action)
                .map_or("UNKNOWN", |action| action.as_str_name());
            (event.phase, action.to_owned())
        }
        "machine.TaskEvent" => {
            let event = TaskEvent::decode(value)?;
            let action = api::machine::task_event::Action::try_from(event.action)
                .map_or("UNKNOWN", |action| action.as_str_name());
            (event.task, action.to_owned())
        }
        "machine.ServiceStateEvent" => {
            let event = ServiceStateEvent::decode(value)?;
            let action = api::machine::service_state_event::Action::try_from(event.action)
                .map_or("UNKNOWN", |action| action.as_str_name());
            (event.service, format!("{action}: {}", event.message))
        }
        "machine.ConfigLoadErrorEvent" => {
            let event = ConfigLoadErrorEvent::decode(value)?;
            ("error".to_owned(), event.error)
        }
        "machine.ConfigValidationErrorEvent" => {
            let event = ConfigValidationErrorEvent::decode(value)?;
            ("error".to_owned(), event.error)
        }
        "machine.AddressEvent" => {
            let event = AddressEvent::decode(value)?;
            (
                event.hostname,
                format!("ADDRESSES: {}", event.addresses.join(",")),
            )
        }
        "machine.MachineStatusEvent" => {
            let event = MachineStatusEvent::decode(value)?;
            let stage = api::machine::machine_status_event::MachineStage::try_from(event.stage)
                .map_or("UNKNOWN", |stage| stage.as_str_name());
            let status = event.status.unwrap_or_default();
            let unmet: Vec<String> = status
                .unmet_conditions
                .iter()
                .map(|condition| condition.name.clone())
                .collect();
            (
                stage.to_owned(),
                format!(
                    "ready: {}, unmet conditions: [{}]",
                    status.ready,
                    unmet.join(" ")
                ),
            )
        }
        "machine.RestartEvent" => {
            let event = RestartEvent::decode(value)?;
            ("restart".to_owned(), format!("cmd: {}", event.cmd))
        }
        _ => return Ok(None),
    };
    Ok(Some(described))
}

/// Runs `talosctl events`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn run(global: &GlobalArgs, args: EventsArgs) -> anyhow::Result<()> {
    let tail_seconds = match &args.duration {
        Some(text) => {
            let duration =
                output::parse_go_duration(text).map_err(|err| anyhow!("--duration: {err}"))?;
            i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
        }
        None => 0,
    };
    let stop_after = args
        .stop_after
        .as_deref()
        .map(|text| output::parse_go_duration(text).map_err(|err| anyhow!("--stop-after: {err}")))
        .transpose()?;
    let client = Client::connect(global, Options::default())?;
    let request = EventsRequest {
        tail_events: args.tail,
        tail_id: args.since.unwrap_or_default(),
        tail_seconds,
        with_actor_id: args.actor_id.unwrap_or_default(),
    };
    let mut stream = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::machine(channel).events(request).await }
        })
        .await?;

    let deadline = stop_after.map(|after| tokio::time::Instant::now() + after);
    let mut table = StreamTable::new(output::PADDING);
    let header: Vec<String> = ["NODE", "ID", "EVENT", "ACTOR", "SOURCE", "MESSAGE"]
        .iter()
        .map(|cell| (*cell).to_owned())
        .collect();
    output::out(&table.line(&header))?;
    let mut failed = false;
    loop {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => stream.message().await,
        };
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(status) => return Err(client.status_error(&status)),
        };
        let node = client.node_of(event.metadata.as_ref());
        if let Some(error) = client::node_error(event.metadata.as_ref()) {
            eprintln!("error: {node}: {error}");
            failed = true;
            continue;
        }
        let Some(data) = &event.data else {
            continue;
        };
        if data.type_url.is_empty() {
            // The hello event that opens every stream.
            continue;
        }
        let (source, message) = match describe(&data.type_url, &data.value) {
            Ok(Some(described)) => described,
            Ok(None) => continue,
            Err(err) => {
                output::warning(&format!(
                    "{node}: failed to decode {}: {err}",
                    data.type_url
                ));
                continue;
            }
        };
        let kind = data
            .type_url
            .strip_prefix(TYPE_URL_PREFIX)
            .unwrap_or(&data.type_url)
            .to_owned();
        let row = [
            node,
            event.id.clone(),
            kind,
            event.actor_id.clone(),
            source,
            message,
        ];
        output::out(&table.line(&row))?;
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_state_events() {
        let event = ServiceStateEvent {
            service: "apid".into(),
            action: api::machine::service_state_event::Action::Running as i32,
            message: "Health check successful".into(),
            health: None,
        };
        let described = describe(
            "talos/runtime/machine.ServiceStateEvent",
            &event.encode_to_vec(),
        )
        .expect("decodes");
        assert_eq!(
            described,
            Some((
                "apid".to_owned(),
                "RUNNING: Health check successful".to_owned()
            ))
        );
    }

    #[test]
    fn sequence_errors_and_machine_status() {
        let event = SequenceEvent {
            sequence: "boot".into(),
            action: api::machine::sequence_event::Action::Stop as i32,
            error: Some(api::common::Error {
                code: 0,
                message: "failed".into(),
                details: Vec::new(),
            }),
        };
        assert_eq!(
            describe(
                "talos/runtime/machine.SequenceEvent",
                &event.encode_to_vec()
            )
            .expect("decodes"),
            Some(("boot".to_owned(), "error: failed".to_owned()))
        );
        let status = MachineStatusEvent {
            stage: api::machine::machine_status_event::MachineStage::Running as i32,
            status: Some(api::machine::machine_status_event::MachineStatus {
                ready: false,
                unmet_conditions: vec![
                    api::machine::machine_status_event::machine_status::UnmetCondition {
                        name: "time".into(),
                        reason: "not synced".into(),
                    },
                ],
            }),
        };
        assert_eq!(
            describe(
                "talos/runtime/machine.MachineStatusEvent",
                &status.encode_to_vec()
            )
            .expect("decodes"),
            Some((
                "RUNNING".to_owned(),
                "ready: false, unmet conditions: [time]".to_owned()
            ))
        );
    }

    #[test]
    fn unknown_types_are_skipped() {
        assert_eq!(
            describe("talos/runtime/machine.Unknown", b"").expect("ok"),
            None
        );
        assert_eq!(describe("other/x", b"").expect("ok"), None);
    }
}
