//! Where a call goes, decided from its metadata (upstream's director).

use http::HeaderMap;

/// Method prefixes that may be fanned out to several nodes (`nodes`).
pub const ONE_TO_MANY_PREFIXES: &[&str] = &[
    "/machine.MachineService/",
    "/cluster.ClusterService/",
    "/inspect.InspectService/",
    "/storage.StorageService/",
    "/time.TimeService/",
];

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To this node's routerd.
    Local,
    /// To one other node's apid, bytes untouched.
    One(String),
    /// To several nodes, each reply tagged with its node.
    Many(Vec<String>),
}

/// Why a call cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `node` carried several values.
    #[error("node metadata must have exactly one value")]
    SeveralNodes,
    /// `nodes` on a method that cannot be fanned out.
    #[error("one-2-many proxying is not supported for method {0}")]
    NotFanOut(String),
    /// This node has no client certificate to forward with.
    #[error("no request forwarding")]
    NoForwarding,
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Decides the route of a call to `path` with `headers`.
///
/// `is_self` tells whether a target names this node; `can_forward` whether
/// this node has a client certificate; `maintenance` disables routing.
///
/// # Errors
/// Malformed routing metadata, fan-out of a method that does not allow it,
/// or forwarding from a node that cannot.
pub fn decide(
    path: &str,
    headers: &HeaderMap,
    maintenance: bool,
    can_forward: bool,
    is_self: impl Fn(&str) -> bool,
) -> Result<Route, RouteError> {
    if maintenance || headers.contains_key("proxyfrom") {
        return Ok(Route::Local);
    }
    let nodes = values(headers, "nodes");
    let node = values(headers, "node");
    if !nodes.is_empty() {
        if !can_forward {
            return if nodes.len() == 1 && is_self(&nodes[0]) {
                Ok(Route::Local)
            } else {
                Err(RouteError::NoForwarding)
            };
        }
        if !ONE_TO_MANY_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Err(RouteError::NotFanOut(path.to_owned()));
        }
        return Ok(Route::Many(nodes));
    }
    match node.len() {
        0 => Ok(Route::Local),
        1 if is_self(&node[0]) => Ok(Route::Local),
        1 if !can_forward => Err(RouteError::NoForwarding),
        1 => Ok(Route::One(node[0].clone())),
        _ => Err(RouteError::SeveralNodes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, http::HeaderValue::from_static(v));
        }
        m
    }

    const V: &str = "/machine.MachineService/Version";
    fn me(t: &str) -> bool {
        t == "10.0.0.1" || t == "cp-1"
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(V, &h(&[]), false, true, me), Ok(Route::Local));
        assert_eq!(
            decide(V, &h(&[("node", "10.0.0.2")]), false, true, me),
            Ok(Route::One("10.0.0.2".into()))
        );
        assert_eq!(
            decide(V, &h(&[("node", "cp-1")]), false, true, me),
            Ok(Route::Local)
        );
        assert_eq!(
            decide(V, &h(&[("node", "a"), ("node", "b")]), false, true, me),
            Err(RouteError::SeveralNodes)
        );
        assert_eq!(
            decide(
                V,
                &h(&[("nodes", "10.0.0.1"), ("nodes", "10.0.0.2")]),
                false,
                true,
                me
            ),
            Ok(Route::Many(vec!["10.0.0.1".into(), "10.0.0.2".into()]))
        );
        assert_eq!(
            decide(V, &h(&[("nodes", "a,b")]), false, true, me),
            Ok(Route::Many(vec!["a".into(), "b".into()]))
        );
        // The loop guard wins over everything.
        assert_eq!(
            decide(
                V,
                &h(&[("nodes", "x"), ("proxyfrom", "y")]),
                false,
                true,
                me
            ),
            Ok(Route::Local)
        );
        // Maintenance: no routing at all.
        assert_eq!(
            decide(V, &h(&[("node", "10.0.0.2")]), true, false, me),
            Ok(Route::Local)
        );
    }

    #[test]
    fn fan_out_only_for_enveloped_services() {
        let p = "/machine.LifecycleService/Upgrade";
        assert_eq!(
            decide(p, &h(&[("nodes", "a")]), false, true, me),
            Err(RouteError::NotFanOut(p.into()))
        );
        assert_eq!(
            decide(p, &h(&[("node", "a")]), false, true, me),
            Ok(Route::One("a".into()))
        );
    }

    #[test]
    fn workers_without_client_certs_do_not_forward() {
        assert_eq!(
            decide(V, &h(&[("node", "10.0.0.2")]), false, false, me),
            Err(RouteError::NoForwarding)
        );
        assert_eq!(
            decide(V, &h(&[("nodes", "10.0.0.2")]), false, false, me),
            Err(RouteError::NoForwarding)
        );
        assert_eq!(
            decide(V, &h(&[("nodes", "10.0.0.1")]), false, false, me),
            Ok(Route::Local)
        );
        assert_eq!(
            decide(V, &h(&[("node", "cp-1")]), false, false, me),
            Ok(Route::Local)
        );
    }
}
