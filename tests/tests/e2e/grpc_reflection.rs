//! gRPC server reflection on the consumer listener: a backend sees the protobuf services it holds
//! active contracts for, and only those (v1 and v1alpha, as grpcurl uses them).

use enlace_tests::TestFederation;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_reflection::pb::{v1, v1alpha};

async fn channel(f: &TestFederation) -> Channel {
    Channel::from_shared(f.consumer_url.clone())
        .expect("url")
        .connect()
        .await
        .expect("the consumer node accepts h2c")
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("metadata");
    req.metadata_mut().insert("authorization", value);
    req
}

/// The services a v1 `list_services` answers for the backend holding `token`.
async fn list_v1(f: &TestFederation, token: &str) -> Result<Vec<String>, tonic::Status> {
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel(f).await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(bearer(tonic::codegen::tokio_stream::iter([request]), token))
        .await?
        .into_inner();
    let answer = answers.message().await?.expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    Ok(list.service.into_iter().map(|s| s.name).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_and_describes_the_contracted_services() {
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;

    let f = TestFederation::start_grpc(|_, _| {}).await;
    let names = list_v1(&f, &f.client_token).await.expect("v1 answers");
    assert_eq!(names, vec!["personas.v1.Personas".to_string()]);

    // v1alpha, two requests on one stream, as grpcurl sends them.
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel(&f).await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("personas.v1.Personas".into()),
    ]
    .map(|m| v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut answers = client
        .server_reflection_info(bearer(
            tonic::codegen::tokio_stream::iter(requests),
            &f.client_token,
        ))
        .await
        .expect("v1alpha answers")
        .into_inner();
    let first = answers
        .message()
        .await
        .expect("a frame")
        .expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("{first:?}");
    };
    assert_eq!(list.service.len(), 1);
    assert_eq!(list.service[0].name, "personas.v1.Personas");
    let second = answers
        .message()
        .await
        .expect("a frame")
        .expect("an answer");
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("{second:?}");
    };
    let decoded: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost::Message::decode(b.as_slice()).expect("a file descriptor"))
        .collect();
    let personas = decoded
        .iter()
        .find(|d| d.name() == "personas/v1/personas.proto")
        .expect("the file defining the service");
    assert_eq!(personas.service[0].name(), "Personas");
    assert!(answers.message().await.expect("the end").is_none());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_shows_nothing_without_a_grpc_contract() {
    // The plain demo: SII's renta holds a contract for the REST `personas` only.
    let f = TestFederation::start().await;
    let names = list_v1(&f, &f.client_token).await.expect("v1 answers");
    assert!(names.is_empty(), "{names:?}");
    let err = list_v1(&f, "not-a-token").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    f.stop().await;
}
