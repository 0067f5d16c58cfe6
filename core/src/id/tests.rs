//! Tests of the identifier grammar, the RUT rule and the display/parse round trip.

use super::*;
use proptest::prelude::*;

#[test]
fn demo_ruts_are_valid() {
    for rut in ["61002000-3", "60803000-K", "12345678-5"] {
        check_rut("member.code", rut).unwrap();
    }
}

#[test]
fn a_changed_check_digit_is_refused_naming_field_and_rule() {
    for (good, field) in [
        ("CL-DEV/GOV/61002000-3", "member.code"),
        ("CL-DEV/GOV/60803000-K", "member.code"),
    ] {
        let dv = good.chars().last().unwrap();
        for other in "0123456789K".chars().filter(|c| *c != dv) {
            let bad = format!("{}{}", &good[..good.len() - 1], other);
            let err = bad.parse::<MemberId>().unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.rule.contains("modulo-11"), "{err}");
        }
    }
    let err = "CL-RUN:12345678-6".parse::<SubjectId>().unwrap_err();
    assert_eq!(err.field, "subject.value");
    assert!(err.to_string().contains("modulo-11"), "{err}");
    assert!(err.to_string().contains("gives 5"), "{err}");
}

#[test]
fn lower_case_k_dots_and_leading_zeros_are_refused() {
    for bad in [
        "60803000-k",
        "61.002.000-3",
        "061002000-3",
        "61002000",
        "-3",
        "123456789-0",
    ] {
        assert!(check_rut("member.code", bad).is_err(), "{bad}");
    }
}

#[test]
fn demo_identifiers_parse() {
    let m: MemberId = "CL-DEV/GOV/61002000-3".parse().unwrap();
    assert_eq!(m.instance.as_str(), "CL-DEV");
    let s: SubsystemId = "CL-DEV/GOV/61002000-3/registro-civil".parse().unwrap();
    assert_eq!(s.member, m);
    let svc: ServiceId = "CL-DEV/GOV/61002000-3/registro-civil/personas"
        .parse()
        .unwrap();
    assert_eq!(svc.code(), "personas");
    let n: NodeId = "CL-DEV/GOV/61002000-3/node/a".parse().unwrap();
    assert_eq!(NodeId::from_uri(&n.uri()).unwrap(), n);
    let p: SubjectId = "CL-RUN:12345678-5".parse().unwrap();
    assert_eq!(p.value(), "12345678-5");
    let c: ConceptId = "person.address".parse().unwrap();
    assert_eq!(c.as_str(), "person.address");
    let v: ServiceVersion = "v1".parse().unwrap();
    assert_eq!(v, ServiceVersion::new(1, 0));
    assert_eq!(v.to_string(), "v1.0");
    let id = ContractId::generate();
    assert_eq!(id.as_str().parse::<ContractId>().unwrap(), id);
    let m2: MemberId = "CL-DEV/COM/acme.cl".parse().unwrap();
    assert_eq!(m2.code(), "acme.cl");
}

#[test]
fn bad_identifiers_name_their_field() {
    type Parse = fn(&str) -> Result<(), IdError>;
    let cases: &[(&str, Parse, &str)] = &[
        (
            "cl/GOV/61002000-3",
            |s| s.parse::<MemberId>().map(drop),
            "instance",
        ),
        (
            "CL/gov/61002000-3",
            |s| s.parse::<MemberId>().map(drop),
            "member.class",
        ),
        (
            "CL/GOV/61002000-3/Registro",
            |s| s.parse::<SubsystemId>().map(drop),
            "subsystem.code",
        ),
        (
            "CL/GOV/61002000-3/node",
            |s| s.parse::<SubsystemId>().map(drop),
            "subsystem.code",
        ),
        (
            "CL/GOV/61002000-3/x/node/a",
            |s| s.parse::<NodeId>().map(drop),
            "node",
        ),
        (
            "CL/GOV/61002000-3/node/A",
            |s| s.parse::<NodeId>().map(drop),
            "node.name",
        ),
        (
            "12345678-5",
            |s| s.parse::<SubjectId>().map(drop),
            "subject",
        ),
        ("person", |s| s.parse::<ConceptId>().map(drop), "concept"),
        (
            "v01",
            |s| s.parse::<ServiceVersion>().map(drop),
            "service.version",
        ),
        ("ctr_123", |s| s.parse::<ContractId>().map(drop), "contract"),
    ];
    for (text, parse, field) in cases {
        let err = parse(text).unwrap_err();
        assert_eq!(&err.field, field, "{text}: {err}");
    }
}

#[test]
fn serde_uses_the_canonical_text_and_validates() {
    let m: MemberId = serde_json::from_str("\"CL-DEV/GOV/61002000-3\"").unwrap();
    assert_eq!(
        serde_json::to_string(&m).unwrap(),
        "\"CL-DEV/GOV/61002000-3\""
    );
    assert!(serde_json::from_str::<MemberId>("\"CL-DEV/GOV/61002000-4\"").is_err());
}

fn rut_strategy() -> impl Strategy<Value = String> {
    (1u32..99_999_999).prop_map(|b| format!("{b}-{}", rut_check_digit(b)))
}

proptest! {
    #[test]
    fn every_computed_rut_is_valid_and_others_are_not(body in 1u32..99_999_999, dv in "[0-9K]") {
        let good = rut_check_digit(body);
        let text = format!("{body}-{dv}");
        prop_assert_eq!(check_rut("x", &text).is_ok(), dv.starts_with(good));
    }

    #[test]
    fn ids_round_trip(
        inst in "[A-Z][A-Z0-9-]{1,15}",
        rut in rut_strategy(),
        sub in "[a-z][a-z0-9-]{0,20}",
        svc in "[a-z][a-z0-9-]{0,20}",
        node in "[a-z0-9][a-z0-9-]{0,20}",
        major in 0u16..10000, minor in 0u16..10000,
        concept in "[a-z][a-z0-9_]{0,10}(\\.[a-z][a-z0-9_]{0,10}){1,3}",
    ) {
        prop_assume!(sub != "node");
        let m: MemberId = format!("{inst}/GOV/{rut}").parse().unwrap();
        prop_assert_eq!(m.to_string().parse::<MemberId>().unwrap(), m.clone());
        let s = SubsystemId::new(m.clone(), &sub).unwrap();
        prop_assert_eq!(s.to_string().parse::<SubsystemId>().unwrap(), s.clone());
        let v = ServiceId::new(s, &svc).unwrap();
        prop_assert_eq!(v.to_string().parse::<ServiceId>().unwrap(), v);
        let n = NodeId::new(m, &node).unwrap();
        prop_assert_eq!(n.to_string().parse::<NodeId>().unwrap(), n);
        let ver = ServiceVersion::new(major, minor);
        prop_assert_eq!(ver.to_string().parse::<ServiceVersion>().unwrap(), ver);
        let p: SubjectId = format!("CL-RUN:{rut}").parse().unwrap();
        prop_assert_eq!(p.to_string().parse::<SubjectId>().unwrap(), p);
        let c: ConceptId = concept.parse().unwrap();
        prop_assert_eq!(c.to_string().parse::<ConceptId>().unwrap(), c);
    }

    #[test]
    fn contract_ids_round_trip(n in any::<u128>()) {
        let id = ContractId::from_uuid(uuid::Uuid::from_u128(n));
        prop_assert_eq!(id.to_string().parse::<ContractId>().unwrap(), id);
    }

    #[test]
    fn random_text_never_panics(s in "\\PC{0,300}") {
        let _ = s.parse::<Instance>();
        let _ = s.parse::<MemberId>();
        let _ = s.parse::<SubsystemId>();
        let _ = s.parse::<ServiceId>();
        let _ = s.parse::<ServiceVersion>();
        let _ = s.parse::<NodeId>();
        let _ = s.parse::<SubjectId>();
        let _ = s.parse::<ConceptId>();
        let _ = s.parse::<ContractId>();
        let _ = NodeId::from_uri(&s);
    }

    #[test]
    fn slash_heavy_text_never_panics(s in "[A-Z0-9a-z/:.-]{0,80}") {
        let _ = s.parse::<MemberId>();
        let _ = s.parse::<NodeId>();
        let _ = s.parse::<ServiceId>();
        let _ = s.parse::<SubjectId>();
    }
}
