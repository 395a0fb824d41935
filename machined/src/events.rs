//! The node's event stream (the Events API).
//!
//! A ring of the last [`RING_SIZE`] events, as upstream, plus a broadcast to
//! live watchers. Events carry a time-sortable 20-character id in the `xid`
//! format upstream uses, so `tail_id` resumes after a given event, and an
//! optional actor id that ties them to the Reboot/Shutdown/Reset/Upgrade call
//! that caused them (`talosctl ... --wait` follows those).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::supervisor::{Health, ServiceState};

/// Events kept, as upstream.
pub const RING_SIZE: usize = 1000;

/// Upstream's machine stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineStage {
    /// Booting.
    Booting,
    /// Installing to disk.
    Installing,
    /// Waiting for a config.
    Maintenance,
    /// Running.
    Running,
    /// Rebooting.
    Rebooting,
    /// Shutting down.
    ShuttingDown,
    /// Resetting.
    Resetting,
    /// Upgrading.
    Upgrading,
}

impl MachineStage {
    /// Upstream's enum number.
    #[must_use]
    pub const fn number(self) -> i32 {
        match self {
            MachineStage::Booting => 1,
            MachineStage::Installing => 2,
            MachineStage::Maintenance => 3,
            MachineStage::Running => 4,
            MachineStage::Rebooting => 5,
            MachineStage::ShuttingDown => 6,
            MachineStage::Resetting => 7,
            MachineStage::Upgrading => 8,
        }
    }

    /// The stage upstream's enum number names.
    #[must_use]
    pub fn from_number(number: i32) -> Option<MachineStage> {
        [
            MachineStage::Booting,
            MachineStage::Installing,
            MachineStage::Maintenance,
            MachineStage::Running,
            MachineStage::Rebooting,
            MachineStage::ShuttingDown,
            MachineStage::Resetting,
            MachineStage::Upgrading,
        ]
        .into_iter()
        .find(|stage| stage.number() == number)
    }
}

/// What an event says.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A service changed state or health.
    ServiceState {
        /// Service id.
        service: String,
        /// Its new state.
        state: ServiceState,
        /// Why.
        message: String,
        /// Its health.
        health: Health,
    },
    /// A lifecycle sequence started or stopped.
    Sequence {
        /// e.g. "boot", "reboot".
        sequence: String,
        /// true = start, false = stop.
        start: bool,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// A phase of a sequence started or stopped.
    Phase {
        /// Phase name.
        phase: String,
        /// true = start, false = stop.
        start: bool,
    },
    /// The machine's stage and readiness.
    MachineStatus {
        /// Stage.
        stage: MachineStage,
        /// Ready.
        ready: bool,
        /// Unmet conditions: (name, reason).
        unmet: Vec<(String, String)>,
    },
    /// A config could not be loaded.
    ConfigLoadError {
        /// Why.
        error: String,
    },
}

/// The machine's stage and readiness, as last published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineStatus {
    /// Stage.
    pub stage: MachineStage,
    /// Ready.
    pub ready: bool,
    /// Unmet conditions: (name, reason).
    pub unmet: Vec<(String, String)>,
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// 20-character xid.
    pub id: String,
    /// The actor (API call) that caused it, or empty.
    pub actor_id: String,
    /// When.
    pub time: SystemTime,
    /// What.
    pub payload: Payload,
}

/// Which past events a watcher wants first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    /// >0: the last N; <0: all kept; 0: none.
    pub events: i32,
    /// Resume after this event id.
    pub after_id: Option<String>,
    /// Events of the last N seconds.
    pub seconds: Option<u32>,
    /// Only events of this actor.
    pub actor_id: Option<String>,
}

/// The event ring and its live feed.
#[derive(Debug)]
pub struct EventBus {
    ring: Mutex<VecDeque<Event>>,
    live: broadcast::Sender<Event>,
    ids: XidGen,
    /// Kept apart from the ring, which other events may push it out of.
    machine_status: Mutex<Option<MachineStatus>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    /// An empty bus.
    #[must_use]
    pub fn new() -> EventBus {
        EventBus {
            ring: Mutex::new(VecDeque::with_capacity(RING_SIZE)),
            live: broadcast::channel(RING_SIZE).0,
            ids: XidGen::new(),
            machine_status: Mutex::new(None),
        }
    }

    /// Publishes an event.
    pub fn publish(&self, payload: Payload, actor_id: &str) -> Event {
        let time = SystemTime::now();
        let mut ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The id is made under the lock so ids in the ring are in order.
        let event = Event {
            id: self.ids.next(time),
            actor_id: actor_id.to_owned(),
            time,
            payload,
        };
        if let Payload::MachineStatus {
            stage,
            ready,
            unmet,
        } = &event.payload
        {
            *self
                .machine_status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(MachineStatus {
                stage: *stage,
                ready: *ready,
                unmet: unmet.clone(),
            });
        }
        if ring.len() == RING_SIZE {
            ring.pop_front();
        }
        ring.push_back(event.clone());
        // Sent under the lock too, so a watcher that takes its backlog and
        // subscribes under the lock sees every event exactly once.
        let _ = self.live.send(event.clone());
        event
    }

    /// A receiver of the events published from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// What the newest machine status event said.
    #[must_use]
    pub fn last_machine_status(&self) -> Option<MachineStatus> {
        self.machine_status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The backlog per `tail` and a live receiver that continues right
    /// after it.
    #[must_use]
    pub fn watch(&self, tail: &Tail) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = self.live.subscribe();
        let keep = |e: &&Event| tail.actor_id.as_deref().is_none_or(|a| e.actor_id == a);
        let mut backlog: Vec<Event> = if let Some(after) = &tail.after_id {
            ring.iter()
                .skip_while(|e| e.id.as_str() <= after.as_str())
                .filter(keep)
                .cloned()
                .collect()
        } else if let Some(secs) = tail.seconds {
            let since = SystemTime::now()
                .checked_sub(Duration::from_secs(u64::from(secs)))
                .unwrap_or(UNIX_EPOCH);
            ring.iter()
                .filter(|e| e.time >= since)
                .filter(keep)
                .cloned()
                .collect()
        } else if tail.events != 0 {
            ring.iter().filter(keep).cloned().collect()
        } else {
            Vec::new()
        };
        if tail.after_id.is_none()
            && tail.seconds.is_none()
            && let Ok(n) = usize::try_from(tail.events)
        {
            let skip = backlog.len().saturating_sub(n);
            backlog.drain(..skip);
        }
        (backlog, rx)
    }
}

/// Generates ids in the `xid` format: 12 bytes (4 time, 3 machine, 2 pid,
/// 3 counter) in base32hex, 20 characters, sortable by time.
#[derive(Debug)]
struct XidGen {
    machine: [u8; 3],
    pid: u16,
    counter: AtomicU32,
}

impl XidGen {
    fn new() -> XidGen {
        let seed = uuid::Uuid::new_v4();
        let b = seed.as_bytes();
        XidGen {
            machine: [b[0], b[1], b[2]],
            pid: (std::process::id() & 0xffff) as u16,
            counter: AtomicU32::new(u32::from_be_bytes([0, b[3], b[4], b[5]])),
        }
    }

    fn next(&self, time: SystemTime) -> String {
        let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let secs = u32::try_from(secs).unwrap_or(u32::MAX);
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut raw = [0u8; 12];
        raw[..4].copy_from_slice(&secs.to_be_bytes());
        raw[4..7].copy_from_slice(&self.machine);
        raw[7..9].copy_from_slice(&self.pid.to_be_bytes());
        raw[9..].copy_from_slice(&count.to_be_bytes()[1..]);
        encode_base32hex(&raw)
    }
}

fn encode_base32hex(raw: &[u8; 12]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut bits: u128 = 0;
    for b in raw {
        bits = bits << 8 | u128::from(*b);
    }
    // 96 bits → 20 symbols of 5 bits (100 bits, padded with 4 zero bits).
    bits <<= 4;
    (0..20)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(n: usize) -> Payload {
        Payload::Phase {
            phase: format!("p{n}"),
            start: true,
        }
    }

    #[test]
    fn ids_are_20_chars_and_sorted() {
        let bus = EventBus::new();
        let ids: Vec<String> = (0..50).map(|i| bus.publish(phase(i), "").id).collect();
        assert!(
            ids.iter()
                .all(|id| id.len() == 20 && id.chars().all(|c| c.is_ascii_alphanumeric()))
        );
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn ring_keeps_the_last_1000() {
        let bus = EventBus::new();
        for i in 0..1500 {
            bus.publish(phase(i), "");
        }
        let (all, _) = bus.watch(&Tail {
            events: -1,
            ..Tail::default()
        });
        assert_eq!(all.len(), RING_SIZE);
        assert_eq!(all[0].payload, phase(500));
    }

    #[test]
    fn tail_options() {
        let bus = EventBus::new();
        let ids: Vec<String> = (0..10)
            .map(|i| {
                bus.publish(phase(i), if i % 2 == 0 { "actor-a" } else { "" })
                    .id
            })
            .collect();
        let (none, _) = bus.watch(&Tail::default());
        assert!(none.is_empty());
        let (last3, _) = bus.watch(&Tail {
            events: 3,
            ..Tail::default()
        });
        assert_eq!(
            last3.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            ids[7..]
        );
        let (after, _) = bus.watch(&Tail {
            after_id: Some(ids[5].clone()),
            ..Tail::default()
        });
        assert_eq!(after.len(), 4);
        let (actor, _) = bus.watch(&Tail {
            events: -1,
            actor_id: Some("actor-a".into()),
            ..Tail::default()
        });
        assert_eq!(actor.len(), 5);
        let (recent, _) = bus.watch(&Tail {
            seconds: Some(60),
            ..Tail::default()
        });
        assert_eq!(recent.len(), 10);
    }

    #[tokio::test]
    async fn live_events_follow_the_backlog() {
        let bus = EventBus::new();
        bus.publish(phase(0), "");
        let (backlog, mut rx) = bus.watch(&Tail {
            events: -1,
            ..Tail::default()
        });
        assert_eq!(backlog.len(), 1);
        bus.publish(phase(1), "");
        assert_eq!(rx.recv().await.expect("live").payload, phase(1));
    }
}
