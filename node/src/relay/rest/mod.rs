//! The REST adapter of the exchange: `consumer.rs` (a local backend calls out) and
//! `provider.rs` (a peer node calls in) read HTTP requests into the phases of `exchange/`.
//! The consumer listener's router is here, apart from both, so that the metaservices
//! (`meta.rs`) and the exchange do not import each other.

mod consumer;
mod provider;

use std::sync::Arc;

use enlace_core::problem::{Problem, ProblemKind};
use http::{Request, Response};
use hyper::body::Incoming;

use super::Node;
use super::exchange::refusal::refuse_outside_exchange;
use super::exchange::target::RELAY_PREFIX;
use crate::net::Body;
pub(crate) use provider::handle as provider;

/// The consumer listener's router: relayed calls, metaservices, and nothing else.
pub async fn consumer(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path.starts_with(RELAY_PREFIX) {
        return consumer::exchange(node, req).await;
    }
    if path.starts_with("/meta/") {
        return super::meta::consumer(node, req).await;
    }
    let problem = Problem::new(
        ProblemKind::NotFound,
        format!("no such resource: {path}; relayed calls start with {RELAY_PREFIX}"),
    );
    refuse_outside_exchange(&node, req.method(), req.uri(), None, problem).await
}
