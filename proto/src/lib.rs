//! Enlace's .proto files (the `(enlace.class)` field option and the demo `personas.v1` service),
//! compiled at build time with protox, without a system `protoc`, and the tonic client and server
//! of `personas.v1` generated from them.
#![forbid(unsafe_code)]

/// The encoded FileDescriptorSet of `personas/v1/personas.proto` and everything it imports
/// (`enlace/options.proto`, `google/protobuf/descriptor.proto`), with extension options kept.
pub const PERSONAS_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/personas_descriptor_set.bin"));

/// The source of `enlace/options.proto`, which defines `(enlace.class)`.
pub const OPTIONS_PROTO: &str = include_str!("../proto/enlace/options.proto");

/// The source of `personas/v1/personas.proto`, the demo service.
pub const PERSONAS_PROTO: &str = include_str!("../proto/personas/v1/personas.proto");

/// The generated protobuf messages and tonic code.
pub mod personas {
    /// `personas.v1`: the messages, `personas_client::PersonasClient` and
    /// `personas_server::{Personas, PersonasServer}`.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/personas.v1.rs"));
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_holds_the_three_files() {
        let set = prost_types::FileDescriptorSet::decode(super::PERSONAS_DESCRIPTOR_SET)
            .expect("the built set decodes");
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        assert!(
            names.contains(&"google/protobuf/descriptor.proto"),
            "{names:?}"
        );
        assert!(names.contains(&"enlace/options.proto"), "{names:?}");
        assert!(names.contains(&"personas/v1/personas.proto"), "{names:?}");
        let personas = set
            .file
            .iter()
            .find(|f| f.name() == "personas/v1/personas.proto")
            .unwrap();
        assert_eq!(personas.service[0].name(), "Personas");
        assert_eq!(personas.service[0].method.len(), 4);
    }

    #[test]
    fn class_options_survive_encoding() {
        // FieldOptions field 51234, wire type 2: key 409874 = varint 92 82 19, then the length.
        let needle = b"\x92\x82\x19\x09sensitive";
        assert!(
            super::PERSONAS_DESCRIPTOR_SET
                .windows(needle.len())
                .any(|w| w == needle)
        );
    }
}
