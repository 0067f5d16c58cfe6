//! The target of a relayed call: the service and major version its path names.

use enlace_core::id::{ServiceId, ServiceVersion};
use enlace_core::problem::{Problem, ProblemKind};
use http::Uri;

/// Path prefix of relayed calls: `/r1/SERVICE-ID/vMAJOR/rest…`.
pub const RELAY_PREFIX: &str = "/r1/";

pub(crate) struct Target {
    pub service: ServiceId,
    pub major: u16,
    /// The rest of the path, as received (still percent-encoded), starting with `/`.
    pub rest: String,
    pub query: Option<String>,
}

/// Path prefix of gRPC calls between nodes: `/g1/SERVICE-ID/vMAJOR/package.Service/Method`.
pub const GRPC_PREFIX: &str = "/g1/";

/// `/r1/INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE/vMAJOR/rest…`
pub(crate) fn read_target(uri: &Uri) -> Result<Target, Problem> {
    let path = uri.path();
    let rest = path.strip_prefix(RELAY_PREFIX).unwrap_or(path);
    read_service_path(rest, RELAY_PREFIX, uri.query())
}

/// `/g1/SERVICE-ID/vMAJOR/package.Service/Method`, read as a REST target is; the rest is the
/// method's path.
pub(crate) fn read_grpc_target(uri: &Uri) -> Result<Target, Problem> {
    let rest = uri.path().strip_prefix(GRPC_PREFIX).ok_or_else(|| {
        Problem::new(
            ProblemKind::NotFound,
            format!(
                "gRPC calls between nodes go to {GRPC_PREFIX}SERVICE/vMAJOR/pkg.Service/Method"
            ),
        )
    })?;
    read_service_path(rest, GRPC_PREFIX, None)
}

/// `INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE/vMAJOR/rest…`, the path after `prefix`.
fn read_service_path(rest: &str, prefix: &str, query: Option<&str>) -> Result<Target, Problem> {
    let mut parts = rest.splitn(7, '/');
    let segs: Vec<&str> = (0..6).map_while(|_| parts.next()).collect();
    let tail = parts.next().unwrap_or("");
    if segs.len() < 6 {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!("path must be {prefix}INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE/vMAJOR/…"),
        ));
    }
    if segs.iter().any(|s| s.contains('%')) {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            "the service part of the path must not be percent-encoded",
        ));
    }
    let service: ServiceId = segs[..5].join("/").parse()?;
    let version: ServiceVersion = segs[5].parse()?;
    if version.minor != 0 || segs[5].contains('.') {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            "name the major version only in the path, e.g. v1",
        ));
    }
    Ok(Target {
        service,
        major: version.major,
        rest: format!("/{tail}"),
        query: query.map(String::from),
    })
}
