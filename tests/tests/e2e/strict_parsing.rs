//! Lenient parsing an outside review found, refused now: a repeated `Authorization` header
//! (which one wins would depend on the proxy in front).

use enlace_registry::demo;
use enlace_tests::TestFederation;

#[tokio::test]
async fn a_repeated_authorization_header_is_refused_on_the_registry_and_the_node() {
    let f = TestFederation::start().await;
    let admin = f.registry.admin().to_string();
    let http = &f.registry.http;
    // Even the valid token twice: one header, one token.
    for second in [admin.as_str(), "not-a-token"] {
        let resp = http
            .get(format!("{}/v1/audit", f.registry.url))
            .header("authorization", format!("Bearer {admin}"))
            .header("authorization", format!("Bearer {second}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    // One header: served.
    let resp = http
        .get(format!("{}/v1/audit", f.registry.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let path = format!(
        "{}/r1/{}/v1/persons/12345678-5",
        f.consumer_url,
        demo::PERSONAS
    );
    let send = |twice: bool| {
        let mut req = http
            .get(&path)
            .header("authorization", format!("Bearer {}", f.client_token))
            .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
            .header("enlace-contract", f.demo.contract.to_string())
            .header("enlace-subject", demo::PERSON);
        if twice {
            req = req.header("authorization", format!("Bearer {}", f.client_token));
        }
        req.send()
    };
    let resp = send(true).await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "urn:enlace:problem:unauthenticated", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("more than once"));
    assert_eq!(send(false).await.unwrap().status(), 200);
}
