//! The once-only check: reads an agency's form (a JSON Schema) and lists the fields the state
//! already holds, with the authoritative source and the contract that would provide each.

use enlace_core::contract::Contract;
use enlace_core::id::{ConceptId, SubsystemId};
use enlace_core::problem::{Problem, ProblemKind};
use serde::Serialize;
use serde_json::Value;

use crate::federation::{Actor, Registry};
use crate::model::ConceptRecord;

const MAX_DEPTH: usize = 32;
const MAX_FIELDS: usize = 2000;

#[derive(Debug, Serialize)]
pub struct Report {
    /// Fields the state already holds: do not ask the person for them.
    pub held: Vec<Held>,
    /// Fields no registered source holds.
    pub not_held: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Held {
    pub field: String,
    pub concept: ConceptId,
    /// `declared` (x-enlace-concept) or `name` (the field's name matches the concept or an alias).
    pub matched_by: &'static str,
    pub service: String,
    pub operation: String,
    pub source_field: String,
    /// An active contract of the consumer that already allows this field, if any.
    pub contract: Option<String>,
}

/// Lists which of a form's fields the state holds. A field matches a concept by its
/// `x-enlace-concept`, or by its name (the concept's last word or an alias); a matched object is
/// reported whole, an unmatched one is searched inside.
pub fn check(
    reg: &Registry,
    form: &Value,
    consumer: Option<&SubsystemId>,
) -> Result<Report, Problem> {
    let concepts = reg.concepts()?;
    let mut fields = Vec::new();
    let find = |name: &str, declared: Option<&ConceptId>| -> Option<(usize, &'static str)> {
        match declared {
            Some(c) => concepts
                .iter()
                .position(|k| &k.id == c)
                .map(|i| (i, "declared")),
            None => concepts
                .iter()
                .position(|k| name_matches(name, k))
                .map(|i| (i, "name")),
        }
    };
    walk(form, form, "", 0, &find, &mut fields)?;
    let contracts: Vec<Contract> = match consumer {
        Some(c) => reg
            .contracts(&Actor::FederationAdmin)?
            .into_iter()
            .filter(|k| &k.terms.consumer == c && k.is_active(time::OffsetDateTime::now_utc()))
            .collect(),
        None => Vec::new(),
    };
    let mut report = Report {
        held: Vec::new(),
        not_held: Vec::new(),
    };
    for (pointer, found) in fields {
        let Some((i, matched_by)) = found else {
            report.not_held.push(pointer);
            continue;
        };
        let concept = &concepts[i];
        let contract = contracts
            .iter()
            .find(|k| {
                k.terms.provider == concept.service
                    && k.terms.operations.contains(&concept.operation)
                    && k.terms
                        .allowed_fields
                        .iter()
                        .any(|a| *a == concept.field || concept.field.starts_with(&format!("{a}/")))
            })
            .map(|k| k.id.to_string());
        report.held.push(Held {
            field: pointer,
            concept: concept.id.clone(),
            matched_by,
            service: concept.service.to_string(),
            operation: concept.operation.clone(),
            source_field: concept.field.clone(),
            contract,
        });
    }
    Ok(report)
}

fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

fn name_matches(name: &str, concept: &ConceptRecord) -> bool {
    let n = normalise(name);
    let last = concept.id.as_str().rsplit('.').next().unwrap_or("");
    n == normalise(last) || concept.aliases.iter().any(|a| normalise(a) == n)
}

fn invalid(detail: String) -> Problem {
    Problem::new(ProblemKind::InvalidRequest, detail)
}

/// Most `$ref` hops from one schema to the schema it finally names.
const MAX_REF_HOPS: usize = 32;

/// Resolves a local `$ref` (`#/$defs/x`, `#/definitions/x`), following a chain of them to the
/// schema it names; anything else is refused, and so is a chain that loops (`{"$ref": "#"}`,
/// or `a` → `b` → `a`), which names no schema at all.
fn resolve<'a>(root: &'a Value, schema: &'a Value, at: &str) -> Result<&'a Value, Problem> {
    let mut cur = schema;
    let mut seen: Vec<&str> = Vec::new();
    while let Some(r) = cur.get("$ref") {
        let r = r.as_str().unwrap_or("");
        let Some(ptr) = r.strip_prefix('#') else {
            return Err(Problem::new(
                ProblemKind::RemoteReference,
                format!("{at}: `$ref` {r} is not local to the form; nothing is fetched"),
            )
            .with("at", at));
        };
        if seen.contains(&ptr) || seen.len() >= MAX_REF_HOPS {
            return Err(invalid(format!(
                "{at}: its `$ref`s loop ({}) without reaching a schema",
                seen.join(" → ")
            )));
        }
        seen.push(ptr);
        cur = root
            .pointer(ptr)
            .ok_or_else(|| invalid(format!("{at}: `$ref` {r} points at nothing in the form")))?;
    }
    Ok(cur)
}

type Matcher<'a> = dyn Fn(&str, Option<&ConceptId>) -> Option<(usize, &'static str)> + 'a;

/// Collects (pointer, matched concept) for every leaf or matched property, depth first.
fn walk(
    root: &Value,
    schema: &Value,
    at: &str,
    depth: usize,
    find: &Matcher<'_>,
    out: &mut Vec<(String, Option<(usize, &'static str)>)>,
) -> Result<(), Problem> {
    if depth > MAX_DEPTH {
        return Err(invalid(format!(
            "{at}: the form nests deeper than {MAX_DEPTH} levels (or its $refs loop)"
        )));
    }
    let schema = resolve(root, schema, at)?;
    if let Some(items) = schema.get("items") {
        walk(root, items, &format!("{at}/*"), depth + 1, find, out)?;
    }
    let Some(props) = schema.get("properties") else {
        return Ok(());
    };
    let Some(props) = props.as_object() else {
        return Err(invalid(format!("{at}/properties: must be an object")));
    };
    for (name, sub) in props {
        let pointer = format!("{at}/{name}");
        let sub_resolved = resolve(root, sub, &pointer)?;
        let declared = match sub
            .get("x-enlace-concept")
            .or_else(|| sub_resolved.get("x-enlace-concept"))
        {
            Some(Value::String(s)) => Some(s.parse::<ConceptId>().map_err(Problem::from)?),
            Some(_) => {
                return Err(invalid(format!(
                    "{pointer}: x-enlace-concept must be a string"
                )));
            }
            None => None,
        };
        let found = find(name, declared.as_ref());
        let is_container =
            sub_resolved.get("properties").is_some() || sub_resolved.get("items").is_some();
        if found.is_some() || !is_container {
            out.push((pointer, found));
            if out.len() > MAX_FIELDS {
                return Err(invalid(format!(
                    "the form has more than {MAX_FIELDS} fields"
                )));
            }
        } else {
            walk(root, sub, &pointer, depth + 1, find, out)?;
        }
    }
    Ok(())
}
