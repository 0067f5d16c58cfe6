//! The schema walk of a protobuf description: a request message's inputs, and each response field
//! with its class and type.

use super::*;

/// Walks a response message, listing every field with its class.
pub(super) struct ResponseWalk<'a> {
    pub(super) operation: &'a str,
    pub(super) class_ext: Option<&'a ExtensionDescriptor>,
    pub(super) fields: Vec<Field>,
    /// Pointers of leaves without a class (their `Field` holds a placeholder class).
    pub(super) unclassified: Vec<String>,
}

impl ResponseWalk<'_> {
    pub(super) fn message(
        &mut self,
        message: &MessageDescriptor,
        prefix: &str,
        inherited: Option<FieldClass>,
        stack: &mut Vec<String>,
    ) -> Result<(), Problem> {
        for field in message.fields() {
            let pointer = format!("{prefix}/{}", field.name());
            let own = self.own_class(&field, &pointer)?;
            let class = own.or(inherited);
            if self.fields.len() >= MAX_FIELDS {
                return Err(invalid(format!(
                    "operation `{}` returns more than {MAX_FIELDS} fields",
                    self.operation
                ))
                .with("operation", self.operation));
            }
            let index = self.fields.len();
            self.fields.push(Field {
                pointer: pointer.clone(),
                class: class.unwrap_or(FieldClass::Public),
                ty: type_name(&field),
                patterns: Vec::new(),
            });

            let Some(child) = expandable(&field) else {
                if class.is_none() {
                    self.unclassified.push(pointer);
                }
                continue;
            };
            if let Some(start) = stack.iter().position(|m| m == child.full_name()) {
                let cycle = stack[start..].join(" → ");
                return Err(invalid(format!(
                    "operation `{}`: response message `{}` contains itself ({cycle} → {}, at \
                     `{pointer}`); recursive response messages are refused because their \
                     fields and classes cannot be listed",
                    self.operation,
                    child.full_name(),
                    child.full_name()
                ))
                .with("operation", self.operation)
                .with("field", &pointer));
            }
            if stack.len() >= MAX_DEPTH {
                return Err(invalid(format!(
                    "operation `{}`: response field `{pointer}` is nested more than {MAX_DEPTH} \
                     messages deep",
                    self.operation
                ))
                .with("operation", self.operation)
                .with("field", &pointer));
            }
            let child_prefix = if field.is_list() {
                format!("{pointer}/*")
            } else {
                pointer.clone()
            };
            stack.push(child.full_name().to_string());
            self.message(&child, &child_prefix, class, stack)?;
            stack.pop();

            if class.is_none() {
                // The strictest class among the classified fields below; an empty message
                // discloses only its presence and needs a class of its own.
                let below = &self.fields[index + 1..];
                let strictest = below
                    .iter()
                    .filter(|f| !self.unclassified.contains(&f.pointer))
                    .map(|f| f.class)
                    .max_by_key(|c| strictness(*c));
                match strictest {
                    Some(c) => self.fields[index].class = c,
                    None if below.is_empty() => self.unclassified.push(pointer),
                    None => {} // every field below is already reported
                }
            }
        }
        Ok(())
    }

    /// The field's own `(enlace.class)`, if any.
    fn own_class(
        &self,
        field: &FieldDescriptor,
        pointer: &str,
    ) -> Result<Option<FieldClass>, Problem> {
        let Some(ext) = self.class_ext else {
            return Ok(None);
        };
        let options = field.options();
        if !options.has_extension(ext) {
            return Ok(None);
        }
        let value = options.get_extension(ext);
        let Value::String(name) = value.as_ref() else {
            return Err(invalid(format!(
                "`{pointer}`: (enlace.class) is not a string"
            )));
        };
        match FieldClass::parse(name) {
            Some(class) => Ok(Some(class)),
            None => Err(invalid(format!(
                "operation `{}`: field `{pointer}` has class `{name}`; the classes are {}",
                self.operation,
                FieldClass::ALL.map(FieldClass::as_str).join(", ")
            ))
            .with("operation", self.operation)
            .with("field", pointer)
            .with("class", name)),
        }
    }
}

/// Rank used only to give an unannotated message-typed field the strictest class below it.
pub(super) fn strictness(class: FieldClass) -> u8 {
    match class {
        FieldClass::Public => 0,
        FieldClass::Statistical => 1,
        FieldClass::Personal => 2,
        FieldClass::Sensitive => 3,
        FieldClass::Reserved => 4,
        FieldClass::Secret => 5,
    }
}

/// Lists a request message's fields as inputs. A field whose message is already being
/// expanded (a recursive request) or that lies deeper than [`MAX_DEPTH`] is listed, not
/// expanded.
pub(super) fn walk_request(
    operation: &str,
    message: &MessageDescriptor,
    prefix: &str,
    stack: &mut Vec<String>,
    inputs: &mut Vec<Input>,
) -> Result<(), Problem> {
    for field in message.fields() {
        if inputs.len() >= MAX_FIELDS {
            return Err(invalid(format!(
                "operation `{operation}` takes more than {MAX_FIELDS} request fields"
            ))
            .with("operation", operation));
        }
        let pointer = format!("{prefix}/{}", field.name());
        inputs.push(Input {
            location: "message".into(),
            name: pointer.clone(),
            required: field.cardinality() == Cardinality::Required,
            ty: type_name(&field),
            subject: None,
            patterns: Vec::new(),
        });
        let Some(child) = expandable(&field) else {
            continue;
        };
        if stack.len() >= MAX_DEPTH || stack.iter().any(|m| m == child.full_name()) {
            continue;
        }
        let child_prefix = if field.is_list() {
            format!("{pointer}/*")
        } else {
            pointer
        };
        stack.push(child.full_name().to_string());
        walk_request(operation, &child, &child_prefix, stack, inputs)?;
        stack.pop();
    }
    Ok(())
}

/// The message a field expands into: message-typed, not a map, not a well-known type.
pub(super) fn expandable(field: &FieldDescriptor) -> Option<MessageDescriptor> {
    if field.is_map() {
        return None;
    }
    match field.kind() {
        Kind::Message(m) if !is_well_known(&m) => Some(m),
        _ => None,
    }
}

pub(super) fn is_well_known(message: &MessageDescriptor) -> bool {
    message.package_name() == "google.protobuf"
}

/// `string`, `repeated string`, `message pkg.Name`, `enum pkg.Kind`, `map<string,int32>`.
pub(super) fn type_name(field: &FieldDescriptor) -> String {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
    {
        let key = entry.map_entry_key_field().kind();
        let value = entry.map_entry_value_field().kind();
        return format!("map<{},{}>", bare_kind_name(&key), bare_kind_name(&value));
    }
    let name = kind_name(&field.kind());
    if field.is_list() {
        format!("repeated {name}")
    } else {
        name
    }
}

pub(super) fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        other => bare_kind_name(other),
    }
}

/// Scalar names, or the full name of a message or enum (as written in a `map<…>`).
pub(super) fn bare_kind_name(kind: &Kind) -> String {
    let name = match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(m) => return m.full_name().to_string(),
        Kind::Enum(e) => return e.full_name().to_string(),
    };
    name.to_string()
}
