//! gRPC server reflection on the consumer listener (v1 and v1alpha), answering from the
//! descriptor sets of the services the calling backend holds active contracts for, reduced to
//! the methods those contracts allow, so that grpcurl-style tools can list and describe what
//! that backend may call, and nothing else.
//!
//! authenticate backend → collect its active contracts' protobuf services and allowed methods
//! → build a reflection service over those (once per subsystem and configuration serial, then
//! cached) → serve the call (a bidirectional stream) through it → log.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use enlace_core::config::{DescriptionKind, ServiceEntry};
use enlace_core::contract::{Contract, ContractState};
use enlace_core::id::SubsystemId;
use enlace_core::problem::{Problem, ProblemKind};
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use tonic::codegen::{BoxFuture, Service};

use super::Node;
use super::exchange::backend::{authenticate_backend, within_rate};
use super::grpc::OutBody;
use crate::net::body_channel;

/// Path prefixes of the two versions of the reflection protocol.
const V1: &str = "/grpc.reflection.v1.ServerReflection/";
const V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/";

/// Whether a gRPC call on the consumer listener is a reflection call.
pub(crate) fn is_reflection(path: &str) -> bool {
    path.starts_with(V1) || path.starts_with(V1ALPHA)
}

type Serve = Box<
    dyn Fn(Request<Incoming>) -> BoxFuture<Response<tonic::body::Body>, Infallible> + Send + Sync,
>;

/// The reflection services built for one subsystem under one configuration.
struct Built {
    v1: Serve,
    v1alpha: Serve,
    /// How many methods are described, for the log.
    methods: usize,
}

/// Built reflection services by (subsystem, configuration serial). A new serial replaces
/// every entry of older ones, so the cache holds one entry per local subsystem at most.
#[derive(Default)]
pub(crate) struct Cache {
    built: Mutex<HashMap<(SubsystemId, u64), Arc<Built>>>,
}

impl Cache {
    fn get(&self, key: &(SubsystemId, u64)) -> Option<Arc<Built>> {
        self.built
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn put(&self, key: (SubsystemId, u64), built: Arc<Built>) {
        let mut map = self.built.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(_, serial), _| *serial >= key.1);
        map.insert(key, built);
    }
}

/// Serves one reflection call of a local backend.
pub(crate) async fn serve(node: Arc<Node>, req: Request<Incoming>) -> Response<OutBody> {
    let version = if req.uri().path().starts_with(V1) {
        "v1"
    } else {
        "v1alpha"
    };
    let built = match built_for(&node, req.headers(), req.extensions()).await {
        Ok(b) => b,
        Err(p) => {
            tracing::info!(version, problem = p.kind.slug(), detail = %p.detail, "reflection call refused");
            return refusal(&p);
        }
    };
    let (client, serial, built) = built;
    tracing::info!(%client, serial, version, methods = built.methods, "reflection call answered");
    let called = if version == "v1" {
        (built.v1)(req).await
    } else {
        (built.v1alpha)(req).await
    };
    match called {
        Ok(resp) => relay(resp),
        Err(never) => match never {},
    }
}

/// The caller's reflection services, from the cache or built now.
async fn built_for(
    node: &Node,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Result<(SubsystemId, u64, Arc<Built>), Problem> {
    let (client, _) = authenticate_backend(node, headers, extensions)?;
    within_rate(node, &client)?;
    let snap = node.snapshot()?;
    let key = (client.clone(), snap.config.serial);
    if let Some(b) = node.reflection.get(&key) {
        return Ok((client, key.1, b));
    }
    let mut sets = Vec::new();
    let mut methods = 0;
    for (entry, operations) in contracted(&snap.config, &client) {
        let compiled = node.compiled_grpc(entry).await?;
        methods += operations.len();
        sets.push(compiled.reflection_set(&operations));
    }
    let built = Arc::new(build(&sets, methods)?);
    node.reflection.put(key.clone(), built.clone());
    Ok((client, key.1, built))
}

/// For every service the caller holds an active contract for, its latest protobuf version
/// within the contract's range and the methods the caller's contracts allow on it.
fn contracted<'a>(
    config: &'a enlace_core::config::GlobalConfig,
    client: &SubsystemId,
) -> Vec<(&'a ServiceEntry, Vec<String>)> {
    let now = time::OffsetDateTime::now_utc();
    let mut by_digest: BTreeMap<&str, (&ServiceEntry, Vec<String>)> = BTreeMap::new();
    for contract in config.contracts.iter().filter(|c| active(c, client, now)) {
        let latest = config
            .services
            .iter()
            .filter(|s| s.id == contract.terms.provider && s.kind == DescriptionKind::Protobuf)
            .filter(|s| contract.terms.versions.contains(s.version))
            .max_by_key(|s| s.version);
        if let Some(entry) = latest {
            let (_, ops) = by_digest
                .entry(entry.digest.as_str())
                .or_insert_with(|| (entry, Vec::new()));
            for op in &contract.terms.operations {
                if !ops.contains(op) {
                    ops.push(op.clone());
                }
            }
        }
    }
    by_digest.into_values().collect()
}

fn build(sets: &[Vec<u8>], methods: usize) -> Result<Built, Problem> {
    let builder = || {
        let mut b =
            tonic_reflection::server::Builder::configure().include_reflection_service(false);
        for set in sets {
            b = b.register_encoded_file_descriptor_set(set);
        }
        b
    };
    let v1 = builder().build_v1().map_err(build_failed)?;
    let v1alpha = builder().build_v1alpha().map_err(build_failed)?;
    Ok(Built {
        v1: Box::new(move |req| v1.clone().call(req)),
        v1alpha: Box::new(move |req| v1alpha.clone().call(req)),
        methods,
    })
}

fn active(contract: &Contract, client: &SubsystemId, now: time::OffsetDateTime) -> bool {
    &contract.terms.consumer == client
        && contract.state == ContractState::Approved
        && contract.terms.valid_from <= now
        && now < contract.terms.valid_until
}

fn build_failed(e: tonic_reflection::server::Error) -> Problem {
    Problem::new(
        ProblemKind::Internal,
        format!("reflection over the contracted descriptor sets: {e}"),
    )
}

/// A trailers-only refusal with the problem's gRPC code and type.
fn refusal(p: &Problem) -> Response<OutBody> {
    let mut status =
        tonic::Status::new(tonic::Code::from(i32::from(p.kind.grpc_code())), &p.detail);
    if let Ok(v) = p.type_uri().parse() {
        status.metadata_mut().insert(super::grpc::PROBLEM_TYPE, v);
    }
    status.into_http::<Full<Bytes>>().map(Either::Left)
}

/// The reflection service's response, its frames pumped into the listener's body type; a body
/// that fails ends with the failure's status in trailers.
fn relay(resp: Response<tonic::body::Body>) -> Response<OutBody> {
    let (parts, mut body) = resp.into_parts();
    let (tx, rx) = body_channel(16);
    tokio::spawn(async move {
        loop {
            match body.frame().await {
                None => {
                    let _ = tx.finish().await;
                    return;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if tx.data(data).await.is_err() {
                            return;
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            let _ = tx.trailers(t).await;
                            return;
                        }
                    }
                },
                Some(Err(status)) => {
                    tracing::info!(code = ?status.code(), detail = %status.message(), "reflection call failed");
                    let mut trailers = status.into_http::<()>().into_parts().0.headers;
                    trailers.remove(http::header::CONTENT_TYPE);
                    let _ = tx.trailers(trailers).await;
                    return;
                }
            }
        }
    });
    Response::from_parts(parts, Either::Right(rx))
}
