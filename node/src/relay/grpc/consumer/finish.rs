//! The closing phase of a call the provider node answered: its final status verified against
//! the request and both chains, the closing record logged, then the held message and the
//! status released to the backend.

use super::*;

/// How a call's response came back: the provider node's final status and the messages before
/// it.
pub(super) struct Relayed {
    pub(super) ending: Ending,
    pub(super) chain: StreamDigest,
    pub(super) kept: Option<Vec<u8>>,
    pub(super) held: Option<Vec<u8>>,
    /// The response head as received (verified, or for one message bound by the final
    /// status), for the log.
    pub(super) head: Option<HeaderMap>,
}

impl Relayed {
    pub(super) fn status_only(headers: HeaderMap) -> Relayed {
        Relayed {
            ending: Ending::Trailers(headers),
            chain: StreamDigest::new(),
            kept: None,
            held: None,
            head: None,
        }
    }
}

impl From<crate::relay::grpc::stream::Relayed> for Relayed {
    fn from(r: crate::relay::grpc::stream::Relayed) -> Relayed {
        Relayed {
            ending: r.ending,
            chain: r.chain,
            kept: r.kept,
            held: None,
            head: None,
        }
    }
}

/// Where the end of the call goes: the rest of a stream already answered, or the whole answer
/// (a head not yet sent: the verified head, or none for a trailers-only answer).
pub(super) enum Deliver<'a> {
    Stream(crate::net::BodySender),
    Head(&'a mut Reply, Option<HeaderMap>),
}

/// A call whose request has gone out.
pub(super) struct Call {
    pub(super) node: Arc<Node>,
    pub(super) snap: Arc<Snapshot>,
    pub(super) sent: Bound,
    pub(super) peer: NodeId,
    pub(super) method: MethodInfo,
    pub(super) clock: Arc<Clock>,
    pub(super) trace: Trace,
}

impl Call {
    /// Runs a verification with the provider node's key (and only its key).
    pub(super) fn verifier<T>(
        &self,
        f: impl FnOnce(&Verifier<'_, dyn Fn(&str) -> Result<Vec<Vec<u8>>, Problem> + '_>) -> T,
    ) -> T {
        let peer = self.peer.to_string();
        let key_for = move |keyid: &str| {
            self.node
                .keys_of(&self.snap, &peer, "the provider node", keyid)
        };
        f(&Verifier {
            now: self.node.unix_now(),
            max_skew_secs: self.node.settings.raw.limits.clock_skew_secs,
            key_for: &key_for,
        })
    }

    /// Verifies the final status and releases it (with the held message when there is one),
    /// or the problem instead; logs the exchange's closing record first.
    pub(super) async fn finish(self, relayed: Relayed, mut pump: Pump, deliver: Deliver<'_>) {
        let id = &self.trace.message_id;
        let streamed_request = self.method.client_streaming;
        let sent_request = pump.chain();
        let mut held = relayed.held;
        let mut verified = false;
        let (out, problem, trailers_in) = match relayed.ending {
            Ending::Trailers(t) => {
                let chains = Chains {
                    received: &relayed.chain,
                    sent_request: streamed_request.then_some(&sent_request),
                };
                // A server stream's head verified on its own when it came.
                let one_message = !self.method.server_streaming;
                let checked = self
                    .verifier(|v| signing::verify_trailers(&t, &self.sent, &chains, v))
                    .and_then(|()| {
                        if one_message {
                            signing::check_head_digest(relayed.head.as_ref(), &t)
                        } else {
                            Ok(())
                        }
                    })
                    .and_then(|()| {
                        verified = true;
                        self.check_held(&t, &relayed.chain, &mut held)
                    })
                    .and_then(|()| pass_status(&t, id));
                match checked {
                    Ok(out) => (Some(out), None, Some(t)),
                    Err(p) => {
                        let offset = self.node.config.registry_offset();
                        let p = offset.blame_stale(p.caused_by(Culprit::PeerNode));
                        tracing::warn!(message_id = %id, problem = p.kind.slug(), detail = %p.detail, "grpc response refused");
                        held = None;
                        (
                            Some(problem_trailers(&p, Some(id))),
                            Some(p.kind.slug().to_string()),
                            Some(t),
                        )
                    }
                }
            }
            Ending::Gone => {
                tracing::info!(message_id = %id, messages = relayed.chain.count(), "grpc call cancelled by the caller");
                (None, Some(ProblemKind::Cancelled.slug().to_string()), None)
            }
            Ending::Failed(p) => {
                tracing::info!(message_id = %id, problem = p.kind.slug(), detail = %p.detail, "grpc call failed");
                held = None;
                (
                    Some(problem_trailers(&p, Some(id))),
                    Some(p.kind.slug().to_string()),
                    None,
                )
            }
        };
        let rec = final_record(
            RecordKind::ResponseIn,
            self.trace.about(),
            &self.sent,
            Closing {
                trailers: trailers_in,
                head: relayed.head,
                chain: Some(relayed.chain),
                request_chain: streamed_request.then(|| sent_request.value()),
                request_trailers: pump.trailers().cloned(),
                problem,
                body: relayed.kept,
            },
        );
        pump.stop().await;
        let out = match self.node.log.append(rec).await {
            Ok(_) => out,
            Err(p) => {
                if p.kind != ProblemKind::LogUnavailable {
                    tracing::error!(problem = %p, "could not log a grpc response");
                }
                held = None;
                verified = false;
                Some(problem_trailers(&p, Some(id)))
            }
        };
        let Some(out) = out else { return };
        match deliver {
            Deliver::Stream(tx) => {
                let _ = tx.trailers(out).await;
            }
            Deliver::Head(reply, head) => match head {
                Some(head) if verified => {
                    let (tx, rx) = body_channel(2);
                    let framed = held.and_then(|m| wire::encode_frame(&m, false).ok());
                    if let Some(f) = framed {
                        let _ = tx.data(Bytes::from(f)).await;
                    }
                    let _ = tx.trailers(out).await;
                    reply.send(streamed(head, rx));
                }
                _ => {
                    reply.send(trailers_only(out));
                }
            },
        }
    }

    /// A unary or client-streaming call answered with status OK carries exactly one response
    /// message, and it decodes: otherwise the provider node (which signed it) broke the
    /// protocol. A message held with another status is dropped.
    pub(super) fn check_held(
        &self,
        trailers: &HeaderMap,
        chain: &StreamDigest,
        held: &mut Option<Vec<u8>>,
    ) -> Result<(), Problem> {
        if self.method.server_streaming {
            return Ok(());
        }
        if trailers.get(GRPC_STATUS).map(|v| v.as_bytes()) != Some(b"0") {
            *held = None;
            return Ok(());
        }
        let violation = |detail: String| {
            Problem::new(ProblemKind::ResponseSchemaViolation, detail).caused_by(Culprit::PeerNode)
        };
        if chain.count() != 1 {
            return Err(violation(format!(
                "{} answers exactly one message; the provider node sent {}",
                self.method.full_name,
                chain.count()
            )));
        }
        let Some(m) = held.as_ref() else {
            return Err(violation("the response message is missing".into()));
        };
        self.method
            .decode_response(m)
            .map_err(|p| violation(p.detail))?;
        Ok(())
    }
}
