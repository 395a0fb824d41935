//! `time.TimeService`: compares the node clock with an NTP server.
//!
//! - `Time` queries the first configured server, as upstream: whether sync
//!   is on or not, and `time.cloudflare.com` when none is configured.
//! - `TimeCheck{server}` queries the named server; an empty name is
//!   `InvalidArgument`.
//!
//! A query gets the caller's deadline (`grpc-timeout`) less a tenth, so
//! timed answers with its own error before the caller gives up, capped at
//! [`MAX_TIMEOUT`]; without a deadline, [`DEFAULT_TIMEOUT`]. No answer in
//! time is `DeadlineExceeded`; an unreachable or unusable server is
//! `Unavailable`; a malformed server name is `InvalidArgument`. Every error
//! message names the server.
//!
//! The reply is one `Time` with the server as asked, `localtime` = the node
//! clock when the answer arrived, and `remotetime` = the server's clock at
//! that same moment (`localtime` + measured offset, i.e. corrected for the
//! network delay). `metadata` is left empty: apid fills it in when proxying.

use std::sync::Arc;
use std::time::Duration;

use api::time::time_service_server::TimeService;
use api::time::{Time, TimeRequest, TimeResponse};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::config::ConfigSource;
use crate::sntp::{Sample, SntpError, TimeSource};

/// The query timeout when the caller sets no deadline.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest query, whatever the caller's deadline.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// The shortest query.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);

/// Parses a `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`).
#[must_use]
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() || value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long a query made for a call with `metadata` may take.
#[must_use]
pub fn query_timeout(metadata: &MetadataMap) -> Duration {
    match metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
    {
        Some(deadline) => (deadline - deadline / 10).clamp(MIN_TIMEOUT, MAX_TIMEOUT),
        None => DEFAULT_TIMEOUT,
    }
}

/// The gRPC status for a failed query.
#[must_use]
pub fn status_of(error: &SntpError) -> Status {
    match error {
        SntpError::BadServer { .. } => Status::invalid_argument(error.to_string()),
        SntpError::Timeout { .. } => Status::deadline_exceeded(error.to_string()),
        _ => Status::unavailable(error.to_string()),
    }
}

/// The reply for `sample`, naming `server` as asked.
#[must_use]
pub fn response(server: String, sample: &Sample) -> TimeResponse {
    TimeResponse {
        messages: vec![Time {
            metadata: None,
            server,
            localtime: Some(sample.local_time.into()),
            remotetime: Some(sample.remote_time.into()),
        }],
    }
}

/// The TimeService.
#[derive(Debug)]
pub struct TimeServer<S> {
    source: S,
    config: Arc<dyn ConfigSource>,
}

impl<S: TimeSource> TimeServer<S> {
    /// Serves queries made with `source`, with the servers of `config`.
    #[must_use]
    pub fn new(source: S, config: Arc<dyn ConfigSource>) -> TimeServer<S> {
        TimeServer { source, config }
    }

    async fn check(
        &self,
        server: String,
        timeout: Duration,
    ) -> Result<Response<TimeResponse>, Status> {
        match self.source.query(&server, timeout).await {
            Ok(sample) => Ok(Response::new(response(server, &sample))),
            Err(e) => {
                tracing::info!(error = %e, "time check failed");
                Err(status_of(&e))
            }
        }
    }
}

#[tonic::async_trait]
impl<S: TimeSource + 'static> TimeService for TimeServer<S> {
    async fn time(&self, request: Request<()>) -> Result<Response<TimeResponse>, Status> {
        let timeout = query_timeout(request.metadata());
        let server = self
            .config
            .time_config()
            .servers
            .into_iter()
            .next()
            .unwrap_or_else(|| machinery::config::DEFAULT_TIME_SERVER.to_owned());
        self.check(server, timeout).await
    }

    async fn time_check(
        &self,
        request: Request<TimeRequest>,
    ) -> Result<Response<TimeResponse>, Status> {
        let timeout = query_timeout(request.metadata());
        let server = request.into_inner().server.trim().to_owned();
        if server.is_empty() {
            return Err(Status::invalid_argument("server is required"));
        }
        self.check(server, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::clock::Offset;
    use crate::config::TimeConfig;
    use crate::sntp::{FakeAnswer, FakeSource};
    use tonic::Code;

    fn server(config: TimeConfig) -> (Arc<FakeSource>, TimeServer<Arc<FakeSource>>) {
        let source = Arc::new(FakeSource::new());
        (source.clone(), TimeServer::new(source, Arc::new(config)))
    }

    fn seconds_between(a: &prost_types::Timestamp, b: &prost_types::Timestamp) -> f64 {
        (b.seconds - a.seconds) as f64 + f64::from(b.nanos - a.nanos) / 1e9
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("1x"), None);
        assert_eq!(parse_grpc_timeout("-1S"), None);
        assert_eq!(parse_grpc_timeout("1é"), None);
    }

    #[test]
    fn query_timeouts_leave_a_margin_and_are_bounded() {
        let mut metadata = MetadataMap::new();
        assert_eq!(query_timeout(&metadata), DEFAULT_TIMEOUT);
        metadata.insert("grpc-timeout", "1S".parse().expect("value"));
        assert_eq!(query_timeout(&metadata), Duration::from_millis(900));
        metadata.insert("grpc-timeout", "1H".parse().expect("value"));
        assert_eq!(query_timeout(&metadata), MAX_TIMEOUT);
        metadata.insert("grpc-timeout", "1n".parse().expect("value"));
        assert_eq!(query_timeout(&metadata), MIN_TIMEOUT);
    }

    #[tokio::test]
    async fn time_check_answers_with_both_clocks() {
        let (source, svc) = server(TimeConfig::disabled());
        source.push("ntp.example", FakeAnswer::Offset(Offset::from_secs(2)));
        let reply = svc
            .time_check(Request::new(TimeRequest {
                server: " ntp.example ".into(),
            }))
            .await
            .expect("reply")
            .into_inner();
        assert_eq!(reply.messages.len(), 1);
        let time = &reply.messages[0];
        assert_eq!(time.server, "ntp.example");
        assert!(time.metadata.is_none());
        let local = time.localtime.as_ref().expect("localtime");
        let remote = time.remotetime.as_ref().expect("remotetime");
        assert!((seconds_between(local, remote) - 2.0).abs() < 1e-6);
        let now = prost_types::Timestamp::from(SystemTime::now());
        assert!(seconds_between(local, &now).abs() < 5.0);
    }

    #[tokio::test]
    async fn time_check_needs_a_server() {
        let (source, svc) = server(TimeConfig::defaults());
        let status = svc
            .time_check(Request::new(TimeRequest {
                server: "  ".into(),
            }))
            .await
            .expect_err("empty");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "server is required");
        assert!(source.queries().is_empty());
    }

    #[tokio::test]
    async fn time_uses_the_first_configured_server() {
        let (source, svc) = server(TimeConfig::with_servers(["first", "second"]));
        source.push("first", FakeAnswer::Offset(Offset::ZERO));
        let reply = svc
            .time(Request::new(()))
            .await
            .expect("reply")
            .into_inner();
        assert_eq!(reply.messages[0].server, "first");
        assert_eq!(source.queries(), vec!["first"]);
    }

    /// As upstream: `Time` asks the first configured server with sync
    /// disabled too, and the default server when none is configured.
    #[tokio::test]
    async fn time_asks_a_server_with_sync_disabled_or_none_configured() {
        let disabled_with_one = TimeConfig {
            disabled: true,
            ..TimeConfig::with_servers(["mine"])
        };
        for (config, asked) in [
            (disabled_with_one, "mine"),
            (TimeConfig::disabled(), "time.cloudflare.com"),
            (
                TimeConfig::with_servers(Vec::<String>::new()),
                "time.cloudflare.com",
            ),
        ] {
            let (source, svc) = server(config);
            source.push(asked, FakeAnswer::Offset(Offset::ZERO));
            let reply = svc
                .time(Request::new(()))
                .await
                .expect("answer")
                .into_inner();
            assert_eq!(reply.messages[0].server, asked);
            assert_eq!(source.queries(), vec![asked]);
        }
    }

    #[tokio::test]
    async fn query_failures_map_to_statuses_naming_the_server() {
        let (source, svc) = server(TimeConfig::defaults());
        source.push("slow", FakeAnswer::Timeout);
        let status = svc
            .time_check(Request::new(TimeRequest {
                server: "slow".into(),
            }))
            .await
            .expect_err("timeout");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status.message().contains("slow"), "{status:?}");
        let status = svc
            .time_check(Request::new(TimeRequest {
                server: "down".into(),
            }))
            .await
            .expect_err("unreachable");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("down"), "{status:?}");
        let bad = SntpError::BadServer {
            server: "x:y".into(),
            reason: "bad port".into(),
        };
        assert_eq!(status_of(&bad).code(), Code::InvalidArgument);
    }
}
