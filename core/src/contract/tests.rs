//! The contract state machine: every (state, action, party) combination; and the decision
//! whether a contract admits a call.

use super::*;
use time::macros::datetime;

fn contract(state: ContractState) -> Contract {
    Contract {
        id: "ctr_01JD0000000000000000000000".parse().unwrap(),
        terms: ContractTerms {
            consumer: "CL-DEV/GOV/60803000-K/renta".parse().unwrap(),
            provider: "CL-DEV/GOV/61002000-3/registro-civil/personas"
                .parse()
                .unwrap(),
            versions: VersionRange {
                min: "v1".parse().unwrap(),
                max: "v1.9999".parse().unwrap(),
            },
            operations: vec!["getPerson".into()],
            purpose: "tax-refund-eligibility".into(),
            legal_basis: "Ley 20.530".into(),
            allowed_fields: vec!["/name".into(), "/address".into()],
            subject_required: true,
            usage: Usage::Permanent,
            volume_limit: None,
            valid_from: datetime!(2026-01-01 0:00 UTC),
            valid_until: datetime!(2027-01-01 0:00 UTC),
            authorisation_required: false,
        },
        state,
        reason: None,
    }
}

fn consumer() -> Party {
    Party::MemberAdmin("CL-DEV/GOV/60803000-K".parse().unwrap())
}
fn provider() -> Party {
    Party::MemberAdmin("CL-DEV/GOV/61002000-3".parse().unwrap())
}
fn stranger() -> Party {
    Party::MemberAdmin("CL-DEV/GOV/12345678-5".parse().unwrap())
}

#[test]
fn the_whole_state_machine() {
    use ContractState::*;
    let approve = ContractAction::Approve;
    let refuse = ContractAction::Refuse {
        reason: "no legal basis".into(),
    };
    let withdraw = ContractAction::Withdraw;
    let revoke = ContractAction::Revoke {
        reason: "law repealed".into(),
    };
    let fed = Party::FederationAdmin;
    // (from, action, party, expected: Ok(state) or Err(slug))
    let cases: Vec<(
        ContractState,
        &ContractAction,
        Party,
        Result<ContractState, &str>,
    )> = vec![
        (Proposed, &approve, provider(), Ok(Approved)),
        (Proposed, &approve, consumer(), Err("wrong-party")),
        (Proposed, &approve, fed.clone(), Err("wrong-party")),
        (Proposed, &approve, stranger(), Err("wrong-party")),
        (Proposed, &refuse, provider(), Ok(Refused)),
        (Proposed, &refuse, consumer(), Err("wrong-party")),
        (Proposed, &withdraw, consumer(), Ok(Withdrawn)),
        (Proposed, &withdraw, provider(), Err("wrong-party")),
        (Proposed, &revoke, provider(), Err("invalid-transition")),
        (Approved, &approve, provider(), Err("invalid-transition")),
        (Approved, &refuse, provider(), Err("invalid-transition")),
        (Approved, &withdraw, consumer(), Err("invalid-transition")),
        (Approved, &revoke, consumer(), Ok(Revoked)),
        (Approved, &revoke, provider(), Ok(Revoked)),
        (Approved, &revoke, fed.clone(), Ok(Revoked)),
        (Approved, &revoke, stranger(), Err("wrong-party")),
        (Refused, &approve, provider(), Err("invalid-transition")),
        (Refused, &revoke, fed.clone(), Err("invalid-transition")),
        (Withdrawn, &approve, provider(), Err("invalid-transition")),
        (Revoked, &approve, provider(), Err("invalid-transition")),
        (Revoked, &revoke, fed.clone(), Err("invalid-transition")),
    ];
    for (from, action, party, expected) in cases {
        let got = contract(from).next_state(action, &party);
        match (got, expected) {
            (Ok(s), Ok(e)) => assert_eq!(s, e, "{from:?} {action:?} {party:?}"),
            (Err(p), Err(slug)) => assert_eq!(p.kind.slug(), slug, "{from:?} {action:?} {party:?}"),
            (got, e) => panic!("{from:?} {action:?} {party:?}: got {got:?}, expected {e:?}"),
        }
    }
}

#[test]
fn refusing_needs_a_reason() {
    let p = contract(ContractState::Proposed)
        .next_state(&ContractAction::Refuse { reason: " ".into() }, &provider())
        .unwrap_err();
    assert_eq!(p.kind, ProblemKind::InvalidRequest);
}

#[test]
fn shape_checks() {
    let mut c = contract(ContractState::Proposed);
    c.terms.check_shape().unwrap();
    c.terms.purpose = "Tax Refund".into();
    assert!(
        c.terms
            .check_shape()
            .unwrap_err()
            .detail
            .starts_with("purpose")
    );
    let mut c = contract(ContractState::Proposed);
    c.terms.valid_until = c.terms.valid_from;
    assert!(
        c.terms
            .check_shape()
            .unwrap_err()
            .detail
            .starts_with("valid_until")
    );
}

#[test]
fn active_only_when_approved_and_valid() {
    let now = datetime!(2026-11-22 12:00 UTC);
    assert!(contract(ContractState::Approved).is_active(now));
    assert!(!contract(ContractState::Proposed).is_active(now));
    assert!(!contract(ContractState::Approved).is_active(datetime!(2027-01-01 0:00 UTC)));
}

#[test]
fn json_refuses_unknown_terms() {
    let mut v = serde_json::to_value(contract(ContractState::Proposed).terms).unwrap();
    v["sneaky"] = serde_json::json!(true);
    assert!(serde_json::from_value::<ContractTerms>(v).is_err());
}

/// A contract action with a member it does not know is refused, as every other write body is:
/// a misspelt `reason` must not become an approval without one.
#[test]
fn contract_actions_refuse_unknown_members() {
    let ok: ContractAction = serde_json::from_str(r#"{"action":"approve"}"#).unwrap();
    assert_eq!(ok, ContractAction::Approve);
    let ok: ContractAction =
        serde_json::from_str(r#"{"action":"refuse","reason":"no legal basis"}"#).unwrap();
    assert!(matches!(ok, ContractAction::Refuse { .. }));
    for body in [
        r#"{"action":"approve","reason":"x"}"#,
        r#"{"action":"approve","until":"2030-01-01"}"#,
        r#"{"action":"refuse","reason":"x","reasons":"y"}"#,
        r#"{"action":"withdraw","force":true}"#,
        r#"{"action":"revoke","reason":"x","extra":1}"#,
    ] {
        assert!(
            serde_json::from_str::<ContractAction>(body).is_err(),
            "{body} accepted"
        );
    }
}

#[test]
fn a_contract_admits_only_its_client_service_versions_and_period() {
    let c = contract(ContractState::Approved);
    let client: SubsystemId = "CL-DEV/GOV/60803000-K/renta".parse().unwrap();
    let service: ServiceId = "CL-DEV/GOV/61002000-3/registro-civil/personas"
        .parse()
        .unwrap();
    let v1: ServiceVersion = "v1.2".parse().unwrap();
    let in_force = datetime!(2026-06-01 0:00 UTC);
    let kind = |r: Result<(), Problem>| r.err().map(|p| p.kind);
    assert_eq!(kind(c.admits(&client, &service, v1, in_force)), None);

    let other_client: SubsystemId = "CL-DEV/GOV/60803000-K/otro".parse().unwrap();
    let other_service: ServiceId = "CL-DEV/GOV/61002000-3/registro-civil/otro".parse().unwrap();
    let v2: ServiceVersion = "v2.0".parse().unwrap();
    let missing = Some(ProblemKind::ContractMissing);
    assert_eq!(
        kind(c.admits(&other_client, &service, v1, in_force)),
        missing
    );
    assert_eq!(
        kind(c.admits(&client, &other_service, v1, in_force)),
        missing
    );
    assert_eq!(kind(c.admits(&client, &service, v2, in_force)), missing);
    // Valid from its first instant, not at its last.
    assert_eq!(
        kind(c.admits(&client, &service, v1, datetime!(2025-12-31 23:59:59 UTC))),
        missing
    );
    assert_eq!(
        kind(c.admits(&client, &service, v1, datetime!(2026-01-01 0:00 UTC))),
        None
    );
    assert_eq!(
        kind(c.admits(&client, &service, v1, datetime!(2027-01-01 0:00 UTC))),
        Some(ProblemKind::ContractExpired)
    );

    let mut revoked = contract(ContractState::Revoked);
    revoked.reason = Some("fraude".into());
    let p = revoked.admits(&client, &service, v1, in_force).unwrap_err();
    assert_eq!(p.kind, ProblemKind::ContractRevoked);
    assert!(p.detail.ends_with("was revoked: fraude"), "{}", p.detail);
    for state in [
        ContractState::Proposed,
        ContractState::Refused,
        ContractState::Withdrawn,
    ] {
        assert_eq!(
            kind(contract(state).admits(&client, &service, v1, in_force)),
            missing,
            "{state:?}"
        );
    }

    assert!(c.allows_operation("getPerson").is_ok());
    assert_eq!(
        c.allows_operation("deletePerson").unwrap_err().kind,
        ProblemKind::ContractMissing
    );
}
