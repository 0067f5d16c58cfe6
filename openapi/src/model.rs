//! The format-neutral model of a service description: operations, their inputs, and every
//! response field with its class, as JSON-pointer-like paths.

use enlace_core::config::DescriptionKind;
use enlace_core::contract::FieldClass;
use enlace_core::problem::{Problem, ProblemKind};
use serde::{Deserialize, Serialize};

/// Largest description accepted, in bytes (OpenAPI document, FileDescriptorSet, or all .proto
/// sources together).
pub const MAX_DESCRIPTION_BYTES: usize = 4 * 1024 * 1024;

/// A parsed, validated service description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    pub kind: DescriptionKind,
    /// SHA-256 (hex) of `stored`.
    pub digest: String,
    pub operations: Vec<Operation>,
    /// Canonical bytes kept by the registry and reloaded with [`Description::load`]:
    /// the OpenAPI document as JSON, or the encoded FileDescriptorSet.
    #[serde(skip)]
    pub stored: Vec<u8>,
}

/// One operation: an OpenAPI operation or a gRPC method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// OpenAPI `operationId`, or `package.Service/Method`.
    pub id: String,
    /// HTTP method in upper case, or `POST` for gRPC.
    pub method: String,
    /// OpenAPI path template (`/persons/{run}`), or `/package.Service/Method`.
    pub path: String,
    /// For gRPC: whether the client and the server stream.
    #[serde(default)]
    pub client_streaming: bool,
    #[serde(default)]
    pub server_streaming: bool,
    pub inputs: Vec<Input>,
    /// Every field of the success response, objects and leaves, in document order.
    pub fields: Vec<Field>,
}

/// An input of an operation: a parameter, a request-body property, or a request message field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// `path`, `query`, `header`, `cookie`, `body`, or `message`.
    pub location: String,
    /// Parameter name, or pointer into the body/message (`/address/street`).
    pub name: String,
    pub required: bool,
    /// JSON type or protobuf type name.
    pub ty: String,
    /// The data-subject scheme this input carries (`x-enlace-subject: CL-RUN` on an OpenAPI
    /// parameter, `(enlace.subject) = "CL-RUN"` on a request message field): the provider node
    /// requires `Enlace-Subject` to name the same person, so a request cannot ask about one
    /// person while the access log names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The `pattern`s the value must match (sorted; `items: ` prefixed for those of array
    /// elements). OpenAPI only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
}

/// A response field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// `/name`, `/address/street`, `/documents/*/number` (`*` stands for every array element).
    pub pointer: String,
    pub class: FieldClass,
    /// JSON type (`string`, `object`, `array`, …) or protobuf type (`string`, `int32`,
    /// `message personas.v1.Address`, …); `repeated ` is prefixed for repeated protobuf fields.
    pub ty: String,
    /// The `pattern`s the value matches, as for [`Input::patterns`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
}

/// One incompatibility between two versions of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Break {
    /// `removed-operation`, `removed-field`, `type-changed`, `class-changed`,
    /// `newly-required-input`, `reused-field-number`, `streaming-changed`, `removed-input`,
    /// `subject-binding-changed`, `pattern-changed`.
    pub kind: String,
    pub operation: String,
    /// The field or input concerned, if any.
    pub item: Option<String>,
    pub detail: String,
}

impl Description {
    pub fn operation(&self, id: &str) -> Option<&Operation> {
        self.operations.iter().find(|o| o.id == id)
    }

    /// Checks that every operation exists and every allowed field is a field (or an object
    /// holding fields) of at least one of them.
    pub fn check_contract_fields(
        &self,
        operations: &[String],
        allowed_fields: &[String],
    ) -> Result<(), Problem> {
        let mut ops = Vec::new();
        for id in operations {
            match self.operation(id) {
                Some(op) => ops.push(op),
                None => {
                    return Err(Problem::new(
                        ProblemKind::UnknownOperation,
                        format!("operation `{id}` is not in the service description"),
                    )
                    .with("operation", id)
                    .with(
                        "known",
                        self.operations
                            .iter()
                            .map(|o| o.id.as_str())
                            .collect::<Vec<_>>(),
                    ));
                }
            }
        }
        let unknown: Vec<&String> = allowed_fields
            .iter()
            .filter(|f| {
                !ops.iter()
                    .any(|op| op.fields.iter().any(|x| &x.pointer == *f))
            })
            .collect();
        if !unknown.is_empty() {
            return Err(Problem::new(
                ProblemKind::UnknownField,
                format!(
                    "fields not returned by the contract's operations: {}",
                    unknown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .with("fields", &unknown));
        }
        Ok(())
    }

    /// The classes of everything an allowed pointer discloses: the field and all below it.
    pub fn classes_disclosed(
        &self,
        operations: &[String],
        allowed_fields: &[String],
    ) -> Vec<(String, FieldClass)> {
        let mut out = Vec::new();
        for op in self
            .operations
            .iter()
            .filter(|o| operations.contains(&o.id))
        {
            for f in &op.fields {
                let covered = allowed_fields
                    .iter()
                    .any(|a| f.pointer == *a || f.pointer.starts_with(&format!("{a}/")));
                if covered && !out.iter().any(|(p, _)| p == &f.pointer) {
                    out.push((f.pointer.clone(), f.class));
                }
            }
        }
        out
    }
}

/// Whether `scheme` is a data-subject scheme, the part of a subject identifier before its `:`
/// (`CL-RUN`): `[A-Z][A-Z0-9-]{1,15}`.
pub fn is_subject_scheme(scheme: &str) -> bool {
    let b = scheme.as_bytes();
    (2..=16).contains(&b.len())
        && b[0].is_ascii_uppercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'-')
}

/// SHA-256 hex of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
