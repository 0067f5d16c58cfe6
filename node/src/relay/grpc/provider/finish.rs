//! The closing phase of a call the backend answered: its status checked, the final status
//! signed and bound to the request, the closing record and the access record logged, then the
//! held message and the status released.

use super::*;

/// How the backend's response came back.
pub(super) struct Outcome {
    pub(super) ending: Ending,
    /// The chain of the messages sent on (streams) or received (a held message).
    pub(super) chain: StreamDigest,
    pub(super) kept: Option<Vec<u8>>,
    pub(super) disclosed: BTreeSet<String>,
    pub(super) held: Option<Vec<u8>>,
    /// The response head as sent, for the log.
    pub(super) head: Option<HeaderMap>,
    /// The digest of a head of one message, for the final status to carry.
    pub(super) head_digest: Option<String>,
}

pub(super) enum Deliver<'a> {
    /// The head went out: the rest of the stream.
    Stream(BodySender),
    /// Nothing went out yet: a trailers-only answer.
    Head(&'a mut Reply),
}

/// A call forwarded to the backend.
pub(super) struct Call {
    pub(super) node: Arc<Node>,
    pub(super) request: Bound,
    pub(super) method: MethodInfo,
    /// The fields the response may disclose (see `relay::disclosure`).
    pub(super) allowed: Vec<String>,
    /// The service version and contract, for the access record.
    pub(super) entry: ServiceEntry,
    pub(super) contract: Contract,
    pub(super) message_id: String,
    pub(super) context: Context,
    pub(super) service: String,
    pub(super) operation: String,
    pub(super) peer: NodeId,
    pub(super) asked: Asked,
}

impl Call {
    /// The call as its closing phase needs it, with what the response may disclose: the
    /// contract's fields, less sensitive ones without the person's authorisation and secret
    /// ones always.
    pub(super) async fn of(
        at: At<'_, '_>,
        contract: &Contract,
        trace: &Trace,
    ) -> Result<Call, Problem> {
        let allowed = crate::relay::exchange::disclosure::allowed(
            at.node,
            &at.ctx,
            at.entry,
            contract,
            &trace.operation,
        )
        .await?;
        Ok(Call {
            node: at.node.clone(),
            request: at.req.clone(),
            method: at.method,
            allowed,
            entry: at.entry.clone(),
            contract: contract.clone(),
            message_id: at.message_id,
            context: at.ctx,
            service: trace.service.clone(),
            operation: trace.operation.clone(),
            peer: at.peer.clone(),
            asked: trace.asked.clone(),
        })
    }

    /// Signs the final status bound to the request (with the chains of both directions), logs
    /// the closing record and the access record, then releases the held message and the status.
    pub(super) async fn finish(self, o: Outcome, mut pump: Pump, deliver: Deliver<'_>) {
        let id = &self.message_id;
        let single = !self.method.server_streaming;
        let mut held = o.held;
        let mut disclosed = o.disclosed;
        let (status, failure) = match o.ending {
            Ending::Trailers(t) => match backend_status(&t, id) {
                Ok(s) if single && is_ok(&s) && held.is_none() => {
                    let p = Problem::new(
                        ProblemKind::ResponseSchemaViolation,
                        format!(
                            "{} answers one message; the provider backend answered OK with none",
                            self.method.full_name
                        ),
                    )
                    .caused_by(Culprit::ProviderBackend);
                    (Some(problem_trailers(&p, Some(id))), Some(p.kind))
                }
                Ok(s) => (Some(s), None),
                Err(p) => (Some(problem_trailers(&p, Some(id))), Some(p.kind)),
            },
            Ending::Gone => {
                tracing::info!(message_id = %id, messages = o.chain.count(), "grpc call cancelled by the peer node");
                (None, Some(ProblemKind::Cancelled))
            }
            Ending::Failed(p) => {
                tracing::info!(message_id = %id, problem = p.kind.slug(), detail = %p.detail, "grpc backend stream failed");
                (Some(problem_trailers(&p, Some(id))), Some(p.kind))
            }
        };
        // A single message goes on only with status OK; the chain signed is what goes on.
        let released = single && status.as_ref().is_some_and(is_ok) && failure.is_none();
        let chain = if single {
            let mut c = StreamDigest::new();
            match (&held, released) {
                (Some(m), true) => c.update(m),
                _ => {
                    held = None;
                    disclosed.clear();
                }
            }
            c
        } else {
            o.chain
        };
        let request_chain = pump.chain();
        let streamed_request = self.method.client_streaming;
        let status = status.map(|mut t| {
            put(&mut t, STREAM_DIGEST, &chain.value());
            if streamed_request {
                put(&mut t, REQUEST_STREAM_DIGEST, &request_chain.value());
            }
            if let Some(d) = &o.head_digest {
                put(&mut t, signing::HEAD_DIGEST, d);
            }
            match signing::sign_trailers(&signer(&self.node), &mut t, &self.request) {
                Ok(()) => t,
                Err(p) => problem_trailers(&p, Some(id)),
            }
        });
        let about = About {
            message_id: id,
            client: None,
            context: Some(&self.context),
            service: &self.service,
            operation: &self.operation,
            peer: Some(self.peer.to_string()),
        };
        let disclosed: Vec<String> = disclosed.into_iter().collect();
        let mut rec = final_record(
            RecordKind::ResponseOut,
            about,
            &self.request,
            Closing {
                trailers: status.clone(),
                head: o.head,
                chain: Some(chain.clone()),
                request_chain: streamed_request.then(|| request_chain.value()),
                request_trailers: pump.trailers().cloned(),
                problem: failure.map(|k| k.slug().to_string()),
                body: o.kept,
            },
        );
        pump.stop().await;
        rec.headers
            .push(("enlace-disclosed".into(), disclosed.join(",")));
        self.asked.note(&mut rec);
        // A request message that asked about someone else is recorded for that person, unless
        // data of the person named had already left in this call: their record must show it
        // (the other person's data never reached the backend).
        let context = if disclosed.is_empty() {
            self.asked.context(&self.context)
        } else {
            self.context.clone()
        };
        let access = access_record::record(
            &self.node,
            access_record::Exchange {
                message_id: id,
                context: &context,
                service: &self.entry,
                contract: &self.contract,
                operation: &self.operation,
                fields: disclosed,
                refused: failure,
                status: StatusCode::OK.as_u16(),
                request_digest: self
                    .request
                    .digest()
                    .or_else(|| streamed_request.then(|| request_chain.value())),
                response_digest: Some(chain.value()),
            },
        );
        let logged = self
            .node
            .log
            .append_with(rec, access_record::queued(access))
            .await;
        let status = match logged {
            Ok(_) => status,
            Err(p) => {
                if p.kind != ProblemKind::LogUnavailable {
                    tracing::error!(problem = %p, "could not log a grpc response");
                }
                // Nothing more goes out; the status says why, signed, over what did go out.
                held = None;
                let mut t = problem_trailers(&p, Some(id));
                let sent = if single { StreamDigest::new() } else { chain };
                put(&mut t, STREAM_DIGEST, &sent.value());
                if streamed_request {
                    put(&mut t, REQUEST_STREAM_DIGEST, &request_chain.value());
                }
                if let Err(e) = signing::sign_trailers(&signer(&self.node), &mut t, &self.request) {
                    tracing::error!(problem = %e, "could not sign a grpc status");
                }
                Some(t)
            }
        };
        let Some(status) = status else { return };
        match deliver {
            Deliver::Head(reply) => {
                reply.send(trailers_only(status));
            }
            Deliver::Stream(tx) => {
                if let Some(m) = held.and_then(|m| wire::encode_frame(&m, false).ok())
                    && tx.data(Bytes::from(m)).await.is_err()
                {
                    return;
                }
                let _ = tx.trailers(status).await;
            }
        }
    }
}

/// The status fields a provider node passes on from its backend: code, message, details and
/// custom metadata. Never `enlace-*`: a backend cannot speak for the node.
pub(super) fn backend_status(from: &HeaderMap, message_id: &str) -> Result<HeaderMap, Problem> {
    let violation = |detail: String| {
        Problem::new(ProblemKind::ResponseSchemaViolation, detail)
            .caused_by(Culprit::ProviderBackend)
    };
    let status = from
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| violation("the final status has no grpc-status".into()))?;
    if status.is_empty() || status.len() > 2 || !status.bytes().all(|b| b.is_ascii_digit()) {
        return Err(violation(format!(
            "grpc-status `{status}` is not a status code"
        )));
    }
    let mut h = HeaderMap::new();
    for name in [GRPC_STATUS, GRPC_MESSAGE, GRPC_STATUS_DETAILS] {
        if let Some(v) = from.get(name) {
            if v.len() > metadata::MAX_VALUE {
                return Err(violation(format!(
                    "{name} is longer than {} bytes",
                    metadata::MAX_VALUE
                )));
            }
            h.insert(name, v.clone());
        }
    }
    metadata::append(&mut h, &metadata::custom(from).map_err(violation)?);
    put(&mut h, context::MESSAGE_ID, message_id);
    Ok(h)
}

pub(super) fn is_ok(status: &HeaderMap) -> bool {
    status.get(GRPC_STATUS).map(HeaderValue::as_bytes) == Some(b"0")
}
