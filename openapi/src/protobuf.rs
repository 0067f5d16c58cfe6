//! Protobuf service descriptions: FileDescriptorSets and .proto sources compiled in memory
//! with protox, read into the model of operations and classified fields, and compared.
//!
//! Rules, in one place:
//! - One operation per method of every service, except services in the `google.*`, `grpc.*`
//!   and `enlace` packages (health checks, reflection, Enlace's own options).
//! - A response field's class is its `(enlace.class)` option; a field without one takes the
//!   class of the nearest enclosing message-typed field that has one. A message-typed field
//!   with neither takes the strictest class found below it (public < statistical < personal <
//!   sensitive < reserved < secret). A leaf left without a class is refused
//!   (`UnclassifiedField`, every such pointer in `fields`).
//! - Message-typed fields are expanded into their own fields, except maps and Google's
//!   well-known types (`google.protobuf.*`), which are leaves.
//! - Recursion: a response message that contains itself, directly or through other messages,
//!   is refused, because its fields and their classes could not be listed. A recursive request
//!   message is accepted: the field that closes the cycle is listed, not expanded again.
//! - Nesting deeper than [`MAX_DEPTH`] or more than [`MAX_FIELDS`] fields or inputs in one
//!   operation are refused, so a small descriptor cannot expand into an enormous list.
//! - The data subject: `(enlace.subject) = "CL-RUN"` on a field of a method's request message
//!   binds that field to the person `enlace-subject` names (the input's `subject`); the
//!   provider node then requires every request message of a call to name that person. Only on
//!   a singular `string` field directly in a request message, at most one per message, with a
//!   scheme matching `[A-Z][A-Z0-9-]{1,15}`; anywhere else (a nested or response message, a
//!   repeated or non-string field) it is refused. Adding, removing or moving a binding is a
//!   breaking change (`subject-binding-changed`).

use std::collections::{HashMap, HashSet};

use enlace_core::config::DescriptionKind;
use enlace_core::contract::FieldClass;
use enlace_core::problem::{Problem, ProblemKind};
use prost_reflect::{
    Cardinality, DescriptorPool, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    Value,
};

use crate::model::{
    Break, Description, Field, Input, MAX_DESCRIPTION_BYTES, Operation, is_subject_scheme,
    sha256_hex,
};

mod compat;
#[cfg(test)]
mod tests;
mod walk;

pub use compat::*;
use walk::*;

/// The import path of Enlace's options file.
pub const OPTIONS_FILE: &str = "enlace/options.proto";

/// The source of `enlace/options.proto`, served to uploaded sources that import it. A copy of
/// `enlace_proto::OPTIONS_PROTO` (a test keeps them equal), so this crate reads no file at run
/// time and does not depend on `enlace-proto`.
pub const OPTIONS_PROTO: &str = include_str!("protobuf/enlace_options.proto");

/// Full name of the field option that classifies response fields.
pub const CLASS_EXTENSION: &str = "enlace.class";
const CLASS_EXTENSION_NUMBER: u32 = 51234;
/// Full name of the field option that binds a request field to the data subject.
pub const SUBJECT_EXTENSION: &str = "enlace.subject";
const SUBJECT_EXTENSION_NUMBER: u32 = 51235;

/// Earlier versions of `enlace/options.proto`, still accepted unchanged in an upload (the
/// current one is served to its imports all the same): a service's sources need not change
/// when Enlace adds an option.
const PREVIOUS_OPTIONS_PROTO: &[&str] = &[
    "// Options Enlace reads from the .proto files of the services it relays.
syntax = \"proto3\";

package enlace;

import \"google/protobuf/descriptor.proto\";

extend google.protobuf.FieldOptions {
  // The class of a response field: \"public\", \"personal\", \"sensitive\", \"statistical\",
  // \"reserved\" or \"secret\". A message-typed field's class applies to the fields inside it
  // that carry no class of their own.
  string class = 51234;
}
",
];

/// Most .proto files accepted in one upload.
pub const MAX_SOURCE_FILES: usize = 100;
/// Deepest nesting of message fields accepted in a response (and expanded in a request).
pub const MAX_DEPTH: usize = 32;
/// Most response fields, or request inputs, one operation may have.
pub const MAX_FIELDS: usize = 10_000;

/// Reads an encoded FileDescriptorSet. The set must be self-contained (every imported file
/// included, as `protoc --include_imports` writes it). `stored` is the set as re-encoded by
/// the descriptor pool: extension options such as `(enlace.class)` are kept, unknown fields
/// dropped, and reading `stored` again gives the same bytes.
pub fn from_descriptor_set(bytes: &[u8]) -> Result<Description, Problem> {
    if bytes.len() > MAX_DESCRIPTION_BYTES {
        return Err(too_large(bytes.len()));
    }
    let pool = decode_pool(bytes).map_err(|err| {
        invalid(format!(
            "not a valid, self-contained FileDescriptorSet: {err}"
        ))
    })?;
    let stored = pool.encode_to_vec();
    describe(&pool, stored)
}

/// Decodes a descriptor set. prost-reflect can panic while describing an error in some
/// malformed sets (an index out of bounds found by the property tests); an uploaded set is
/// untrusted, so such a panic is caught and reported as an invalid set.
pub(crate) fn decode_pool(bytes: &[u8]) -> Result<DescriptorPool, String> {
    match std::panic::catch_unwind(|| DescriptorPool::decode(bytes)) {
        Ok(Ok(pool)) => Ok(pool),
        Ok(Err(err)) => Err(format!("{err:?}")),
        Err(_) => Err("the descriptor set is malformed (the decoder gave up)".into()),
    }
}

/// Compiles uploaded .proto sources (`(file name, source)`) in memory with protox and reads
/// the result as [`from_descriptor_set`] does. Imports resolve only to the uploaded files,
/// `enlace/options.proto` and Google's well-known types; nothing is read from disk.
pub fn compile_sources(files: &[(String, String)]) -> Result<Description, Problem> {
    if files.is_empty() {
        return Err(invalid("no .proto file was uploaded"));
    }
    if files.len() > MAX_SOURCE_FILES {
        return Err(Problem::new(
            ProblemKind::BodyTooLarge,
            format!(
                "{} .proto files uploaded; at most {MAX_SOURCE_FILES} are accepted",
                files.len()
            ),
        )
        .with("limit", MAX_SOURCE_FILES));
    }
    let total: usize = files.iter().map(|(n, s)| n.len() + s.len()).sum();
    if total > MAX_DESCRIPTION_BYTES {
        return Err(too_large(total));
    }

    let mut uploaded = HashMap::new();
    for (name, source) in files {
        check_file_name(name)?;
        if name.starts_with("google/protobuf/") {
            return Err(invalid(format!(
                "`{name}`: Google's well-known types are provided by Enlace and cannot be uploaded"
            ))
            .with("file", name));
        }
        if name == OPTIONS_FILE {
            if source != OPTIONS_PROTO && !PREVIOUS_OPTIONS_PROTO.contains(&source.as_str()) {
                return Err(invalid(format!(
                    "`{OPTIONS_FILE}` is provided by Enlace; upload it unchanged or leave it out"
                ))
                .with("file", name));
            }
            continue;
        }
        if uploaded.insert(name.clone(), source.clone()).is_some() {
            return Err(invalid(format!("`{name}` was uploaded twice")).with("file", name));
        }
    }

    let mut compiler = protox::Compiler::with_file_resolver(UploadResolver {
        files: uploaded,
        google: protox::file::GoogleFileResolver::new(),
    });
    compiler.include_imports(true).include_source_info(false);
    for (name, _) in files {
        if let Err(err) = compiler.open_file(name) {
            let mut detail = match err.file() {
                Some(file) => format!("{file}: {err}"),
                None => err.to_string(),
            };
            // protox-parse 0.10 reports an absolute or `..` import as "invalid group name".
            if let Some(import) = files
                .iter()
                .filter(|(n, _)| Some(n.as_str()) == err.file())
                .find_map(|(_, source)| bad_import(source))
            {
                let file = err.file().unwrap_or_default();
                detail = format!(
                    "{file}: import \"{import}\" refused; imports must be relative paths \
                     without `..`"
                );
            }
            let mut problem = invalid(format!("the .proto sources do not compile: {detail}"));
            if let Some(file) = err.file() {
                problem = problem.with("file", file);
            }
            return Err(problem);
        }
    }
    // Not `file_descriptor_set()`: prost-types would drop the `(enlace.class)` options.
    from_descriptor_set(&compiler.encode_file_descriptor_set())
}

/// Serves imports from the upload, Enlace's options file and Google's well-known types only.
struct UploadResolver {
    files: HashMap<String, String>,
    google: protox::file::GoogleFileResolver,
}

impl protox::file::FileResolver for UploadResolver {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if name == OPTIONS_FILE {
            return protox::file::File::from_source(name, OPTIONS_PROTO);
        }
        if let Some(source) = self.files.get(name) {
            return protox::file::File::from_source(name, source);
        }
        // Knows a fixed list of names and answers from memory; anything else is not found.
        protox::file::FileResolver::open_file(&self.google, name)
    }
}

/// An uploaded file's name: relative, `/`-separated, no `.` or `..` parts, ending `.proto`.
fn check_file_name(name: &str) -> Result<(), Problem> {
    let refuse =
        |why: &str| Err(invalid(format!("file name `{name}` refused: {why}")).with("file", name));
    if name.len() > 512 {
        return refuse("longer than 512 bytes");
    }
    if !name.ends_with(".proto") {
        return refuse("it must end with `.proto`");
    }
    if name.starts_with('/') || name.contains('\\') || name.contains(':') {
        return refuse("it must be a relative path with `/` separators");
    }
    if name.chars().any(char::is_control) {
        return refuse("it contains control characters");
    }
    if name
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return refuse("empty, `.` and `..` path segments are not allowed");
    }
    Ok(())
}

/// The first `import "…";` whose path is absolute or climbs with `..`, to explain a parse
/// error. Only used once protox has refused the file, so a rough reading is enough.
fn bad_import(source: &str) -> Option<String> {
    let code: String = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';').find_map(|statement| {
        let rest = statement.trim_start().strip_prefix("import")?;
        let path = rest.split('"').nth(1)?;
        let bad = path.starts_with('/') || path.split('/').any(|part| part == "..");
        bad.then(|| path.to_string())
    })
}

/// Builds the model from a decoded pool.
fn describe(pool: &DescriptorPool, stored: Vec<u8>) -> Result<Description, Problem> {
    let class_ext = class_extension(pool)?;
    let subject_ext = subject_extension(pool)?;
    let mut requests = HashSet::new();
    let mut operations = Vec::new();
    let mut unclassified: Vec<String> = Vec::new();
    let mut unclassified_ops: Vec<String> = Vec::new();
    for service in pool.services() {
        if is_infrastructure_package(service.package_name()) {
            continue;
        }
        for method in service.methods() {
            let id = format!("{}/{}", service.full_name(), method.name());

            let input = method.input();
            let mut inputs = Vec::new();
            let mut stack = vec![input.full_name().to_string()];
            walk_request(&id, &input, "", &mut stack, &mut inputs)?;
            if let Some((field, scheme)) = subject_binding(&input, subject_ext.as_ref())? {
                let pointer = format!("/{}", field.name());
                if let Some(bound) = inputs.iter_mut().find(|i| i.name == pointer) {
                    bound.subject = Some(scheme);
                }
            }
            requests.insert(input.full_name().to_string());

            let output = method.output();
            let mut walk = ResponseWalk {
                operation: &id,
                class_ext: class_ext.as_ref(),
                fields: Vec::new(),
                unclassified: Vec::new(),
            };
            let mut stack = vec![output.full_name().to_string()];
            walk.message(&output, "", None, &mut stack)?;
            let ResponseWalk {
                fields,
                unclassified: missing,
                ..
            } = walk;
            if !missing.is_empty() {
                unclassified_ops.push(id.clone());
                for pointer in missing {
                    if !unclassified.contains(&pointer) {
                        unclassified.push(pointer);
                    }
                }
            }

            operations.push(Operation {
                path: format!("/{id}"),
                id,
                method: "POST".into(),
                client_streaming: method.is_client_streaming(),
                server_streaming: method.is_server_streaming(),
                inputs,
                fields,
            });
        }
    }
    if let Some(ext) = &subject_ext {
        refuse_misplaced_subjects(pool, ext, &requests)?;
    }
    if operations.is_empty() {
        return Err(invalid(
            "the descriptor set defines no service method (services in the google.*, grpc.* \
             and enlace packages are not counted)",
        ));
    }
    if !unclassified.is_empty() {
        return Err(Problem::new(
            ProblemKind::UnclassifiedField,
            format!(
                "response fields without an (enlace.class) option: {}; import \
                 \"{OPTIONS_FILE}\" and annotate each field, e.g. \
                 `string name = 2 [(enlace.class) = \"personal\"];`",
                unclassified.join(", ")
            ),
        )
        .with("fields", &unclassified)
        .with("operations", &unclassified_ops));
    }
    let digest = sha256_hex(&stored);
    Ok(Description {
        kind: DescriptionKind::Protobuf,
        digest,
        operations,
        stored,
    })
}

/// Services in these packages are infrastructure, never federation services.
fn is_infrastructure_package(package: &str) -> bool {
    let under = |root: &str| {
        package == root
            || package
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    under("google") || under("grpc") || package == "enlace"
}

/// The `(enlace.class)` extension, if the set defines it; refused if defined differently.
fn class_extension(pool: &DescriptorPool) -> Result<Option<ExtensionDescriptor>, Problem> {
    string_option(pool, CLASS_EXTENSION, "class", CLASS_EXTENSION_NUMBER)
}

/// The `(enlace.subject)` extension, if the set defines it; refused if defined differently.
pub(crate) fn subject_extension(
    pool: &DescriptorPool,
) -> Result<Option<ExtensionDescriptor>, Problem> {
    string_option(pool, SUBJECT_EXTENSION, "subject", SUBJECT_EXTENSION_NUMBER)
}

/// A singular string field option of Enlace's, as `enlace/options.proto` defines it.
fn string_option(
    pool: &DescriptorPool,
    full_name: &str,
    name: &str,
    number: u32,
) -> Result<Option<ExtensionDescriptor>, Problem> {
    let Some(ext) = pool.get_extension_by_name(full_name) else {
        return Ok(None);
    };
    let well_formed = ext.containing_message().full_name() == "google.protobuf.FieldOptions"
        && ext.number() == number
        && matches!(ext.kind(), Kind::String)
        && ext.cardinality() != Cardinality::Repeated;
    if !well_formed {
        return Err(invalid(format!(
            "`{full_name}` must be `extend google.protobuf.FieldOptions {{ string {name} = \
             {number}; }}`, as in {OPTIONS_FILE}"
        )));
    }
    Ok(Some(ext))
}

/// The field of a request message that names the data subject (`(enlace.subject)`), with its
/// scheme: a singular `string` field directly in the message, at most one. Anything else is
/// refused, naming the field and the rule.
pub(crate) fn subject_binding(
    message: &MessageDescriptor,
    ext: Option<&ExtensionDescriptor>,
) -> Result<Option<(FieldDescriptor, String)>, Problem> {
    let Some(ext) = ext else {
        return Ok(None);
    };
    let mut bound = Vec::new();
    for field in message.fields() {
        let options = field.options();
        if !options.has_extension(ext) {
            continue;
        }
        let at = format!("{}.{}", message.full_name(), field.name());
        let value = options.get_extension(ext);
        let Value::String(scheme) = value.as_ref() else {
            return Err(invalid(format!("`{at}`: (enlace.subject) is not a string")));
        };
        if !is_subject_scheme(scheme) {
            return Err(invalid(format!(
                "`{at}`: (enlace.subject) = \"{scheme}\" is not a subject scheme; it must match \
                 [A-Z][A-Z0-9-]{{1,15}}, e.g. \"CL-RUN\""
            ))
            .with("field", &at)
            .with("scheme", scheme.as_str()));
        }
        if !matches!(field.kind(), Kind::String) || field.is_list() || field.is_map() {
            return Err(invalid(format!(
                "`{at}` is `{}`; (enlace.subject) names the person by their identifier, so it \
                 goes on a singular string field",
                type_name(&field)
            ))
            .with("field", &at));
        }
        bound.push((field, scheme.clone()));
    }
    if bound.len() > 1 {
        let names: Vec<&str> = bound.iter().map(|(f, _)| f.name()).collect();
        return Err(invalid(format!(
            "`{}` binds the data subject to {} fields ({}); at most one field of a request \
             message may carry (enlace.subject)",
            message.full_name(),
            bound.len(),
            names.join(", ")
        ))
        .with("message", message.full_name()));
    }
    Ok(bound.pop())
}

/// `(enlace.subject)` on a field of a message a method uses other than as its request message
/// (nested in a request, or anywhere in a response) would bind nothing: refused, so that
/// nobody believes it does. A message no method uses binds nothing either, and harms nothing.
fn refuse_misplaced_subjects(
    pool: &DescriptorPool,
    ext: &ExtensionDescriptor,
    requests: &HashSet<String>,
) -> Result<(), Problem> {
    let mut queue = Vec::new();
    for service in pool.services() {
        if is_infrastructure_package(service.package_name()) {
            continue;
        }
        for method in service.methods() {
            queue.extend(method.input().fields().filter_map(|f| message_kind(&f)));
            queue.push(method.output());
        }
    }
    let mut seen = HashSet::new();
    while let Some(message) = queue.pop() {
        if !seen.insert(message.full_name().to_string()) {
            continue;
        }
        if !requests.contains(message.full_name())
            && let Some(field) = message.fields().find(|f| f.options().has_extension(ext))
        {
            let at = format!("{}.{}", message.full_name(), field.name());
            return Err(invalid(format!(
                "`{at}` carries (enlace.subject), but `{}` is not the request message of the \
                 methods that use it; only a field directly in a request message names the \
                 data subject",
                message.full_name()
            ))
            .with("field", at));
        }
        queue.extend(message.fields().filter_map(|f| message_kind(&f)));
    }
    Ok(())
}

/// The message type of a field (map entries included), if it has one.
fn message_kind(field: &FieldDescriptor) -> Option<MessageDescriptor> {
    match field.kind() {
        Kind::Message(m) => Some(m),
        _ => None,
    }
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::InvalidServiceDescription, detail)
}

fn too_large(size: usize) -> Problem {
    Problem::new(
        ProblemKind::BodyTooLarge,
        format!("the description is {size} bytes; at most {MAX_DESCRIPTION_BYTES} are accepted"),
    )
    .with("limit", MAX_DESCRIPTION_BYTES)
}
