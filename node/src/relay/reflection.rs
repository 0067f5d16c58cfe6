//! gRPC server reflection on the consumer listener (v1 and v1alpha), answering from the
//! descriptor sets of the services the calling backend holds active contracts for, so that
//! grpcurl-style tools can list and describe what that backend may call, and nothing else.
//!
//! authenticate backend → collect its active contracts' protobuf services → build a reflection
//! service over their descriptor sets → serve the call (a bidirectional stream) through it.

use std::sync::Arc;

use bytes::Bytes;
use enlace_core::config::{DescriptionKind, ServiceEntry};
use enlace_core::contract::{Contract, ContractState};
use enlace_core::id::SubsystemId;
use enlace_core::problem::Problem;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tonic::codegen::Service;

use super::Node;
use super::consumer;
use super::grpc::{ChannelBody, OutBody};

/// Path prefixes of the two versions of the reflection protocol.
const V1: &str = "/grpc.reflection.v1.ServerReflection/";
const V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/";

/// Whether a gRPC call on the consumer listener is a reflection call.
pub(crate) fn is_reflection(path: &str) -> bool {
    path.starts_with(V1) || path.starts_with(V1ALPHA)
}

/// Serves one reflection call of a local backend.
pub(crate) async fn serve(node: Arc<Node>, req: Request<Incoming>) -> Response<OutBody> {
    let sets = match descriptor_sets(&node, req.headers(), req.extensions()).await {
        Ok(sets) => sets,
        Err(p) => {
            tracing::info!(problem = p.kind.slug(), detail = %p.detail, "reflection call refused");
            return refusal(&p);
        }
    };
    let mut builder =
        tonic_reflection::server::Builder::configure().include_reflection_service(false);
    for set in &sets {
        builder = builder.register_encoded_file_descriptor_set(set);
    }
    let called = if req.uri().path().starts_with(V1) {
        match builder.build_v1() {
            Ok(mut svc) => svc.call(req).await,
            Err(e) => return refusal(&build_failed(e)),
        }
    } else {
        match builder.build_v1alpha() {
            Ok(mut svc) => svc.call(req).await,
            Err(e) => return refusal(&build_failed(e)),
        }
    };
    match called {
        Ok(resp) => relay(resp),
        Err(never) => match never {},
    }
}

/// The stored descriptor sets of the latest protobuf version, within the contract's range, of
/// every service the caller holds an active contract for.
async fn descriptor_sets(
    node: &Node,
    headers: &HeaderMap,
    extensions: &http::Extensions,
) -> Result<Vec<Vec<u8>>, Problem> {
    let (client, _) = consumer::authenticate_backend(node, headers, extensions)?;
    let snap = node.snapshot()?;
    let now = time::OffsetDateTime::now_utc();
    let mut entries: Vec<&ServiceEntry> = Vec::new();
    for contract in snap
        .config
        .contracts
        .iter()
        .filter(|c| active(c, &client, now))
    {
        let latest = snap
            .config
            .services
            .iter()
            .filter(|s| s.id == contract.terms.provider && s.kind == DescriptionKind::Protobuf)
            .filter(|s| contract.terms.versions.contains(s.version))
            .max_by_key(|s| s.version);
        if let Some(entry) = latest
            && !entries.iter().any(|e| e.digest == entry.digest)
        {
            entries.push(entry);
        }
    }
    let mut sets = Vec::with_capacity(entries.len());
    for entry in entries {
        sets.push(node.description_bytes(entry).await?);
    }
    Ok(sets)
}

fn active(contract: &Contract, client: &SubsystemId, now: time::OffsetDateTime) -> bool {
    &contract.terms.consumer == client
        && contract.state == ContractState::Approved
        && contract.terms.valid_from <= now
        && now < contract.terms.valid_until
}

fn build_failed(e: tonic_reflection::server::Error) -> Problem {
    Problem::new(
        enlace_core::problem::ProblemKind::Internal,
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

/// The reflection service's response, its frames pumped into the listener's body type.
fn relay(resp: Response<tonic::body::Body>) -> Response<OutBody> {
    let (parts, mut body) = resp.into_parts();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    Response::from_parts(parts, Either::Right(ChannelBody { rx }))
}
