//! The sample `personas.v1.Personas` gRPC backend of the Registro Civil, for `enlace up`, the
//! tests and the benchmarks: the people and documents of the REST sample, over h2c, with gRPC
//! server reflection; one method of each kind (unary, server, client and bidirectional
//! streaming).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use enlace_proto::personas::v1::personas_server::{Personas, PersonasServer};
use enlace_proto::personas::v1::{
    Address, Document, GetPersonRequest, ListDocumentsRequest, Person, VerifyIdentityRequest,
    VerifySummary,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// `GetPerson` for this RUN answers NOT_FOUND after 3 seconds, for deadline tests.
pub const SLOW_RUN: &str = "22222222-2";

/// `ListDocuments` for this RUN streams [`MANY_DOCUMENTS`] documents, one every 10 ms, for
/// cancellation tests.
pub const MANY_DOCUMENTS_RUN: &str = "33333333-3";

/// How many documents [`MANY_DOCUMENTS_RUN`] has.
pub const MANY_DOCUMENTS: usize = 1_000;

/// How long [`SLOW_RUN`] waits, and the pause between two documents of [`MANY_DOCUMENTS_RUN`].
const SLOW_ANSWER: Duration = Duration::from_secs(3);
const DOCUMENT_PAUSE: Duration = Duration::from_millis(10);

/// How long open calls may take to finish once shutdown is asked for.
const DRAIN: Duration = Duration::from_secs(10);

/// The people the sample knows: the same as [`crate::rest::person`].
pub fn person(run: &str) -> Option<Person> {
    let person =
        |run: &str, name: &str, birth: &str, address: [&str; 3], status: &str, health| Person {
            run: run.to_owned(),
            name: name.to_owned(),
            birth_date: birth.to_owned(),
            address: Some(Address {
                street: address[0].to_owned(),
                commune: address[1].to_owned(),
                region: address[2].to_owned(),
            }),
            civil_status: status.to_owned(),
            nationality: "CL".to_owned(),
            health_insurance: String::from(health),
        };
    match run {
        "12345678-5" => Some(person(
            "12345678-5",
            "María José Pérez Soto",
            "1980-04-15",
            [
                "Av. Libertador Bernardo O'Higgins 1234",
                "Santiago",
                "Metropolitana",
            ],
            "married",
            "FONASA",
        )),
        "11111111-1" => Some(person(
            "11111111-1",
            "Juan Carlos Rojas Muñoz",
            "1975-09-18",
            ["Calle Prat 55", "Valparaíso", "Valparaíso"],
            "single",
            "Isapre Colmena",
        )),
        _ => None,
    }
}

/// The documents of every known person: the same as the REST sample's.
pub fn documents() -> Vec<Document> {
    vec![
        document("identity-card", "A123456789", "2019-03-01"),
        document("passport", "P9876543", "2021-07-12"),
    ]
}

fn document(kind: &str, number: &str, issued_at: &str) -> Document {
    Document {
        r#type: kind.to_owned(),
        number: number.to_owned(),
        issued_at: issued_at.to_owned(),
    }
}

fn not_found(run: &str) -> Status {
    Status::not_found(format!("no such person: {run}"))
}

/// The sample service. Clones share the count of open document streams and of broken request
/// streams.
#[derive(Debug, Clone, Default)]
pub struct SamplePersonas {
    open_streams: Arc<AtomicUsize>,
    broken_requests: Arc<AtomicUsize>,
}

impl SamplePersonas {
    /// How many `ListDocuments` streams are still producing: a cancelled call's stream stops
    /// within one document pause.
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::SeqCst)
    }

    /// How many request streams (`VerifyIdentities`, `LookupPersons`) ended in an error (a
    /// reset) rather than a clean end: what a relay that refuses a stream must cause.
    pub fn broken_request_streams(&self) -> usize {
        self.broken_requests.load(Ordering::SeqCst)
    }
}

/// Counts a request stream as broken unless it is marked as read to its clean end: a handler
/// dropped on a reset (hyper drops it) or ending on an error counts.
struct Unfinished {
    broken: Option<Arc<AtomicUsize>>,
}

impl Unfinished {
    fn new(broken: &Arc<AtomicUsize>) -> Self {
        Self {
            broken: Some(Arc::clone(broken)),
        }
    }

    /// The stream ended cleanly.
    fn finished(mut self) {
        self.broken = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(b) = &self.broken {
            b.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Whether a claim matches the civil record: the RUN is known, the name and birth date equal.
fn claim_matches(claim: &VerifyIdentityRequest) -> bool {
    person(&claim.run).is_some_and(|p| p.name == claim.name && p.birth_date == claim.birth_date)
}

/// Counts one open stream for as long as it lives.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl Personas for SamplePersonas {
    async fn get_person(
        &self,
        request: Request<GetPersonRequest>,
    ) -> Result<Response<Person>, Status> {
        let run = request.into_inner().run;
        if run == SLOW_RUN {
            tokio::time::sleep(SLOW_ANSWER).await;
        }
        person(&run)
            .map(Response::new)
            .ok_or_else(|| not_found(&run))
    }

    type ListDocumentsStream = ReceiverStream<Result<Document, Status>>;

    async fn list_documents(
        &self,
        request: Request<ListDocumentsRequest>,
    ) -> Result<Response<Self::ListDocumentsStream>, Status> {
        let run = request.into_inner().run;
        if run == MANY_DOCUMENTS_RUN {
            let (tx, rx) = mpsc::channel(1);
            let open = OpenStream::new(&self.open_streams);
            tokio::spawn(async move {
                let _open = open;
                for i in 0..MANY_DOCUMENTS {
                    tokio::time::sleep(DOCUMENT_PAUSE).await;
                    let doc = document("identity-card", &format!("M{i:09}"), "2020-01-01");
                    if tx.send(Ok(doc)).await.is_err() {
                        // The caller went away: the response stream was dropped.
                        return;
                    }
                }
            });
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        if person(&run).is_none() {
            return Err(not_found(&run));
        }
        let documents = documents();
        let (tx, rx) = mpsc::channel(documents.len());
        for doc in documents {
            // The channel holds them all: nothing to wait for.
            let _ = tx.try_send(Ok(doc));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn verify_identities(
        &self,
        request: Request<Streaming<VerifyIdentityRequest>>,
    ) -> Result<Response<VerifySummary>, Status> {
        let mut claims = request.into_inner();
        let unfinished = Unfinished::new(&self.broken_requests);
        let mut summary = VerifySummary::default();
        loop {
            match claims.message().await {
                Ok(Some(claim)) => {
                    summary.checked += 1;
                    if claim_matches(&claim) {
                        summary.matched += 1;
                    } else {
                        summary.mismatched_runs.push(claim.run);
                    }
                }
                Ok(None) => {
                    unfinished.finished();
                    return Ok(Response::new(summary));
                }
                Err(status) => {
                    return Err(Status::cancelled(format!(
                        "the claims stream broke: {}",
                        status.message()
                    )));
                }
            }
        }
    }

    type LookupPersonsStream = ReceiverStream<Result<Person, Status>>;

    async fn lookup_persons(
        &self,
        request: Request<Streaming<GetPersonRequest>>,
    ) -> Result<Response<Self::LookupPersonsStream>, Status> {
        let mut asked = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let unfinished = Unfinished::new(&self.broken_requests);
        tokio::spawn(async move {
            loop {
                let answer = match asked.message().await {
                    Ok(Some(req)) => person(&req.run).ok_or_else(|| not_found(&req.run)),
                    Ok(None) => {
                        unfinished.finished();
                        return;
                    }
                    Err(status) => Err(Status::cancelled(format!(
                        "the request stream broke: {}",
                        status.message()
                    ))),
                };
                let last = answer.is_err();
                if tx.send(answer).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the sample gRPC backend (HTTP/2 without TLS) until `shutdown` turns true.
pub async fn serve(listener: TcpListener, shutdown: watch::Receiver<bool>) {
    serve_service(listener, shutdown, SamplePersonas::default()).await;
}

/// Serves `service` (HTTP/2 without TLS) until `shutdown` turns true, then lets open calls
/// finish for up to 10 seconds.
pub async fn serve_service(
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    service: SamplePersonas,
) {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut stop = shutdown.clone();
    let mut drain = shutdown;
    // Server reflection, for grpcurl and the like: `personas.v1.Personas` and itself.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(enlace_proto::PERSONAS_DESCRIPTOR_SET)
        .build_v1();
    let reflection = match reflection {
        Ok(reflection) => Some(reflection),
        Err(err) => {
            tracing::warn!(error = %err, "sample grpc backend: no server reflection");
            None
        }
    };
    let server = Server::builder()
        .add_service(PersonasServer::new(service))
        .add_optional_service(reflection)
        .serve_with_incoming_shutdown(incoming, async move {
            // A dropped sender means shutdown too.
            let _ = stop.wait_for(|s| *s).await;
        });
    let deadline = async move {
        let _ = drain.wait_for(|s| *s).await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        result = server => {
            if let Err(err) = result {
                tracing::warn!(error = %err, "sample grpc backend stopped");
            }
        }
        () = deadline => tracing::warn!("sample grpc backend: open calls cut after the drain"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use enlace_proto::personas::v1::personas_client::PersonasClient;
    use tonic::Code;
    use tonic::transport::Channel;

    use super::*;

    async fn start(service: SamplePersonas) -> (SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        tokio::spawn(serve_service(listener, rx, service));
        (addr, tx)
    }

    async fn client(addr: SocketAddr) -> PersonasClient<Channel> {
        PersonasClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
    }

    fn get(run: &str) -> GetPersonRequest {
        GetPersonRequest { run: run.into() }
    }

    fn list(run: &str) -> ListDocumentsRequest {
        ListDocumentsRequest { run: run.into() }
    }

    #[tokio::test]
    async fn get_person_answers_known_and_unknown_runs() {
        let (addr, _stop) = start(SamplePersonas::default()).await;
        let mut client = client(addr).await;

        let maria = client.get_person(get("12345678-5")).await.unwrap();
        let maria = maria.into_inner();
        assert_eq!(maria.name, "María José Pérez Soto");
        assert_eq!(maria.health_insurance, "FONASA");
        assert_eq!(maria.address.unwrap().commune, "Santiago");

        let juan = client.get_person(get("11111111-1")).await.unwrap();
        assert_eq!(juan.into_inner().name, "Juan Carlos Rojas Muñoz");

        let err = client.get_person(get("10000000-8")).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }

    #[tokio::test]
    async fn list_documents_streams_two_documents() {
        let (addr, _stop) = start(SamplePersonas::default()).await;
        let mut client = client(addr).await;

        let mut stream = client
            .list_documents(list("12345678-5"))
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(doc) = stream.message().await.unwrap() {
            got.push(doc);
        }
        assert_eq!(got, documents());
        assert_eq!(got[0].number, "A123456789");
        assert_eq!(got[1].r#type, "passport");

        let err = client.list_documents(list("10000000-8")).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }

    fn claim(run: &str, name: &str, birth_date: &str) -> VerifyIdentityRequest {
        VerifyIdentityRequest {
            run: run.into(),
            name: name.into(),
            birth_date: birth_date.into(),
        }
    }

    #[tokio::test]
    async fn verify_identities_counts_matching_claims() {
        let (addr, _stop) = start(SamplePersonas::default()).await;
        let mut client = client(addr).await;
        let claims = [
            claim("12345678-5", "María José Pérez Soto", "1980-04-15"),
            claim("11111111-1", "Juan Carlos Rojas Muñoz", "1975-09-18"),
            claim("11111111-1", "Juan Rojas", "1975-09-18"),
            claim("10000000-8", "Nadie", "2000-01-01"),
        ];
        let summary = client
            .verify_identities(tonic::codegen::tokio_stream::iter(claims))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(summary.checked, 4);
        assert_eq!(summary.matched, 2);
        assert_eq!(summary.mismatched_runs, ["11111111-1", "10000000-8"]);
    }

    #[tokio::test]
    async fn lookup_persons_answers_each_request_as_it_comes() {
        let (addr, _stop) = start(SamplePersonas::default()).await;
        let mut client = client(addr).await;
        let (tx, rx) = mpsc::channel(1);
        let mut answers = client
            .lookup_persons(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        // One at a time: each answer comes before the next request is sent.
        for (run, name) in [
            ("12345678-5", "María José Pérez Soto"),
            ("11111111-1", "Juan Carlos Rojas Muñoz"),
        ] {
            tx.send(get(run)).await.unwrap();
            let p = answers.message().await.unwrap().expect("an answer");
            assert_eq!(p.name, name);
        }
        tx.send(get("10000000-8")).await.unwrap();
        let err = answers.message().await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }

    #[tokio::test]
    async fn a_dropped_document_stream_stops_the_backend() {
        let service = SamplePersonas::default();
        let (addr, _stop) = start(service.clone()).await;
        let mut client = client(addr).await;

        let mut stream = client
            .list_documents(list(MANY_DOCUMENTS_RUN))
            .await
            .unwrap()
            .into_inner();
        for _ in 0..3 {
            assert!(stream.message().await.unwrap().is_some());
        }
        assert_eq!(service.open_streams(), 1);
        drop(stream);

        let stopped = tokio::time::timeout(Duration::from_secs(2), async {
            while service.open_streams() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(stopped.is_ok(), "the backend kept streaming");
    }

    #[tokio::test]
    async fn a_deadline_cuts_the_slow_run() {
        let (addr, _stop) = start(SamplePersonas::default()).await;
        let mut client = client(addr).await;

        let mut request = Request::new(get(SLOW_RUN));
        request.set_timeout(Duration::from_millis(200));
        let started = tokio::time::Instant::now();
        let err = client.get_person(request).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{err:?}");
        assert_ne!(err.code(), Code::Ok);
    }

    #[tokio::test]
    async fn reflection_lists_the_service() {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

        let (addr, _stop) = start(SamplePersonas::default()).await;
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = client
            .server_reflection_info(tonic::codegen::tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("{answer:?}");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"personas.v1.Personas"), "{names:?}");
    }

    #[tokio::test]
    async fn shutdown_stops_the_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, rx));
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops")
            .unwrap();
    }
}
