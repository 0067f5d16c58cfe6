//! Tests of protobuf descriptions: the demo service, classes, refusals, compatibility.

use super::*;
use enlace_proto::{OPTIONS_PROTO as SOURCE_OPTIONS, PERSONAS_DESCRIPTOR_SET, PERSONAS_PROTO};
use proptest::prelude::*;

const PERSONAS_FILE: &str = "personas/v1/personas.proto";

fn sources(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

fn compile_one(source: &str) -> Result<Description, Problem> {
    compile_sources(&sources(&[("svc/v1/svc.proto", source)]))
}

/// The demo service with one textual change.
fn personas_with(from: &str, to: &str) -> Description {
    assert!(
        PERSONAS_PROTO.contains(from),
        "`{from}` not in personas.proto"
    );
    let source = PERSONAS_PROTO.replacen(from, to, 1);
    compile_sources(&sources(&[(PERSONAS_FILE, &source)])).expect("variant compiles")
}

fn personas() -> Description {
    from_descriptor_set(PERSONAS_DESCRIPTOR_SET).expect("the demo set is valid")
}

fn pointers(op: &Operation) -> Vec<&str> {
    op.fields.iter().map(|f| f.pointer.as_str()).collect()
}

fn field<'a>(op: &'a Operation, pointer: &str) -> &'a Field {
    op.fields
        .iter()
        .find(|f| f.pointer == pointer)
        .unwrap_or_else(|| panic!("no field {pointer} in {:?}", pointers(op)))
}

fn kinds(breaks: &[Break]) -> Vec<&str> {
    breaks.iter().map(|b| b.kind.as_str()).collect()
}

#[test]
fn embedded_options_match_enlace_proto() {
    assert_eq!(OPTIONS_PROTO, SOURCE_OPTIONS);
}

#[test]
fn personas_descriptor_set_parses() {
    let d = personas();
    assert_eq!(d.kind, DescriptionKind::Protobuf);
    assert_eq!(d.digest, sha256_hex(&d.stored));
    let ids: Vec<&str> = d.operations.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "personas.v1.Personas/GetPerson",
            "personas.v1.Personas/ListDocuments",
            "personas.v1.Personas/VerifyIdentities",
            "personas.v1.Personas/LookupPersons"
        ]
    );

    let get = d.operation("personas.v1.Personas/GetPerson").unwrap();
    assert_eq!(get.method, "POST");
    assert_eq!(get.path, "/personas.v1.Personas/GetPerson");
    assert!(!get.client_streaming && !get.server_streaming);
    assert_eq!(
        get.inputs,
        [Input {
            location: "message".into(),
            name: "/run".into(),
            required: false,
            ty: "string".into(),
            subject: Some("CL-RUN".into()),
            patterns: Vec::new(),
        }]
    );
    assert_eq!(
        pointers(get),
        [
            "/run",
            "/name",
            "/birth_date",
            "/address",
            "/address/street",
            "/address/commune",
            "/address/region",
            "/civil_status",
            "/nationality",
            "/health_insurance"
        ]
    );
    assert_eq!(field(get, "/health_insurance").class, FieldClass::Sensitive);
    assert_eq!(field(get, "/name").class, FieldClass::Personal);
    assert_eq!(field(get, "/address/commune").class, FieldClass::Personal);
    assert_eq!(field(get, "/address").ty, "message personas.v1.Address");
    assert_eq!(field(get, "/name").ty, "string");

    let list = d.operation("personas.v1.Personas/ListDocuments").unwrap();
    assert_eq!(list.path, "/personas.v1.Personas/ListDocuments");
    assert!(!list.client_streaming && list.server_streaming);
    assert_eq!(pointers(list), ["/type", "/number", "/issued_at"]);
    assert!(list.fields.iter().all(|f| f.class == FieldClass::Personal));

    let verify = d
        .operation("personas.v1.Personas/VerifyIdentities")
        .unwrap();
    assert!(verify.client_streaming && !verify.server_streaming);
    assert_eq!(
        pointers(verify),
        ["/checked", "/matched", "/mismatched_runs"]
    );
    assert_eq!(field(verify, "/checked").class, FieldClass::Statistical);
    assert_eq!(
        field(verify, "/mismatched_runs").class,
        FieldClass::Personal
    );
    let lookup = d.operation("personas.v1.Personas/LookupPersons").unwrap();
    assert!(lookup.client_streaming && lookup.server_streaming);
    assert_eq!(pointers(lookup), pointers(get));
}

#[test]
fn protobuf_stored_bytes_reload_identically() {
    let d = personas();
    let again = from_descriptor_set(&d.stored).unwrap();
    assert_eq!(again, d);
    assert_eq!(
        Description::load(DescriptionKind::Protobuf, &d.stored).unwrap(),
        d
    );
}

#[test]
fn compiled_sources_match_the_built_descriptor_set() {
    let compiled = compile_sources(&sources(&[(PERSONAS_FILE, PERSONAS_PROTO)])).unwrap();
    assert_eq!(compiled.operations, personas().operations);
    // Uploading Enlace's options file unchanged is accepted too.
    let with_options = compile_sources(&sources(&[
        (OPTIONS_FILE, SOURCE_OPTIONS),
        (PERSONAS_FILE, PERSONAS_PROTO),
    ]))
    .unwrap();
    assert_eq!(with_options.operations, compiled.operations);
}

#[test]
fn unclassified_fields_are_listed() {
    let err = compile_one(
        r#"syntax = "proto3";
        package svc.v1;
        import "enlace/options.proto";
        service Svc { rpc Get(Req) returns (Resp); }
        message Req { string id = 1; }
        message Inner { string a = 1; string b = 2 [(enlace.class) = "public"]; }
        message Resp {
          string nickname = 1;
          string name = 2 [(enlace.class) = "personal"];
          Inner inner = 3;
        }"#,
    )
    .unwrap_err();
    assert_eq!(err.kind, ProblemKind::UnclassifiedField, "{err:?}");
    assert_eq!(
        err.extensions["fields"],
        serde_json::json!(["/nickname", "/inner/a"])
    );
}

#[test]
fn a_set_without_the_class_option_is_unclassified() {
    let err = compile_one(
        r#"syntax = "proto3";
        package svc.v1;
        service Svc { rpc Get(Req) returns (Req); }
        message Req { string id = 1; }"#,
    )
    .unwrap_err();
    assert_eq!(err.kind, ProblemKind::UnclassifiedField, "{err:?}");
    assert_eq!(err.extensions["fields"], serde_json::json!(["/id"]));
}

#[test]
fn classes_are_inherited_and_containers_take_the_strictest() {
    let d = compile_one(
        r#"syntax = "proto3";
        package svc.v1;
        import "enlace/options.proto";
        import "google/protobuf/timestamp.proto";
        service Svc { rpc Get(Req) returns (Resp); }
        message Req { string id = 1; Req next = 2; }
        message Health { string insurer = 1; string plan = 2 [(enlace.class) = "secret"]; }
        message Mixed { string a = 1 [(enlace.class) = "public"]; string b = 2 [(enlace.class) = "sensitive"]; }
        message Doc { string number = 1 [(enlace.class) = "personal"]; }
        message Resp {
          Health health = 1 [(enlace.class) = "sensitive"];
          Mixed mixed = 2;
          repeated Doc docs = 3;
          map<string, int32> counts = 4 [(enlace.class) = "statistical"];
          google.protobuf.Timestamp at = 5 [(enlace.class) = "public"];
          repeated string tags = 6 [(enlace.class) = "public"];
        }"#,
    )
    .unwrap();
    let op = d.operation("svc.v1.Svc/Get").unwrap();
    assert_eq!(
        pointers(op),
        [
            "/health",
            "/health/insurer",
            "/health/plan",
            "/mixed",
            "/mixed/a",
            "/mixed/b",
            "/docs",
            "/docs/*/number",
            "/counts",
            "/at",
            "/tags"
        ]
    );
    assert_eq!(field(op, "/health/insurer").class, FieldClass::Sensitive);
    assert_eq!(field(op, "/health/plan").class, FieldClass::Secret);
    assert_eq!(field(op, "/mixed").class, FieldClass::Sensitive);
    assert_eq!(field(op, "/docs").class, FieldClass::Personal);
    assert_eq!(field(op, "/docs").ty, "repeated message svc.v1.Doc");
    assert_eq!(field(op, "/docs/*/number").ty, "string");
    assert_eq!(field(op, "/counts").ty, "map<string,int32>");
    assert_eq!(field(op, "/at").ty, "message google.protobuf.Timestamp");
    assert_eq!(field(op, "/tags").ty, "repeated string");
    // A recursive request is listed with the recursion cut.
    let names: Vec<&str> = op.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["/id", "/next"]);
    assert_eq!(op.inputs[1].ty, "message svc.v1.Req");
}

#[test]
fn the_demo_binds_the_run_of_every_request_to_the_subject() {
    let d = personas();
    for op in &d.operations {
        let bound: Vec<(&str, &str)> = op
            .inputs
            .iter()
            .filter_map(|i| Some((i.name.as_str(), i.subject.as_deref()?)))
            .collect();
        assert_eq!(bound, [("/run", "CL-RUN")], "{}", op.id);
    }
    // An earlier options file (without `subject`), uploaded unchanged, is still accepted.
    let old = PREVIOUS_OPTIONS_PROTO[0];
    assert!(!old.contains("subject") && SOURCE_OPTIONS.contains("string subject = 51235;"));
    let compiled = compile_sources(&sources(&[
        (OPTIONS_FILE, old),
        (PERSONAS_FILE, PERSONAS_PROTO),
    ]))
    .unwrap();
    assert_eq!(compiled.operations, d.operations);
    let changed = old.replace("51234", "51236");
    let err = compile_sources(&sources(&[
        (OPTIONS_FILE, &changed),
        (PERSONAS_FILE, PERSONAS_PROTO),
    ]))
    .unwrap_err();
    assert!(err.detail.contains("provided by Enlace"), "{err:?}");
}

/// A service whose request `Req` carries `req_fields`, and whose response `Resp` carries
/// `resp_fields` next to a classified `name`.
fn subject_service(req_fields: &str, resp_fields: &str) -> Result<Description, Problem> {
    compile_one(&format!(
        r#"syntax = "proto3";
        package svc.v1;
        import "enlace/options.proto";
        service Svc {{ rpc Get(Req) returns (Resp); }}
        message Inner {{ string run = 1; }}
        message Req {{ {req_fields} }}
        message Resp {{ string name = 1 [(enlace.class) = "personal"]; {resp_fields} }}"#
    ))
}

#[test]
fn a_subject_binding_is_a_singular_string_of_the_request_with_a_scheme() {
    let d = subject_service(
        r#"string folio = 1; optional string rut = 2 [(enlace.subject) = "CL-RUT2"];"#,
        "",
    )
    .unwrap();
    let op = d.operation("svc.v1.Svc/Get").unwrap();
    let bound: Vec<(&str, Option<&str>)> = op
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.subject.as_deref()))
        .collect();
    assert_eq!(bound, [("/folio", None), ("/rut", Some("CL-RUT2"))]);

    for (req, resp, says) in [
        (
            r#"string run = 1 [(enlace.subject) = "cl-run"];"#,
            "",
            "is not a subject scheme",
        ),
        (
            r#"string run = 1 [(enlace.subject) = "C"];"#,
            "",
            "is not a subject scheme",
        ),
        (
            r#"string run = 1 [(enlace.subject) = "CL RUN"];"#,
            "",
            "is not a subject scheme",
        ),
        (
            r#"int64 run = 1 [(enlace.subject) = "CL-RUN"];"#,
            "",
            "singular string field",
        ),
        (
            r#"bytes run = 1 [(enlace.subject) = "CL-RUN"];"#,
            "",
            "singular string field",
        ),
        (
            r#"repeated string run = 1 [(enlace.subject) = "CL-RUN"];"#,
            "",
            "singular string field",
        ),
        (
            r#"map<string, string> run = 1 [(enlace.subject) = "CL-RUN"];"#,
            "",
            "singular string field",
        ),
        (
            r#"Inner inner = 1 [(enlace.subject) = "CL-RUN"];"#,
            "",
            "singular string field",
        ),
        (
            r#"string run = 1 [(enlace.subject) = "CL-RUN"]; string rut = 2 [(enlace.subject) = "CL-RUN"];"#,
            "",
            "at most one field",
        ),
        // On a response field, it would bind nothing.
        (
            "string run = 1;",
            r#"string run = 2 [(enlace.subject) = "CL-RUN", (enlace.class) = "personal"];"#,
            "is not the request message of the methods",
        ),
    ] {
        let err = subject_service(req, resp).expect_err(req);
        assert_eq!(err.kind, ProblemKind::InvalidServiceDescription, "{req}");
        assert!(err.detail.contains(says), "{req}: {}", err.detail);
        assert!(
            err.detail.contains("svc.v1."),
            "names the field: {}",
            err.detail
        );
    }
    // Deeper in the request: only top-level fields bind.
    let err = compile_one(
        r#"syntax = "proto3";
        package svc.v1;
        import "enlace/options.proto";
        service Svc { rpc Get(Req) returns (Resp); }
        message Inner { string run = 1 [(enlace.subject) = "CL-RUN"]; }
        message Req { Inner inner = 1; }
        message Resp { string name = 1 [(enlace.class) = "personal"]; }"#,
    )
    .unwrap_err();
    assert!(
        err.detail.contains("`svc.v1.Inner.run`") && err.detail.contains("not the request"),
        "{}",
        err.detail
    );
}

#[test]
fn compatibility_reports_changed_subject_bindings() {
    let d = personas();
    let bound = "message GetPersonRequest {\n  // The person's RUN, with check digit: \"12345678-5\". It names the data subject: the\n  // provider node requires it to be the person `enlace-subject` names.\n  string run = 1 [(enlace.subject) = \"CL-RUN\"];";
    let unbound = personas_with(bound, "message GetPersonRequest {\n  string run = 1;");
    // GetPerson and LookupPersons take GetPersonRequest.
    for (old, new) in [(&d, &unbound), (&unbound, &d)] {
        let breaks = compatibility(old, new);
        assert_eq!(
            kinds(&breaks),
            ["subject-binding-changed", "subject-binding-changed"],
            "{breaks:#?}"
        );
        assert_eq!(breaks[0].operation, "personas.v1.Personas/GetPerson");
        assert_eq!(breaks[0].item.as_deref(), Some("/run"));
    }
    let other_scheme = personas_with(
        "string run = 1 [(enlace.subject) = \"CL-RUN\"];\n}\n\nmessage ListDocumentsRequest",
        "string run = 1 [(enlace.subject) = \"CL-DNI\"];\n}\n\nmessage ListDocumentsRequest",
    );
    let breaks = compatibility(&d, &other_scheme);
    assert_eq!(kinds(&breaks).len(), 2, "{breaks:#?}");
    assert!(breaks[0].detail.contains("CL-DNI"), "{}", breaks[0].detail);
    let moved = personas_with(
        "message ListDocumentsRequest {\n  string run = 1 [(enlace.subject) = \"CL-RUN\"];",
        "message ListDocumentsRequest {\n  string run = 1;\n  string holder = 2 [(enlace.subject) = \"CL-RUN\"];",
    );
    let breaks = compatibility(&d, &moved);
    assert_eq!(kinds(&breaks), ["subject-binding-changed"], "{breaks:#?}");
    assert_eq!(breaks[0].operation, "personas.v1.Personas/ListDocuments");
    assert_eq!(breaks[0].item.as_deref(), Some("/holder"));
    assert!(
        breaks[0].detail.contains("`/run`") && breaks[0].detail.contains("`/holder`"),
        "{}",
        breaks[0].detail
    );
}

#[test]
fn unknown_class_is_refused() {
    let err = compile_one(
        r#"syntax = "proto3";
        package svc.v1;
        import "enlace/options.proto";
        service Svc { rpc Get(Resp) returns (Resp); }
        message Resp { string id = 1 [(enlace.class) = "confidential"]; }"#,
    )
    .unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidServiceDescription, "{err:?}");
    assert_eq!(err.extensions["class"], "confidential");
    assert_eq!(err.extensions["field"], "/id");
}

#[test]
fn recursive_response_messages_are_refused() {
    for body in [
        "message Node { string v = 1 [(enlace.class) = \"public\"]; Node child = 2; }",
        "message Node { repeated Leaf leaves = 1; } message Leaf { Node back = 1 [(enlace.class) = \"public\"]; }",
    ] {
        let source = format!(
            "syntax = \"proto3\"; package svc.v1; import \"enlace/options.proto\";
             service Svc {{ rpc Get(Req) returns (Node); }}
             message Req {{ string id = 1; }}
             {body}"
        );
        let err = compile_one(&source).unwrap_err();
        assert_eq!(err.kind, ProblemKind::InvalidServiceDescription, "{err:?}");
        assert!(err.detail.contains("contains itself"), "{}", err.detail);
    }
}

#[test]
fn deep_nesting_is_refused() {
    let mut source = String::from(
        "syntax = \"proto3\"; package svc.v1; import \"enlace/options.proto\";
         service Svc { rpc Get(M0) returns (M0); }\n",
    );
    for i in 0..40 {
        source.push_str(&format!(
            "message M{i} {{ M{} next = 1 [(enlace.class) = \"public\"]; }}\n",
            i + 1
        ));
    }
    source.push_str("message M40 { string v = 1 [(enlace.class) = \"public\"]; }\n");
    let err = compile_one(&source).unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidServiceDescription, "{err:?}");
    assert!(err.detail.contains("nested more than"), "{}", err.detail);
}

#[test]
fn exponential_expansion_is_refused() {
    // Each level doubles the number of pointers: 2^20 leaves from a few hundred bytes.
    let mut source = String::from(
        "syntax = \"proto3\"; package svc.v1; import \"enlace/options.proto\";
         service Svc { rpc Get(Req) returns (M0); }
         message Req { string id = 1; }\n",
    );
    for i in 0..20 {
        source.push_str(&format!(
            "message M{i} {{ M{n} a = 1 [(enlace.class) = \"public\"]; M{n} b = 2; }}\n",
            n = i + 1
        ));
    }
    source.push_str("message M20 { string v = 1 [(enlace.class) = \"public\"]; }\n");
    let err = compile_one(&source).unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidServiceDescription, "{err:?}");
    assert!(err.detail.contains("more than"), "{}", err.detail);
}

#[test]
fn imports_never_reach_the_filesystem() {
    // This file exists on disk, relative to the test's working directory and absolutely.
    let on_disk = "src/protobuf/enlace_options.proto";
    assert!(std::path::Path::new(on_disk).exists());
    let absolute = format!("{}/{on_disk}", env!("CARGO_MANIFEST_DIR"));
    for import in [
        "/etc/passwd",
        "../x.proto",
        "missing/other.proto",
        on_disk,
        absolute.as_str(),
    ] {
        let source = format!(
            "syntax = \"proto3\"; package svc.v1; import \"{import}\";
             service Svc {{ rpc Get(Req) returns (Req); }}
             message Req {{ string id = 1; }}"
        );
        let err = compile_one(&source).unwrap_err();
        assert_eq!(
            err.kind,
            ProblemKind::InvalidServiceDescription,
            "{import}: {err:?}"
        );
        println!("{import}: {}", err.detail);
        // protox refuses absolute and `..` import paths while parsing; the rest are not found.
        if import.starts_with('/') || import.starts_with("..") {
            assert!(err.detail.contains("refused"), "{import}: {}", err.detail);
        } else {
            assert!(err.detail.contains("not found"), "{import}: {}", err.detail);
        }
    }
}

#[test]
fn bad_file_names_are_refused() {
    let ok = "syntax = \"proto3\"; package a;";
    for name in [
        "/etc/x.proto",
        "../x.proto",
        "a/../../x.proto",
        "./x.proto",
        "a//x.proto",
        "x.txt",
        "",
        "c:\\x.proto",
        "google/protobuf/timestamp.proto",
    ] {
        let err = compile_sources(&sources(&[(name, ok)])).unwrap_err();
        assert_eq!(
            err.kind,
            ProblemKind::InvalidServiceDescription,
            "{name}: {err:?}"
        );
    }
    // A changed copy of Enlace's options file is refused.
    let err = compile_sources(&sources(&[(
        OPTIONS_FILE,
        "syntax = \"proto3\"; package enlace;",
    )]))
    .unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidServiceDescription);
    // Duplicates and empty uploads too.
    let twice = sources(&[("a.proto", ok), ("a.proto", ok)]);
    assert_eq!(
        compile_sources(&twice).unwrap_err().kind,
        ProblemKind::InvalidServiceDescription
    );
    assert_eq!(
        compile_sources(&[]).unwrap_err().kind,
        ProblemKind::InvalidServiceDescription
    );
}

#[test]
fn upload_bounds_are_enforced() {
    let many: Vec<(String, String)> = (0..=MAX_SOURCE_FILES)
        .map(|i| (format!("f{i}.proto"), "syntax = \"proto3\";".to_string()))
        .collect();
    assert_eq!(
        compile_sources(&many).unwrap_err().kind,
        ProblemKind::BodyTooLarge
    );
    let big = "a".repeat(MAX_DESCRIPTION_BYTES);
    let err = compile_sources(&sources(&[("big.proto", &big)])).unwrap_err();
    assert_eq!(err.kind, ProblemKind::BodyTooLarge);
}

#[test]
fn compile_errors_name_the_file() {
    let err = compile_one("syntax = \"proto3\"; message {").unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidServiceDescription);
    assert!(err.detail.contains("svc/v1/svc.proto"), "{}", err.detail);
    let err = compile_one("syntax = \"proto3\"; message A { Missing m = 1; }").unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidServiceDescription);
}

#[test]
fn garbage_and_oversized_sets_are_refused() {
    let err = from_descriptor_set(b"\xff\xff\xff\xffnot a descriptor set").unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidServiceDescription);
    let err = from_descriptor_set(&vec![0u8; MAX_DESCRIPTION_BYTES + 1]).unwrap_err();
    assert_eq!(err.kind, ProblemKind::BodyTooLarge);
    // Valid but without a service (or only infrastructure services).
    let err = from_descriptor_set(b"").unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidServiceDescription);
    let err = compile_sources(&sources(&[(
        "grpc/health/v1/health.proto",
        "syntax = \"proto3\"; package grpc.health.v1;
         message Req { string service = 1; }
         service Health { rpc Check(Req) returns (Req); }",
    )]))
    .unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidServiceDescription);
    assert!(err.detail.contains("no service method"), "{}", err.detail);
}

#[test]
fn a_set_missing_its_imports_is_refused() {
    // Only the personas file, without enlace/options.proto and descriptor.proto.
    use prost::Message;
    let mut set = prost_types::FileDescriptorSet::decode(PERSONAS_DESCRIPTOR_SET).unwrap();
    set.file.retain(|f| f.name() == PERSONAS_FILE);
    let err = from_descriptor_set(&set.encode_to_vec()).unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidServiceDescription, "{err:?}");
}

#[test]
fn compatibility_of_identical_and_extended_versions() {
    let d = personas();
    assert_eq!(compatibility(&d, &d), []);
    let added_field = personas_with(
        "string health_insurance = 7 [(enlace.class) = \"sensitive\"];",
        "string health_insurance = 7 [(enlace.class) = \"sensitive\"];\n  string email = 8 [(enlace.class) = \"personal\"];",
    );
    assert_eq!(compatibility(&d, &added_field), []);
    let added_method = personas_with(
        "service Personas {",
        "service Personas {\n  rpc GetDocument(GetPersonRequest) returns (Document);",
    );
    assert_eq!(added_method.operations.len(), 5);
    assert_eq!(compatibility(&d, &added_method), []);
}

#[test]
fn compatibility_reports_removed_and_changed_fields() {
    let d = personas();
    let removed = personas_with(
        "string health_insurance = 7 [(enlace.class) = \"sensitive\"];",
        "",
    );
    let breaks = compatibility(&d, &removed);
    // `Person` answers two methods: the break is reported for each.
    assert_eq!(
        kinds(&breaks),
        ["removed-field", "removed-field"],
        "{breaks:?}"
    );
    assert_eq!(breaks[0].operation, "personas.v1.Personas/GetPerson");
    assert_eq!(breaks[1].operation, "personas.v1.Personas/LookupPersons");
    assert_eq!(breaks[0].item.as_deref(), Some("/health_insurance"));

    let retyped = personas_with("string civil_status = 5", "int32 civil_status = 5");
    let breaks = compatibility(&d, &retyped);
    assert!(kinds(&breaks).contains(&"type-changed"), "{breaks:?}");
    let b = breaks.iter().find(|b| b.kind == "type-changed").unwrap();
    assert_eq!(b.item.as_deref(), Some("/civil_status"));
    assert!(
        b.detail.contains("`string`") && b.detail.contains("`int32`"),
        "{}",
        b.detail
    );

    let relabelled = personas_with("string nationality = 6", "repeated string nationality = 6");
    let breaks = compatibility(&d, &relabelled);
    let b = breaks.iter().find(|b| b.kind == "type-changed").unwrap();
    assert!(
        b.detail.contains("singular") && b.detail.contains("repeated"),
        "{}",
        b.detail
    );

    let reclassed = personas_with(
        "string health_insurance = 7 [(enlace.class) = \"sensitive\"]",
        "string health_insurance = 7 [(enlace.class) = \"personal\"]",
    );
    let breaks = compatibility(&d, &reclassed);
    assert_eq!(
        kinds(&breaks),
        ["class-changed", "class-changed"],
        "{breaks:?}"
    );
}

#[test]
fn compatibility_reports_reused_field_numbers() {
    let d = personas();
    let reused = personas_with(
        "string name = 2 [(enlace.class) = \"personal\"];",
        "int32 age = 2 [(enlace.class) = \"personal\"];",
    );
    let breaks = compatibility(&d, &reused);
    let b = breaks
        .iter()
        .find(|b| b.kind == "reused-field-number")
        .expect("reported");
    assert_eq!(b.operation, "personas.v1.Personas/GetPerson");
    assert_eq!(b.item.as_deref(), Some("personas.v1.Person.age"));
    assert!(
        b.detail.contains("`name`") && b.detail.contains("`age`"),
        "{}",
        b.detail
    );
    assert!(kinds(&breaks).contains(&"removed-field"), "{breaks:?}");

    // Reuse in a request message is reported too.
    let request = personas_with(
        "message GetPersonRequest {\n  // The person's RUN, with check digit: \"12345678-5\". It names the data subject: the\n  // provider node requires it to be the person `enlace-subject` names.\n  string run = 1 [(enlace.subject) = \"CL-RUN\"];",
        "message GetPersonRequest {\n  string rut = 1 [(enlace.subject) = \"CL-RUN\"];",
    );
    let breaks = compatibility(&d, &request);
    let b = breaks
        .iter()
        .find(|b| b.kind == "reused-field-number")
        .expect("reported");
    assert_eq!(b.item.as_deref(), Some("personas.v1.GetPersonRequest.rut"));

    let moved = personas_with("string region = 3", "string region = 9");
    let breaks = compatibility(&d, &moved);
    assert_eq!(kinds(&breaks), ["renumbered-field"], "{breaks:?}");
}

#[test]
fn compatibility_reports_streaming_types_and_removed_methods() {
    let d = personas();
    let unary = personas_with("returns (stream Document)", "returns (Document)");
    let breaks = compatibility(&d, &unary);
    assert_eq!(kinds(&breaks), ["streaming-changed"], "{breaks:?}");
    assert_eq!(breaks[0].operation, "personas.v1.Personas/ListDocuments");
    assert!(
        breaks[0].detail.contains("server streaming"),
        "{}",
        breaks[0].detail
    );

    let retyped = personas_with(
        "rpc ListDocuments(ListDocumentsRequest)",
        "rpc ListDocuments(GetPersonRequest)",
    );
    let breaks = compatibility(&d, &retyped);
    assert!(
        breaks
            .iter()
            .any(|b| b.kind == "type-changed" && b.detail.contains("request message")),
        "{breaks:?}"
    );

    let removed = personas_with(
        "  // The person's identity documents, one message per document.\n  rpc ListDocuments(ListDocumentsRequest) returns (stream Document) {\n    option idempotency_level = NO_SIDE_EFFECTS;\n  }\n",
        "",
    );
    let breaks = compatibility(&d, &removed);
    assert_eq!(kinds(&breaks), ["removed-operation"], "{breaks:?}");
}

#[test]
fn compatibility_reports_new_required_request_fields() {
    let v1 = r#"syntax = "proto2";
        package svc.v1;
        import "enlace/options.proto";
        service Svc { rpc Get(Req) returns (Resp); }
        message Req { optional string id = 1; }
        message Resp { optional string v = 1 [(enlace.class) = "public"]; }"#;
    let old = compile_one(v1).unwrap();
    assert!(!old.operations[0].inputs[0].required);
    let added = compile_one(&v1.replace(
        "optional string id = 1;",
        "optional string id = 1; required string tenant = 2;",
    ))
    .unwrap();
    let breaks = compatibility(&old, &added);
    assert_eq!(kinds(&breaks), ["newly-required-input"], "{breaks:?}");
    assert_eq!(breaks[0].item.as_deref(), Some("/tenant"));
    let tightened = compile_one(&v1.replace("optional string id", "required string id")).unwrap();
    assert_eq!(
        kinds(&compatibility(&old, &tightened)),
        ["newly-required-input"]
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic_protobuf(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = from_descriptor_set(&bytes);
    }

    #[test]
    fn mutated_descriptor_sets_never_panic_protobuf(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)
    ) {
        let mut bytes = PERSONAS_DESCRIPTOR_SET.to_vec();
        for (at, value) in edits {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        if let Ok(d) = from_descriptor_set(&bytes) {
            let _ = compatibility(&personas(), &d);
        }
    }
}
