//! Tests of OpenAPI parsing, its refusals, and version compatibility.

use super::*;
use proptest::prelude::*;
use serde_json::json;

const V1: &[u8] = include_bytes!("../../samples/personas-v1.json");
const V1_1: &[u8] = include_bytes!("../../samples/personas-v1.1.json");
const V2: &[u8] = include_bytes!("../../samples/personas-v2-breaking.json");

fn doc(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn refused(bytes: &[u8]) -> Problem {
    match parse(bytes) {
        Ok(d) => panic!("accepted: {:?}", d.operations),
        Err(p) => p,
    }
}

/// A one-operation document whose 200 response has `schema`, plus `components`.
fn with_schema(schema: Value, components: Value) -> Vec<u8> {
    doc(json!({
        "openapi": "3.0.3",
        "info": { "title": "t", "version": "1" },
        "paths": { "/x": { "get": {
            "operationId": "getX",
            "responses": { "200": { "description": "ok",
                "content": { "application/json": { "schema": schema } } } }
        } } },
        "components": components
    }))
}

fn fields(d: &Description, op: &str) -> Vec<(String, String, String)> {
    d.operation(op)
        .unwrap()
        .fields
        .iter()
        .map(|f| (f.pointer.clone(), f.class.as_str().to_owned(), f.ty.clone()))
        .collect()
}

fn triples(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    list.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

#[test]
fn sample_parses_with_pointers_classes_and_types() {
    let d = parse(V1).unwrap();
    assert_eq!(d.kind, DescriptionKind::Openapi);
    assert_eq!(d.digest, sha256_hex(&d.stored));
    let ids: Vec<_> = d.operations.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["getPerson", "listDocuments"]);

    let get = d.operation("getPerson").unwrap();
    assert_eq!(
        (get.method.as_str(), get.path.as_str()),
        ("GET", "/persons/{run}")
    );
    assert_eq!(
        get.inputs,
        vec![Input {
            location: "path".into(),
            name: "run".into(),
            required: true,
            ty: "string".into(),
            subject: Some("CL-RUN".into()),
            patterns: vec!["^[0-9]{1,8}-[0-9K]$".into()],
        }]
    );
    assert_eq!(
        fields(&d, "getPerson"),
        triples(&[
            ("/run", "personal", "string"),
            ("/name", "personal", "string"),
            ("/birthDate", "personal", "string"),
            ("/address", "personal", "object"),
            ("/address/street", "personal", "string"),
            ("/address/commune", "personal", "string"),
            ("/address/region", "personal", "string"),
            ("/civilStatus", "personal", "string"),
            ("/nationality", "personal", "string"),
            ("/healthInsurance", "sensitive", "string"),
        ])
    );
    assert_eq!(
        fields(&d, "listDocuments"),
        triples(&[
            ("/documents", "personal", "array"),
            ("/documents/*/type", "personal", "string"),
            ("/documents/*/number", "personal", "string"),
            ("/documents/*/issuedAt", "personal", "string"),
        ])
    );
    assert_eq!(d.operation("listDocuments").unwrap().inputs.len(), 1);
}

#[test]
fn stored_form_reloads_to_the_same_description() {
    let d = parse(V1).unwrap();
    let again = parse(&d.stored).unwrap();
    assert_eq!(again, d);
    assert_eq!(again.stored, d.stored);
    let loaded = Description::load(DescriptionKind::Openapi, &d.stored).unwrap();
    assert_eq!(loaded, d);
}

#[test]
fn yaml_gives_the_same_description_and_digest() {
    // The digest is over compact JSON in document order, so the same members in the same
    // order give the same digest whatever the upload format and its whitespace.
    let value: Value = serde_json::from_slice(V1).unwrap();
    let yaml = serde_norway::to_string(&value).unwrap();
    let from_yaml = parse(yaml.as_bytes()).unwrap();
    let from_json = parse(V1).unwrap();
    assert_eq!(from_yaml.operations, from_json.operations);
    assert_eq!(from_yaml.digest, from_json.digest);
    assert_eq!(from_yaml.stored, from_json.stored);
}

#[test]
fn handwritten_yaml_with_integer_status_keys_and_anchors() {
    let yaml = r#"
openapi: "3.0.3"
info: { title: t, version: "1" }
paths:
  /things/{id}:
    get:
      operationId: getThing
      parameters:
        - { name: id, in: path, schema: { type: integer } }
        - { name: verbose, in: query, schema: { type: boolean } }
      responses:
        200:
          description: ok
          content:
            application/json; charset=utf-8:
              schema:
                type: object
                x-enlace-class: public
                properties:
                  label: &label { type: string, nullable: true }
                  other: *label
"#;
    let d = parse(yaml.as_bytes()).unwrap();
    let op = d.operation("getThing").unwrap();
    assert_eq!(
        fields(&d, "getThing"),
        triples(&[
            ("/label", "public", "null|string"),
            ("/other", "public", "null|string")
        ])
    );
    assert!(op.inputs[0].required, "path parameters are always required");
    assert_eq!(op.inputs[0].ty, "integer");
    assert!(!op.inputs[1].required);
}

#[test]
fn yaml_alias_bombs_are_refused() {
    // Deep: the classic "billion laughs".
    let mut deep = String::from("a0: &a0 [\"lol\"]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        let list = [prev.as_str(); 10].join(", ");
        deep.push_str(&format!("a{i}: &a{i} [{list}]\n"));
    }
    let p = refused(deep.as_bytes());
    assert!(
        matches!(
            p.kind,
            ProblemKind::BodyTooLarge | ProblemKind::InvalidServiceDescription
        ),
        "{p}"
    );

    // Wide: one big anchor aliased many times, within serde_norway's own repetition limit.
    let mut wide = String::from("big: &big [");
    wide.push_str(&vec!["\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\""; 2000].join(","));
    wide.push_str("]\ncopies: [");
    wide.push_str(&vec!["*big"; 2000].join(","));
    wide.push_str("]\n");
    assert!(wide.len() < MAX_DESCRIPTION_BYTES);
    let p = refused(wide.as_bytes());
    assert_eq!(p.kind, ProblemKind::BodyTooLarge, "{p}");
}

#[test]
fn remote_references_are_refused_and_nothing_is_fetched() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let targets = [
        format!("http://127.0.0.1:{port}/schemas.json#/Person"),
        format!("https://127.0.0.1:{port}/schemas.json"),
        "other.json#/x".to_owned(),
        "./other.yaml".to_owned(),
        "file:///etc/passwd".to_owned(),
        "#/definitions/Person".to_owned(),
        "#person-anchor".to_owned(),
    ];
    for target in targets {
        let bytes = with_schema(
            json!({ "type": "object", "properties": { "p": { "$ref": target } } }),
            json!({}),
        );
        let p = refused(&bytes);
        assert_eq!(p.kind, ProblemKind::RemoteReference, "{target}: {p}");
        assert_eq!(p.extensions["ref"], json!(target));
        assert_eq!(
            p.extensions["at"],
            "/paths/~1x/get/responses/200/content/application~1json/schema/properties/p/$ref"
        );
    }
    for (key, target) in [
        ("$dynamicRef", "#meta"),
        ("$id", "https://example.org/person"),
        ("$recursiveRef", "#"),
    ] {
        let bytes = with_schema(json!({ "type": "object", key: target }), json!({}));
        let p = refused(&bytes);
        assert_eq!(p.kind, ProblemKind::RemoteReference, "{key}: {p}");
    }
    // A remote reference in a parameter or path item is found too.
    let bytes = doc(json!({
        "openapi": "3.1.0", "info": {}, "paths": { "/x": { "$ref": "https://example.org/x.json" } }
    }));
    assert_eq!(refused(&bytes).extensions["at"], "/paths/~1x/$ref");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the parser connected somewhere"
    );
}

#[test]
fn oversized_documents_are_refused() {
    let mut bytes = V1.to_vec();
    bytes.resize(MAX_DESCRIPTION_BYTES + 1, b' ');
    assert_eq!(refused(&bytes).kind, ProblemKind::BodyTooLarge);
}

#[test]
fn unclassified_fields_are_all_listed() {
    let bytes = with_schema(
        json!({ "type": "object", "properties": {
            "a": { "type": "string", "x-enlace-class": "public" },
            "b": { "type": "string" },
            "c": { "type": "object", "properties": { "d": { "type": "integer" } } },
            "e": { "type": "array", "items": { "type": "object", "x-enlace-class": "secret",
                   "properties": { "f": { "type": "string" } } } }
        } }),
        json!({}),
    );
    let p = refused(&bytes);
    assert_eq!(p.kind, ProblemKind::UnclassifiedField, "{p}");
    assert_eq!(p.extensions["fields"], json!(["/b", "/c", "/c/d", "/e"]));
    assert_eq!(
        p.extensions["by_operation"]["getX"],
        json!(["/b", "/c", "/c/d", "/e"])
    );
    assert!(p.detail.contains("/c/d"));
}

#[test]
fn unknown_class_is_refused() {
    let bytes = with_schema(
        json!({ "type": "object", "x-enlace-class": "confidential",
                "properties": { "a": { "type": "string" } } }),
        json!({}),
    );
    let p = refused(&bytes);
    assert_eq!(p.kind, ProblemKind::InvalidServiceDescription);
    assert!(p.detail.contains("confidential"), "{p}");
    let bytes = with_schema(
        json!({ "type": "object", "x-enlace-class": 3, "properties": {} }),
        json!({}),
    );
    assert_eq!(refused(&bytes).kind, ProblemKind::InvalidServiceDescription);
}

#[test]
fn operation_ids_are_required_and_unique() {
    let mut v: Value = serde_json::from_slice(V1).unwrap();
    v["paths"]["/persons/{run}"]["get"]
        .as_object_mut()
        .unwrap()
        .remove("operationId");
    let p = refused(&doc(v));
    assert_eq!(p.kind, ProblemKind::InvalidServiceDescription);
    assert!(p.detail.contains("operationId"), "{p}");
    assert!(p.detail.contains("GET /persons/{run}"), "{p}");

    let mut v: Value = serde_json::from_slice(V1).unwrap();
    v["paths"]["/persons/{run}/documents"]["get"]["operationId"] = json!("getPerson");
    let p = refused(&doc(v));
    assert_eq!(p.kind, ProblemKind::InvalidServiceDescription);
    assert!(p.detail.contains("used by both"), "{p}");
}

#[test]
fn only_openapi_3_0_and_3_1_are_accepted() {
    for version in [
        json!("2.0"),
        json!("3.2.0"),
        json!("4.0.0"),
        json!("3.1"),
        json!(3.1),
        json!("3.0.x"),
    ] {
        let mut v: Value = serde_json::from_slice(V1).unwrap();
        v["openapi"] = version.clone();
        let p = refused(&doc(v));
        assert_eq!(p.kind, ProblemKind::InvalidServiceDescription, "{version}");
    }
    let p = refused(&doc(json!({ "swagger": "2.0", "paths": {} })));
    assert!(p.detail.contains("Swagger"), "{p}");
    let p = refused(&doc(json!({ "openapi": "3.1.0", "info": {} })));
    assert!(p.detail.contains("paths"), "{p}");
    for version in ["3.0.0", "3.0.3", "3.1.0", "3.1.1"] {
        let mut v: Value = serde_json::from_slice(V1).unwrap();
        v["openapi"] = json!(version);
        parse(&doc(v)).unwrap();
    }
}

#[test]
fn non_json_non_yaml_is_refused() {
    for bytes in [
        &b"{\"openapi\": "[..],
        b"{\"a\": 1} trailing",
        b"\xff\xfe\x00garbage\x00",
        b"- [unclosed",
        b"just a string",
        b"",
        b"a: 1\n---\nb: 2\n",
        b"{\"a\": 1, \"a\": 2}",
        b"x: !custom 3\n",
    ] {
        let p = refused(bytes);
        assert_eq!(
            p.kind,
            ProblemKind::InvalidServiceDescription,
            "{:?}: {p}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn deep_nesting_is_refused() {
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let bytes = format!("{{\"openapi\": \"3.1.0\", \"x\": {deep}}}");
    let p = refused(bytes.as_bytes());
    assert!(p.detail.contains("deeper than 64"), "{p}");
    let yaml = format!("openapi: \"3.1.0\"\nx: {deep}\n");
    let p = refused(yaml.as_bytes());
    assert!(p.detail.contains("deeper than 64"), "{p}");

    // Shallow in the document, deep through a chain of references.
    let mut schemas = serde_json::Map::new();
    for i in 0..70 {
        schemas.insert(
            format!("S{i}"),
            json!({ "type": "object", "properties": {
                "next": { "$ref": format!("#/components/schemas/S{}", i + 1) } } }),
        );
    }
    schemas.insert("S70".into(), json!({ "type": "string" }));
    let bytes = with_schema(
        json!({ "$ref": "#/components/schemas/S0", "x-enlace-class": "public" }),
        json!({ "schemas": schemas }),
    );
    let p = refused(&bytes);
    assert_eq!(p.kind, ProblemKind::InvalidServiceDescription);
    assert!(p.detail.contains("deeper than 64"), "{p}");
}

#[test]
fn recursive_schemas_are_refused_naming_the_cycle() {
    let components = json!({ "schemas": {
        "Person": { "type": "object", "x-enlace-class": "personal", "properties": {
            "name": { "type": "string" },
            "parents": { "type": "array", "items": { "$ref": "#/components/schemas/Person" } }
        } },
        "A": { "$ref": "#/components/schemas/B" },
        "B": { "allOf": [ { "$ref": "#/components/schemas/A" } ] }
    } });
    let bytes = with_schema(
        json!({ "$ref": "#/components/schemas/Person" }),
        components.clone(),
    );
    let p = refused(&bytes);
    assert_eq!(p.kind, ProblemKind::InvalidServiceDescription);
    assert!(p.detail.contains("recursive"), "{p}");
    assert_eq!(
        p.extensions["cycle"],
        json!(["#/components/schemas/Person", "#/components/schemas/Person"])
    );

    let bytes = with_schema(
        json!({ "$ref": "#/components/schemas/A" }),
        components.clone(),
    );
    let p = refused(&bytes);
    assert!(p.detail.contains("recursive"), "{p}");

    // An unused recursive component is fine.
    let bytes = with_schema(
        json!({ "type": "object", "x-enlace-class": "public",
                "properties": { "n": { "type": "integer" } } }),
        components,
    );
    parse(&bytes).unwrap();

    // A schema used twice side by side is not a cycle.
    let bytes = with_schema(
        json!({ "type": "object", "x-enlace-class": "personal", "properties": {
            "home": { "$ref": "#/components/schemas/Addr" },
            "work": { "$ref": "#/components/schemas/Addr" } } }),
        json!({ "schemas": { "Addr": { "type": "object",
            "properties": { "street": { "type": "string" } } } } }),
    );
    let d = parse(&bytes).unwrap();
    assert_eq!(d.operations[0].fields.len(), 4);
}

#[test]
fn reference_loops_outside_schemas_are_refused() {
    let bytes = doc(json!({
        "openapi": "3.1.0", "info": {},
        "paths": { "/x": { "get": { "operationId": "x",
            "parameters": [ { "$ref": "#/components/parameters/P" } ], "responses": {} } } },
        "components": { "parameters": { "P": { "$ref": "#/components/parameters/P" } } }
    }));
    let p = refused(&bytes);
    assert!(p.detail.contains("circle"), "{p}");

    let bytes = with_schema(json!({ "$ref": "#/components/schemas/Missing" }), json!({}));
    let p = refused(&bytes);
    assert!(p.detail.contains("points at nothing"), "{p}");
}

#[test]
fn composition_merges_and_unites_properties() {
    let bytes = with_schema(
        json!({ "allOf": [
            { "$ref": "#/components/schemas/Base" },
            { "type": "object", "x-enlace-class": "statistical",
              "properties": { "count": { "type": "integer" } } }
        ], "properties": { "extra": { "oneOf": [
            { "type": "object", "properties": { "a": { "type": "string" } } },
            { "type": "object", "properties": { "b": { "type": "number" } } }
        ] } }, "x-enlace-class": "public" }),
        json!({ "schemas": { "Base": { "type": "object", "x-enlace-class": "reserved",
            "properties": { "id": { "type": "string" },
                            "secret": { "type": "string", "x-enlace-class": "secret" } } } } }),
    );
    let d = parse(&bytes).unwrap();
    assert_eq!(
        fields(&d, "getX"),
        triples(&[
            ("/extra", "public", "object"),
            ("/extra/a", "public", "string"),
            ("/extra/b", "public", "number"),
            ("/id", "reserved", "string"),
            ("/secret", "secret", "string"),
            ("/count", "statistical", "integer"),
        ])
    );

    // A use-site class beside `$ref` wins over the referenced schema's.
    let bytes = with_schema(
        json!({ "type": "object", "properties": {
            "base": { "$ref": "#/components/schemas/Base", "x-enlace-class": "personal" } } }),
        json!({ "schemas": { "Base": { "type": "object", "x-enlace-class": "reserved",
            "properties": { "id": { "type": "string" } } } } }),
    );
    let d = parse(&bytes).unwrap();
    assert_eq!(
        fields(&d, "getX"),
        triples(&[
            ("/base", "personal", "object"),
            ("/base/id", "personal", "string")
        ])
    );

    // Members stating different classes need the combining schema to decide.
    let bytes = with_schema(
        json!({ "type": "object", "properties": { "v": { "oneOf": [
            { "type": "string", "x-enlace-class": "public" },
            { "type": "integer", "x-enlace-class": "secret" } ] } } }),
        json!({}),
    );
    let p = refused(&bytes);
    assert!(p.detail.contains("different classes"), "{p}");
}

#[test]
fn property_named_star_is_refused() {
    let bytes = with_schema(
        json!({ "type": "object", "x-enlace-class": "public",
                "properties": { "*": { "type": "string" } } }),
        json!({}),
    );
    let p = refused(&bytes);
    assert!(p.detail.contains("`*`"), "{p}");
}

#[test]
fn inputs_include_path_parameters_and_body_properties() {
    let bytes = doc(json!({
        "openapi": "3.1.0", "info": {},
        "paths": { "/people/{id}": {
            "parameters": [
                { "name": "id", "in": "path", "schema": { "type": "string" } },
                { "name": "trace", "in": "header", "schema": { "type": "string" } }
            ],
            "put": {
                "operationId": "putPerson",
                "parameters": [ { "name": "trace", "in": "header", "required": true,
                                  "schema": { "type": "string" } } ],
                "requestBody": { "$ref": "#/components/requestBodies/Person" },
                "responses": { "204": { "description": "done" } }
            }
        } },
        "components": { "requestBodies": { "Person": { "required": true, "content": {
            "application/json": { "schema": { "type": "object", "required": ["name", "address"],
                "properties": {
                    "name": { "type": "string" },
                    "nick": { "type": "string" },
                    "address": { "type": "object", "required": ["street"], "properties": {
                        "street": { "type": "string" }, "number": { "type": "integer" } } },
                    "phones": { "type": "array", "items": { "type": "object",
                        "required": ["number"],
                        "properties": { "number": { "type": "string" } } } }
                } } } } } } }
    }));
    let d = parse(&bytes).unwrap();
    let op = d.operation("putPerson").unwrap();
    let got: Vec<(&str, &str, bool, &str)> = op
        .inputs
        .iter()
        .map(|i| {
            (
                i.location.as_str(),
                i.name.as_str(),
                i.required,
                i.ty.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("path", "id", true, "string"),
            ("header", "trace", true, "string"),
            ("body", "", true, "object"),
            ("body", "/name", true, "string"),
            ("body", "/nick", false, "string"),
            ("body", "/address", true, "object"),
            ("body", "/address/street", true, "string"),
            ("body", "/address/number", false, "integer"),
            ("body", "/phones", false, "array"),
            ("body", "/phones/*/number", false, "string"),
        ]
    );
    assert!(op.fields.is_empty(), "204 has no JSON content");
}

#[test]
fn lowest_2xx_with_json_content_is_the_success_response() {
    let bytes = doc(json!({
        "openapi": "3.0.0", "info": {},
        "paths": { "/x": { "post": { "operationId": "x", "responses": {
            "default": { "description": "e", "content": { "application/json": { "schema": {
                "type": "object", "properties": { "error": { "type": "string" } } } } } },
            "202": { "description": "later", "content": { "application/json": { "schema": {
                "type": "object", "x-enlace-class": "public",
                "properties": { "late": { "type": "string" } } } } } },
            "201": { "description": "created", "content": { "text/plain": {} } },
            "200": { "description": "ok", "content": { "application/json": { "schema": {
                "type": "object", "x-enlace-class": "public",
                "properties": { "ok": { "type": "boolean" } } } } } }
        } } } }
    }));
    let d = parse(&bytes).unwrap();
    assert_eq!(fields(&d, "x"), triples(&[("/ok", "public", "boolean")]));
}

#[test]
fn property_names_are_escaped_in_pointers() {
    let bytes = with_schema(
        json!({ "type": "object", "x-enlace-class": "public",
                "properties": { "a/b": { "type": "string" }, "c~d": { "type": "string" } } }),
        json!({}),
    );
    let d = parse(&bytes).unwrap();
    let pointers: Vec<_> = d.operations[0]
        .fields
        .iter()
        .map(|f| f.pointer.clone())
        .collect();
    assert_eq!(pointers, ["/a~1b", "/c~0d"]);
}

#[test]
fn compatible_version_has_no_breaks() {
    let v1 = parse(V1).unwrap();
    let v1_1 = parse(V1_1).unwrap();
    assert!(
        v1_1.operation("getPerson")
            .unwrap()
            .fields
            .iter()
            .any(|f| f.pointer == "/deathDate" && f.ty == "null|string")
    );
    assert_eq!(compatibility(&v1, &v1_1), vec![]);
    assert_eq!(crate::compatibility(&v1, &v1_1), vec![]);
    assert_eq!(compatibility(&v1, &v1), vec![]);
}

#[test]
fn breaking_version_lists_each_break() {
    let v1 = parse(V1).unwrap();
    let v2 = parse(V2).unwrap();
    let breaks = compatibility(&v1, &v2);
    let got: Vec<(&str, &str, Option<&str>)> = breaks
        .iter()
        .map(|b| (b.kind.as_str(), b.operation.as_str(), b.item.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("type-changed", "getPerson", Some("/birthDate")),
            ("removed-field", "getPerson", Some("/civilStatus")),
            ("newly-required-input", "getPerson", Some("purpose")),
        ]
    );
    assert!(
        breaks[0].detail.contains("from string to integer"),
        "{}",
        breaks[0].detail
    );
    assert!(
        breaks[2].detail.contains("query parameter `purpose`"),
        "{}",
        breaks[2].detail
    );
}

#[test]
fn removed_renamed_reclassified_and_newly_required() {
    let v1 = parse(V1).unwrap();
    let mut v: Value = serde_json::from_slice(V1).unwrap();
    // Renamed path parameter: not a break. Renamed operation: a break.
    let item = v["paths"]
        .as_object_mut()
        .unwrap()
        .remove("/persons/{run}")
        .unwrap();
    v["paths"]["/persons/{id}"] = item;
    v["components"]["parameters"]["Run"]["name"] = json!("id");
    v["paths"]["/persons/{id}"]["get"]["operationId"] = json!("fetchPerson");
    v["components"]["schemas"]["Person"]["properties"]["nationality"]["x-enlace-class"] =
        json!("public");
    v["paths"]["/persons/{run}/documents"]
        .as_object_mut()
        .unwrap()
        .remove("get");
    v["paths"]["/persons/{run}/documents"]["post"] = json!({ "operationId": "listDocuments",
        "responses": {} });
    let new = parse(&doc(v)).unwrap();
    let kinds: Vec<_> = compatibility(&v1, &new)
        .into_iter()
        .map(|b| (b.kind, b.operation, b.item))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "removed-operation".into(),
                "getPerson".into(),
                Some("getPerson".into())
            ),
            (
                "class-changed".into(),
                "getPerson".into(),
                Some("/nationality".into())
            ),
            ("removed-operation".into(), "listDocuments".into(), None),
        ]
    );

    // An optional parameter becoming required.
    let v1_1 = parse(V1_1).unwrap();
    let mut v: Value = serde_json::from_slice(V1_1).unwrap();
    v["paths"]["/persons/{run}"]["get"]["parameters"][0]["required"] = json!(true);
    let b = compatibility(&v1_1, &parse(&doc(v)).unwrap());
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].kind, "newly-required-input");
    assert!(b[0].detail.contains("became required"), "{}", b[0].detail);
}

#[test]
fn operation_and_field_limits() {
    let mut paths = serde_json::Map::new();
    for i in 0..=MAX_OPERATIONS {
        paths.insert(
            format!("/p{i}"),
            json!({ "get": { "operationId": format!("op{i}"), "responses": {} } }),
        );
    }
    let p = refused(&doc(
        json!({ "openapi": "3.1.0", "info": {}, "paths": paths }),
    ));
    assert!(p.detail.contains("operations"), "{p}");

    // Fan-out through references: 4 levels of 12 properties each make 20,000+ fields.
    let mut schemas = serde_json::Map::new();
    for level in 0..4 {
        let mut props = serde_json::Map::new();
        for i in 0..12 {
            props.insert(
                format!("p{i}"),
                json!({ "$ref": format!("#/components/schemas/L{}", level + 1) }),
            );
        }
        schemas.insert(
            format!("L{level}"),
            json!({ "type": "object", "properties": props }),
        );
    }
    schemas.insert("L4".into(), json!({ "type": "string" }));
    let bytes = with_schema(
        json!({ "$ref": "#/components/schemas/L0", "x-enlace-class": "public" }),
        json!({ "schemas": schemas }),
    );
    let p = refused(&bytes);
    assert!(p.detail.contains("more than 10000"), "{p}");
}

/// Random JSON, biased towards the words an OpenAPI document uses.
fn openapi_ish() -> impl Strategy<Value = Value> {
    let word = prop::sample::select(vec![
        "openapi",
        "3.1.0",
        "3.0.3",
        "paths",
        "/x",
        "/x/{id}",
        "get",
        "post",
        "operationId",
        "parameters",
        "name",
        "in",
        "path",
        "query",
        "required",
        "requestBody",
        "content",
        "application/json",
        "schema",
        "responses",
        "200",
        "201",
        "$ref",
        "#/components/schemas/A",
        "#/components/schemas/B",
        "#/components",
        "components",
        "schemas",
        "A",
        "B",
        "type",
        "object",
        "array",
        "string",
        "properties",
        "items",
        "allOf",
        "oneOf",
        "anyOf",
        "x-enlace-class",
        "public",
        "secret",
        "nullable",
        "*",
        "",
        "prefixItems",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        word.clone().prop_map(Value::from),
    ];
    leaf.prop_recursive(8, 256, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word.clone(), inner), 0..8).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn random_documents_never_panic(v in openapi_ish(), components in openapi_ish()) {
        let _ = parse(&doc(v.clone()));
        let wrapped = json!({ "openapi": "3.1.0", "paths": { "/x": v.clone() },
            "components": { "schemas": { "A": components.clone(), "B": v } } });
        let _ = parse(&doc(wrapped.clone()));
        if let Ok(yaml) = serde_norway::to_string(&wrapped) {
            let _ = parse(yaml.as_bytes());
        }
    }

    #[test]
    fn random_schemas_in_the_sample_never_panic(schema in openapi_ish()) {
        let mut v: Value = serde_json::from_slice(V1).unwrap();
        v["components"]["schemas"]["Address"] = schema;
        if let Ok(d) = parse(&doc(v)) {
            // Whatever is accepted reloads identically from its stored form.
            prop_assert_eq!(parse(&d.stored).unwrap(), d);
        }
    }
}

#[test]
fn the_subject_binding_is_read_checked_and_part_of_compatibility() {
    let v1 = parse(V1).unwrap();
    let bound: Vec<_> = v1
        .operations
        .iter()
        .map(|o| {
            (
                o.id.as_str(),
                o.inputs.iter().find_map(|i| i.subject.clone()),
            )
        })
        .collect();
    assert_eq!(
        bound,
        [
            ("getPerson", Some("CL-RUN".to_string())),
            ("listDocuments", Some("CL-RUN".to_string()))
        ]
    );
    let base: Value = serde_json::from_slice(V1).unwrap();
    let with_run = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v["components"]["parameters"]["Run"]);
        doc(v)
    };
    // Refused: a scheme that is not one, on a header, or two per operation.
    let p = refused(&with_run(&|r| r["x-enlace-subject"] = json!("cl-run")));
    assert!(p.detail.contains("[A-Z][A-Z0-9-]{1,15}"), "{}", p.detail);
    let p = refused(&with_run(&|r| r["x-enlace-subject"] = json!(7)));
    assert!(p.detail.contains("subject scheme"), "{}", p.detail);
    let mut v = base.clone();
    v["paths"]["/persons/{run}"]["get"]["parameters"] = json!([
        {"name": "X-Run", "in": "header", "schema": {"type": "string"}, "x-enlace-subject": "CL-RUN"}
    ]);
    let p = refused(&doc(v));
    assert!(p.detail.contains("only path and query"), "{}", p.detail);
    let mut v = base.clone();
    v["paths"]["/persons/{run}"]["get"]["parameters"] = json!([
        {"name": "other", "in": "query", "schema": {"type": "string"}, "x-enlace-subject": "CL-RUN"}
    ]);
    let p = refused(&doc(v));
    assert!(p.detail.contains("at most one parameter"), "{}", p.detail);

    // Dropping the binding, or moving it to another scheme, breaks the version.
    let unbound = parse(&with_run(&|r| {
        r.as_object_mut().unwrap().remove("x-enlace-subject");
    }))
    .unwrap();
    let kinds: Vec<_> = compatibility(&v1, &unbound)
        .into_iter()
        .map(|b| (b.kind, b.operation))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "subject-binding-changed".to_string(),
                "getPerson".to_string()
            ),
            (
                "subject-binding-changed".to_string(),
                "listDocuments".to_string()
            )
        ]
    );
    let other = parse(&with_run(&|r| r["x-enlace-subject"] = json!("CL-RUT"))).unwrap();
    let b = compatibility(&v1, &other);
    assert_eq!(b.len(), 2, "{b:?}");
    assert!(
        b[0].detail.contains("CL-RUN") && b[0].detail.contains("CL-RUT"),
        "{}",
        b[0].detail
    );
    // Adding one where there was none breaks too (clients must now name the person).
    assert_eq!(compatibility(&unbound, &v1).len(), 2);
    assert!(compatibility(&v1, &v1).is_empty());
}

#[test]
fn removed_inputs_and_changed_input_types_are_breaks() {
    let v1_1 = parse(V1_1).unwrap();
    let base: Value = serde_json::from_slice(V1_1).unwrap();
    let query = base["paths"]["/persons/{run}"]["get"]["parameters"][0].clone();
    assert_eq!(query["in"], "query", "{query}");
    let name = query["name"].as_str().unwrap().to_string();

    let mut v = base.clone();
    v["paths"]["/persons/{run}"]["get"]["parameters"] = json!([]);
    let b = compatibility(&v1_1, &parse(&doc(v)).unwrap());
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(
        (b[0].kind.as_str(), b[0].item.as_deref()),
        ("removed-input", Some(name.as_str()))
    );

    let mut v = base.clone();
    v["paths"]["/persons/{run}"]["get"]["parameters"][0]["schema"] = json!({"type": "integer"});
    let b = compatibility(&v1_1, &parse(&doc(v)).unwrap());
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].kind, "type-changed");
    assert!(
        b[0].detail.contains(&format!("query parameter `{name}`")),
        "{}",
        b[0].detail
    );
}

/// A `pattern` that is no regular expression is refused at upload, where before it was
/// accepted and then every call through the nodes failed 422.
#[test]
fn a_pattern_that_does_not_compile_is_refused_at_upload() {
    for pattern in ["(", "\\p{Nonexistent}", "[z-a]"] {
        let d = doc(json!({
            "openapi": "3.0.3",
            "info": { "title": "t", "version": "1" },
            "paths": { "/x/{id}": { "get": {
                "operationId": "getX",
                "parameters": [{ "name": "id", "in": "path", "required": true,
                    "schema": { "type": "string", "pattern": pattern } }],
                "responses": { "200": { "description": "ok",
                    "content": { "application/json": { "schema": {
                        "type": "object", "x-enlace-class": "public",
                        "properties": { "name": { "type": "string" } } } } } } }
            } } }
        }));
        let p = refused(&d);
        assert_eq!(
            p.kind,
            ProblemKind::InvalidServiceDescription,
            "{pattern}: {p:?}"
        );
        assert!(p.detail.contains("compiled"), "{pattern}: {}", p.detail);
        assert_eq!(
            p.extensions["at"], "/paths/~1x~1{id}/get/parameters/0/schema/pattern",
            "{pattern}: {p:?}"
        );
    }
    // The same document with a pattern that compiles is accepted.
    let ok = with_schema(
        json!({ "type": "object", "x-enlace-class": "public",
                "properties": { "name": { "type": "string", "pattern": "^[0-9]+$" } } }),
        json!({}),
    );
    parse(&ok).unwrap();
}

/// A pattern is found wherever a validator would use it (behind `$ref`, under
/// `additionalProperties`, as a `patternProperties` name) and the problem points at it.
#[test]
fn a_bad_pattern_is_pointed_at_where_it_is_written() {
    let schema = json!({ "type": "object", "x-enlace-class": "public",
        "properties": { "tags": { "$ref": "#/components/schemas/Tags" } } });
    let components = |tags: Value| json!({ "schemas": { "Tags": tags } });
    let cases = [
        (
            json!({ "type": "object", "additionalProperties": { "type": "string", "pattern": "(" } }),
            "/components/schemas/Tags/additionalProperties/pattern",
        ),
        (
            json!({ "type": "object", "patternProperties": { "[": { "type": "string" } } }),
            "/components/schemas/Tags/patternProperties/[",
        ),
        (
            json!({ "type": "array", "items": { "type": "string", "pattern": "\\p{Nonexistent}" } }),
            "/components/schemas/Tags/items/pattern",
        ),
    ];
    for (tags, at) in cases {
        let p = refused(&with_schema(schema.clone(), components(tags)));
        assert_eq!(p.kind, ProblemKind::InvalidServiceDescription, "{p:?}");
        assert_eq!(p.extensions["at"], at, "{p:?}");
        assert!(p.detail.contains(at), "{}", p.detail);
    }
}

/// A pattern longer than the limit, or one whose compiled automaton would be larger than the
/// limit, is refused at upload: the registry never builds it, nor does a node.
#[test]
fn patterns_are_bounded_in_length_and_compiled_size() {
    let body = |pattern: &str| {
        with_schema(
            json!({ "type": "object", "x-enlace-class": "public",
                "properties": { "name": { "type": "string", "pattern": pattern } } }),
            json!({}),
        )
    };
    let long = "a".repeat(crate::validate::MAX_PATTERN_BYTES + 1);
    let p = refused(&body(&long));
    assert!(p.detail.contains("bytes; the limit is"), "{}", p.detail);
    assert_eq!(
        p.extensions["at"],
        "/paths/~1x/get/responses/200/content/application~1json/schema/properties/name/pattern"
    );
    // Short to write, megabytes to compile: a Unicode class repeated.
    let p = refused(&body("^(\\p{L}[0-9]){300}$"));
    assert!(p.detail.contains("cannot be compiled"), "{}", p.detail);
    // Within both limits.
    parse(&body("^[0-9]{1,8}-[0-9Kk]$")).unwrap();
    parse(&body(&"a".repeat(crate::validate::MAX_PATTERN_BYTES))).unwrap();
}

/// Patterns in the compatibility report: on a request input, one added or changed is a break
/// and one removed is not; on a response field, any change is a break.
#[test]
fn patterns_count_in_compatibility() {
    let v = |param: Value, body: Value, field: Value| {
        parse(&doc(json!({
            "openapi": "3.0.3",
            "info": { "title": "t", "version": "1" },
            "paths": { "/x": { "post": {
                "operationId": "postX",
                "parameters": [{ "name": "q", "in": "query", "schema": param }],
                "requestBody": { "content": { "application/json": { "schema": {
                    "type": "object", "properties": { "code": body } } } } },
                "responses": { "200": { "description": "ok",
                    "content": { "application/json": { "schema": {
                        "type": "object", "x-enlace-class": "public",
                        "properties": { "name": field } } } } } }
            } } }
        })))
        .unwrap()
    };
    let plain = json!({ "type": "string" });
    let digits = json!({ "type": "string", "pattern": "^[0-9]+$" });
    let letters = json!({ "type": "string", "pattern": "^[a-z]+$" });
    let kinds = |old: &Description, new: &Description| {
        compatibility(old, new)
            .into_iter()
            .map(|b| (b.kind, b.item.unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    let base = v(plain.clone(), plain.clone(), plain.clone());
    assert_eq!(kinds(&base, &base), []);

    // Added on each side.
    let brk = |item: &str| ("pattern-changed".to_string(), item.to_string());
    assert_eq!(
        kinds(&base, &v(digits.clone(), plain.clone(), plain.clone())),
        [brk("q")]
    );
    assert_eq!(
        kinds(&base, &v(plain.clone(), digits.clone(), plain.clone())),
        [brk("/code")]
    );
    assert_eq!(
        kinds(&base, &v(plain.clone(), plain.clone(), digits.clone())),
        [brk("/name")]
    );
    // Changed: a different pattern is a break even on the request side.
    let all_digits = v(digits.clone(), digits.clone(), digits.clone());
    assert_eq!(
        kinds(
            &all_digits,
            &v(letters.clone(), letters.clone(), letters.clone())
        ),
        [brk("/name"), brk("q"), brk("/code")]
    );
    // Removed: compatible for requests, a break for the response field.
    assert_eq!(kinds(&all_digits, &base), [brk("/name")]);
    // Items of an array parameter count as the parameter's own.
    let array = |items: Value| json!({ "type": "array", "items": items });
    assert_eq!(
        kinds(
            &v(array(plain.clone()), plain.clone(), plain.clone()),
            &v(array(digits.clone()), plain.clone(), plain.clone())
        ),
        [brk("q")]
    );
    let detail = &compatibility(&base, &v(digits.clone(), plain.clone(), plain.clone()))[0].detail;
    assert!(detail.contains("`^[0-9]+$`"), "{detail}");
}

/// Deeply nested YAML flow collections are refused before the YAML parser sees them: the
/// parser's cost grows with the square of the nesting (4.2 s at 50,000 brackets, 75 s at
/// 200,000), and its own depth is only checked after the whole parse.
#[test]
fn deep_yaml_flow_nesting_is_refused_before_parsing() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let n = 50_000;
        let text = format!("a: {}{}\n", open.repeat(n), close.repeat(n));
        let p = refused(text.as_bytes());
        assert!(p.detail.contains("flow collections"), "{}", p.detail);
    }
    // Brackets inside quoted scalars and comments are text, not nesting.
    let quoted = format!(
        "openapi: 3.0.3\ninfo: {{title: '{}', version: \"{}\"}}\n# {}\npaths: {{}}\n",
        "[".repeat(200),
        "{".repeat(200),
        "[".repeat(200)
    );
    let not_flow = |text: &str| {
        if let Err(p) = parse(text.as_bytes()) {
            assert!(!p.detail.contains("flow collections"), "{}", p.detail);
        }
    };
    not_flow(&quoted);
    // 64 levels are still read (and refused by the seed only beyond its own limit).
    let ok_depth = format!("a: {}{}\n", "[".repeat(60), "]".repeat(60));
    not_flow(&ok_depth);
}
