//! Reading operations and schemas: local `$ref` resolution, the schema walk, field classes and inputs.

use super::*;

/// A schema reached from a field: where it is, the `$ref` targets being expanded above it (for
/// cycle detection), the class it inherits, and its schema depth.
#[derive(Clone)]
struct Part<'a> {
    schema: &'a Value,
    at: String,
    chain: Vec<String>,
    inherited: Option<FieldClass>,
    depth: usize,
}

/// What a field's schemas say once `$ref`, `allOf`, `oneOf` and `anyOf` are merged.
#[derive(Default)]
struct Shape<'a> {
    types: Vec<String>,
    nullable: bool,
    has_properties: bool,
    properties: Vec<(String, Vec<Part<'a>>)>,
    index: HashMap<String, usize>,
    required: HashSet<String>,
    items: Vec<Part<'a>>,
    /// The `pattern`s stated on the value (not on its properties or items).
    patterns: Vec<String>,
}

impl Shape<'_> {
    fn type_string(&self) -> String {
        let mut types: Vec<&str> = self.types.iter().map(String::as_str).collect();
        if types.is_empty() {
            if self.has_properties {
                types.push("object");
            } else if !self.items.is_empty() {
                types.push("array");
            } else {
                return "any".into();
            }
        }
        if self.nullable {
            types.push("null");
        }
        types.sort_unstable();
        types.dedup();
        types.join("|")
    }
}

/// A field or body input found by [`Reader::walk`].
struct Node {
    pointer: String,
    ty: String,
    class: Option<FieldClass>,
    required: bool,
    patterns: Vec<String>,
}

pub(super) struct Reader<'a> {
    root: &'a Value,
    steps: usize,
    fields: usize,
    /// Whether classes matter (response schemas) or not (request schemas).
    classes: bool,
    /// (operation id, pointer) of response fields without a class.
    pub(super) unclassified: Vec<(String, String)>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(root: &'a Value) -> Self {
        Reader {
            root,
            steps: 0,
            fields: 0,
            classes: false,
            unclassified: Vec::new(),
        }
    }

    pub(super) fn operations(&mut self) -> Result<Vec<Operation>, Problem> {
        let paths = match self.root.get("paths") {
            Some(Value::Object(p)) => p,
            Some(_) => return Err(invalid("`paths` must be an object")),
            None => return Err(invalid("`paths` is required")),
        };
        let mut ops: Vec<Operation> = Vec::new();
        for (path, item) in paths {
            if path.starts_with("x-") {
                continue;
            }
            let at = format!("/paths/{}", escape(path));
            if !path.starts_with('/') {
                return Err(invalid(format!("path `{path}` must start with `/`")).with("at", at));
            }
            let (item, item_at) = self.deref(item, at)?;
            let Value::Object(item) = item else {
                return Err(invalid(format!(
                    "the path item at {item_at} must be an object"
                )));
            };
            for (method, op) in item.iter().filter(|(k, _)| METHODS.contains(&k.as_str())) {
                let op_at = format!("{item_at}/{method}");
                let method = method.to_ascii_uppercase();
                let Value::Object(op) = op else {
                    return Err(invalid(format!(
                        "the operation at {op_at} must be an object"
                    )));
                };
                let id = match op.get("operationId") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(_) => {
                        return Err(invalid(format!(
                            "`operationId` at {op_at} must be a non-empty string"
                        ))
                        .with("at", op_at));
                    }
                    None => {
                        return Err(invalid(format!(
                            "{method} {path} has no `operationId`; contracts name operations by it"
                        ))
                        .with("at", op_at));
                    }
                };
                if let Some(other) = ops.iter().find(|o| o.id == id) {
                    return Err(invalid(format!(
                        "operationId `{id}` is used by both {} {} and {method} {path}",
                        other.method, other.path
                    ))
                    .with("operation", &id));
                }
                if ops.len() == MAX_OPERATIONS {
                    return Err(invalid(format!("more than {MAX_OPERATIONS} operations"))
                        .with("limit", MAX_OPERATIONS));
                }
                let mut inputs = self.parameters(&[
                    (item.get("parameters"), &item_at),
                    (op.get("parameters"), &op_at),
                ])?;
                inputs.extend(self.body(op.get("requestBody"), &op_at)?);
                let fields = self.response(&id, op.get("responses"), &op_at)?;
                ops.push(Operation {
                    id,
                    method,
                    path: path.clone(),
                    client_streaming: false,
                    server_streaming: false,
                    inputs,
                    fields,
                });
            }
        }
        Ok(ops)
    }

    /// Path-level then operation-level parameters; an operation-level one replaces a path-level
    /// one with the same name and location.
    fn parameters(
        &mut self,
        lists: &[(Option<&'a Value>, &String)],
    ) -> Result<Vec<Input>, Problem> {
        let mut out: Vec<Input> = Vec::new();
        for (list, at) in lists {
            let Some(list) = list else { continue };
            let Value::Array(list) = list else {
                return Err(invalid(format!("`parameters` at {at} must be an array")));
            };
            for (i, p) in list.iter().enumerate() {
                let (p, p_at) = self.deref(p, format!("{at}/parameters/{i}"))?;
                let name = p.get("name").and_then(Value::as_str);
                let location = p.get("in").and_then(Value::as_str);
                let (Some(name), Some(location @ ("path" | "query" | "header" | "cookie"))) =
                    (name, location)
                else {
                    return Err(invalid(format!(
                        "the parameter at {p_at} needs a `name` and an `in` of path, query, \
                         header or cookie"
                    ))
                    .with("at", p_at));
                };
                let required = location == "path" || p.get("required") == Some(&Value::Bool(true));
                let schema = match p.get("schema") {
                    Some(s) => Some((s, format!("{p_at}/schema"))),
                    None => json_media(p.get("content"), &p_at)?.and_then(|(m, m_at)| {
                        m.get("schema").map(|s| (s, format!("{m_at}/schema")))
                    }),
                };
                let (ty, patterns) = match schema {
                    Some((s, s_at)) => self.type_of(s, s_at)?,
                    None => ("any".into(), Vec::new()),
                };
                let subject = subject_binding(p, location, &p_at)?;
                let input = Input {
                    location: location.into(),
                    name: name.into(),
                    required,
                    ty,
                    subject,
                    patterns,
                };
                match out
                    .iter_mut()
                    .find(|x| x.location == input.location && x.name == input.name)
                {
                    Some(x) => *x = input,
                    None => out.push(input),
                }
            }
        }
        let bound: Vec<&Input> = out.iter().filter(|i| i.subject.is_some()).collect();
        if bound.len() > 1 {
            return Err(invalid(format!(
                "at most one parameter of an operation may carry `{SUBJECT_KEY}`; {} do ({})",
                bound.len(),
                bound
                    .iter()
                    .map(|i| format!("{} {}", i.location, i.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(out)
    }

    /// The request body as inputs: the body itself (`""`), then every property of a JSON body.
    fn body(&mut self, body: Option<&'a Value>, op_at: &str) -> Result<Vec<Input>, Problem> {
        let Some(body) = body else {
            return Ok(Vec::new());
        };
        let (body, at) = self.deref(body, format!("{op_at}/requestBody"))?;
        let required = body.get("required") == Some(&Value::Bool(true));
        let schema = json_media(body.get("content"), &at)?
            .and_then(|(m, m_at)| m.get("schema").map(|s| (s, format!("{m_at}/schema"))));
        let Some((schema, s_at)) = schema else {
            return Ok(vec![Input {
                location: "body".into(),
                name: String::new(),
                required,
                ty: "any".into(),
                subject: None,
                patterns: Vec::new(),
            }]);
        };
        self.classes = false;
        let mut nodes = Vec::new();
        self.walk(
            vec![root_part(schema, s_at)],
            "",
            required,
            true,
            &mut nodes,
        )?;
        Ok(nodes
            .into_iter()
            .map(|n| Input {
                location: "body".into(),
                name: n.pointer,
                required: n.required,
                ty: n.ty,
                subject: None,
                patterns: n.patterns,
            })
            .collect())
    }

    /// The fields of the lowest 2xx response that has `application/json` content.
    fn response(
        &mut self,
        id: &str,
        responses: Option<&'a Value>,
        op_at: &str,
    ) -> Result<Vec<Field>, Problem> {
        let Some(responses) = responses else {
            return Ok(Vec::new());
        };
        let Value::Object(responses) = responses else {
            return Err(invalid(format!("`responses` at {op_at} must be an object")));
        };
        let mut codes: Vec<(u16, &String, &'a Value)> = responses
            .iter()
            .filter_map(|(k, v)| {
                let code = match k.as_str() {
                    "2XX" | "2xx" => 299,
                    _ if k.len() == 3 && k.starts_with('2') => k.parse().ok()?,
                    _ => return None,
                };
                Some((code, k, v))
            })
            .collect();
        codes.sort_by_key(|(code, _, _)| *code);
        for (_, key, response) in codes {
            let (response, r_at) =
                self.deref(response, format!("{op_at}/responses/{}", escape(key)))?;
            let Some((media, m_at)) = json_media(response.get("content"), &r_at)? else {
                continue;
            };
            let Some(schema) = media.get("schema") else {
                return Ok(Vec::new());
            };
            self.classes = true;
            let mut nodes = Vec::new();
            let root = root_part(schema, format!("{m_at}/schema"));
            self.walk(vec![root], "", true, false, &mut nodes)?;
            let mut fields = Vec::with_capacity(nodes.len());
            for n in nodes {
                match n.class {
                    Some(class) => fields.push(Field {
                        pointer: n.pointer,
                        class,
                        ty: n.ty,
                        patterns: n.patterns,
                    }),
                    None => self.unclassified.push((id.to_owned(), n.pointer)),
                }
            }
            return Ok(fields);
        }
        Ok(Vec::new())
    }

    /// Follows `$ref` on a non-schema object (path item, parameter, request body, response).
    fn deref(&self, v: &'a Value, at: String) -> Result<(&'a Value, String), Problem> {
        let mut cur = (v, at);
        for _ in 0..MAX_REF_HOPS {
            match cur.0.get("$ref") {
                None => return Ok(cur),
                Some(r) => cur = self.resolve(r, &cur.1)?,
            }
        }
        Err(invalid(format!(
            "the references starting at {} go round in a circle or are more than {MAX_REF_HOPS} deep",
            cur.1
        )))
    }

    /// Resolves a local `$ref` to the value and its JSON pointer.
    fn resolve(&self, r: &Value, at: &str) -> Result<(&'a Value, String), Problem> {
        let Value::String(r) = r else {
            return Err(invalid(format!("`$ref` at {at} must be a string")).with("at", at));
        };
        let target = r
            .strip_prefix('#')
            .filter(|p| p.starts_with("/components/"))
            .ok_or_else(|| remote("$ref", r, at))?;
        let pointer = percent_decode(target).ok_or_else(|| {
            invalid(format!("`$ref: {r}` at {at} is not a valid URI fragment")).with("at", at)
        })?;
        match self.root.pointer(&pointer) {
            Some(v) => Ok((v, pointer)),
            None => Err(invalid(format!("`$ref: {r}` at {at} points at nothing"))
                .with("at", at)
                .with("ref", r.as_str())),
        }
    }

    /// Resolves a schema `$ref` and pushes its target on `chain`, refusing a cycle.
    fn enter_ref(
        &mut self,
        r: &Value,
        at: &str,
        chain: &mut Vec<String>,
    ) -> Result<(&'a Value, String), Problem> {
        let (target, pointer) = self.resolve(r, at)?;
        if let Some(start) = chain.iter().position(|p| *p == pointer) {
            let mut cycle: Vec<String> = chain[start..].iter().map(|p| format!("#{p}")).collect();
            cycle.push(format!("#{pointer}"));
            return Err(invalid(format!(
                "recursive schema: {} (reached at {at}); recursive request and response schemas \
                 are refused because their fields cannot all be listed and classified",
                cycle.join(" → ")
            ))
            .with("at", at)
            .with("cycle", cycle));
        }
        chain.push(pointer.clone());
        Ok((target, pointer))
    }

    fn step(&mut self, at: &str, depth: usize) -> Result<(), Problem> {
        self.steps += 1;
        if self.steps > MAX_SCHEMA_STEPS {
            return Err(invalid(format!(
                "the schemas are too complex to expand (more than {MAX_SCHEMA_STEPS} steps)"
            )));
        }
        if depth > MAX_DEPTH {
            return Err(invalid(format!(
                "schemas nest deeper than {MAX_DEPTH} levels (counting $ref, allOf/oneOf/anyOf, \
                 properties and items) at {at}"
            ))
            .with("at", at)
            .with("limit", MAX_DEPTH));
        }
        Ok(())
    }

    /// The type of a parameter schema, and its patterns (those of its array items too).
    fn type_of(&mut self, schema: &'a Value, at: String) -> Result<(String, Vec<String>), Problem> {
        let mut shape = Shape::default();
        let part = root_part(schema, at);
        self.classes = false;
        self.expand(
            part.schema,
            &part.at,
            None,
            &mut Vec::new(),
            0,
            true,
            &mut shape,
        )?;
        let ty = shape.type_string();
        let mut patterns = std::mem::take(&mut shape.patterns);
        let mut items = Shape::default();
        for p in shape.items {
            let mut chain = p.chain;
            self.expand(p.schema, &p.at, None, &mut chain, p.depth, true, &mut items)?;
        }
        patterns.extend(items.patterns.iter().map(|p| format!("items: {p}")));
        patterns.sort();
        patterns.dedup();
        Ok((ty, patterns))
    }

    /// Emits a node for `pointer` (when `emit`), then walks its properties and array items.
    /// Returns the node's patterns, those of its array items prefixed with `items: `.
    fn walk(
        &mut self,
        parts: Vec<Part<'a>>,
        pointer: &str,
        required: bool,
        emit: bool,
        out: &mut Vec<Node>,
    ) -> Result<Vec<String>, Problem> {
        let mut class = None;
        if self.classes {
            for p in &parts {
                let own = self.node_class(p.schema, &p.at, &mut p.chain.clone(), p.depth)?;
                class = agree(class, own, &p.at)?;
            }
            class = class.or_else(|| parts.iter().find_map(|p| p.inherited));
        }
        let mut shape = Shape::default();
        for p in parts {
            let mut chain = p.chain;
            self.expand(
                p.schema, &p.at, class, &mut chain, p.depth, true, &mut shape,
            )?;
        }
        if emit {
            self.fields += 1;
            if self.fields > MAX_FIELDS {
                return Err(invalid(format!(
                    "more than {MAX_FIELDS} response fields and request-body inputs"
                ))
                .with("limit", MAX_FIELDS));
            }
            out.push(Node {
                pointer: pointer.to_owned(),
                ty: shape.type_string(),
                class,
                required,
                patterns: Vec::new(),
            });
        }
        let index = out.len().checked_sub(1).filter(|_| emit);
        let Shape {
            properties,
            required: required_names,
            items,
            mut patterns,
            ..
        } = shape;
        for (name, parts) in properties {
            let child = format!("{pointer}/{}", escape(&name));
            let child_required = required && required_names.contains(&name);
            self.walk(parts, &child, child_required, true, out)?;
        }
        if !items.is_empty() {
            let of_items = self.walk(items, &format!("{pointer}/*"), required, false, out)?;
            patterns.extend(of_items.iter().map(|p| format!("items: {p}")));
        }
        patterns.sort();
        patterns.dedup();
        if let Some(i) = index {
            out[i].patterns = patterns.clone();
        }
        Ok(patterns)
    }

    /// The class a schema states for itself: its own `x-enlace-class`, else that of the schema
    /// it references, else the one its `allOf`/`oneOf`/`anyOf` members agree on.
    fn node_class(
        &mut self,
        schema: &'a Value,
        at: &str,
        chain: &mut Vec<String>,
        depth: usize,
    ) -> Result<Option<FieldClass>, Problem> {
        self.step(at, depth)?;
        let Value::Object(m) = schema else {
            return Ok(None);
        };
        if let Some(c) = class_of(m, at)? {
            return Ok(Some(c));
        }
        if let Some(r) = m.get("$ref") {
            let (target, t_at) = self.enter_ref(r, at, chain)?;
            let c = self.node_class(target, &t_at, chain, depth + 1);
            chain.pop();
            if let Some(c) = c? {
                return Ok(Some(c));
            }
        }
        let mut found = None;
        for (member, m_at, _) in members(m, at)? {
            let c = self.node_class(member, &m_at, chain, depth + 1)?;
            found = agree(found, c, at)?;
        }
        Ok(found)
    }

    /// Merges what `schema` says into `shape`; `class` is what its properties and items
    /// inherit. `all` is false below `oneOf`/`anyOf`, whose `required` lists are not merged.
    #[allow(clippy::too_many_arguments)]
    fn expand(
        &mut self,
        schema: &'a Value,
        at: &str,
        class: Option<FieldClass>,
        chain: &mut Vec<String>,
        depth: usize,
        all: bool,
        shape: &mut Shape<'a>,
    ) -> Result<(), Problem> {
        self.step(at, depth)?;
        let m = match schema {
            Value::Object(m) => m,
            Value::Bool(_) => return Ok(()),
            _ => {
                return Err(invalid(format!("the schema at {at} must be an object")).with("at", at));
            }
        };
        if let Some(r) = m.get("$ref") {
            let (target, t_at) = self.enter_ref(r, at, chain)?;
            let res = self.expand(target, &t_at, class, chain, depth + 1, all, shape);
            chain.pop();
            res?;
        }
        match m.get("type") {
            None => {}
            Some(Value::String(t)) => shape.types.push(t.clone()),
            Some(Value::Array(ts)) if ts.iter().all(Value::is_string) => {
                shape
                    .types
                    .extend(ts.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            Some(_) => {
                return Err(invalid(format!(
                    "`type` at {at} must be a string or an array of strings"
                ))
                .with("at", at));
            }
        }
        if m.get("nullable") == Some(&Value::Bool(true)) {
            shape.nullable = true;
        }
        if let Some(Value::String(p)) = m.get("pattern") {
            shape.patterns.push(p.clone());
        }
        if let Some(props) = m.get("properties") {
            let Value::Object(props) = props else {
                return Err(
                    invalid(format!("`properties` at {at} must be an object")).with("at", at)
                );
            };
            shape.has_properties = true;
            for (name, s) in props {
                let p_at = format!("{at}/properties/{}", escape(name));
                if name == "*" {
                    return Err(invalid(format!(
                        "a property may not be named `*` ({p_at}): `*` stands for every array \
                         element in field pointers"
                    ))
                    .with("at", p_at));
                }
                let part = Part {
                    schema: s,
                    at: p_at,
                    chain: chain.clone(),
                    inherited: class,
                    depth: depth + 1,
                };
                match shape.index.get(name) {
                    Some(&i) => shape.properties[i].1.push(part),
                    None => {
                        shape.index.insert(name.clone(), shape.properties.len());
                        shape.properties.push((name.clone(), vec![part]));
                    }
                }
            }
        }
        if let Some(req) = m.get("required") {
            match req {
                Value::Array(names) if names.iter().all(Value::is_string) => {
                    if all {
                        shape
                            .required
                            .extend(names.iter().filter_map(Value::as_str).map(str::to_owned));
                    }
                }
                // `required: true` inside a schema is a common slip for a parameter's flag.
                _ => {
                    return Err(invalid(format!(
                        "`required` at {at} must be an array of property names"
                    ))
                    .with("at", at));
                }
            }
        }
        for key in ["prefixItems", "items"] {
            let item_at = format!("{at}/{key}");
            let schemas: Vec<(&'a Value, String)> = match m.get(key) {
                None => continue,
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s, format!("{item_at}/{i}")))
                    .collect(),
                Some(s) => vec![(s, item_at)],
            };
            for (s, s_at) in schemas {
                shape.items.push(Part {
                    schema: s,
                    at: s_at,
                    chain: chain.clone(),
                    inherited: class,
                    depth: depth + 1,
                });
            }
        }
        for (member, m_at, member_all) in members(m, at)? {
            let own = if self.classes {
                self.node_class(member, &m_at, chain, depth + 1)?
            } else {
                None
            };
            self.expand(
                member,
                &m_at,
                own.or(class),
                chain,
                depth + 1,
                all && member_all,
                shape,
            )?;
        }
        Ok(())
    }
}

fn root_part(schema: &Value, at: String) -> Part<'_> {
    Part {
        schema,
        at,
        chain: Vec::new(),
        inherited: None,
        depth: 0,
    }
}

/// The members of `allOf` (true: their `required` lists count), `oneOf` and `anyOf`.
fn members<'a>(
    m: &'a Map<String, Value>,
    at: &str,
) -> Result<Vec<(&'a Value, String, bool)>, Problem> {
    let mut out = Vec::new();
    for key in ["allOf", "oneOf", "anyOf"] {
        match m.get(key) {
            None => {}
            Some(Value::Array(a)) => {
                out.extend(
                    a.iter()
                        .enumerate()
                        .map(|(i, s)| (s, format!("{at}/{key}/{i}"), key == "allOf")),
                );
            }
            Some(_) => {
                return Err(invalid(format!("`{key}` at {at} must be an array")).with("at", at));
            }
        }
    }
    Ok(out)
}

/// Combines two stated classes: equal or one missing is fine; two different ones are refused.
fn agree(
    a: Option<FieldClass>,
    b: Option<FieldClass>,
    at: &str,
) -> Result<Option<FieldClass>, Problem> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => Err(invalid(format!(
            "the schemas combined at {at} state different classes ({} and {}); state \
             `{CLASS_KEY}` on the schema that combines them",
            x.as_str(),
            y.as_str()
        ))
        .with("at", at)),
        (x, y) => Ok(x.or(y)),
    }
}
