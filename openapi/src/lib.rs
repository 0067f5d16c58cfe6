//! Service descriptions for Enlace: OpenAPI 3.0/3.1 documents and protobuf descriptor sets,
//! read into one model of operations and classified response fields, and compared across
//! versions for breaking changes. Uploaded documents never make Enlace fetch anything.
#![forbid(unsafe_code)]

pub mod grpc;
mod model;
pub mod openapi;
pub mod protobuf;
pub mod validate;

pub use model::{Break, Description, Field, Input, MAX_DESCRIPTION_BYTES, Operation, sha256_hex};

use enlace_core::config::DescriptionKind;
use enlace_core::problem::Problem;

impl Description {
    /// Reloads a description from the bytes the registry stored.
    pub fn load(kind: DescriptionKind, stored: &[u8]) -> Result<Description, Problem> {
        match kind {
            DescriptionKind::Openapi => openapi::parse(stored),
            DescriptionKind::Protobuf => protobuf::from_descriptor_set(stored),
        }
    }
}

/// The breaking changes from `old` to `new` (empty when `new` is compatible).
pub fn compatibility(old: &Description, new: &Description) -> Vec<Break> {
    match (old.kind, new.kind) {
        (DescriptionKind::Openapi, DescriptionKind::Openapi) => openapi::compatibility(old, new),
        (DescriptionKind::Protobuf, DescriptionKind::Protobuf) => protobuf::compatibility(old, new),
        _ => vec![Break {
            kind: "kind-changed".into(),
            operation: String::new(),
            item: None,
            detail: "a service version cannot switch between OpenAPI and protobuf".into(),
        }],
    }
}
