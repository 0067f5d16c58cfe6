//! Compiling a stored OpenAPI description into the per-operation validators: resolving references,
//! collecting parameters, bodies and responses.

use super::*;

pub(super) struct Compiler<'a> {
    pub(super) root: &'a Value,
    pub(super) v30: bool,
    /// Patterns compiled and `$ref`s walked so far, so a shared component is checked once.
    pub(super) patterns: RefCell<pattern::Checked>,
}

impl<'a> Compiler<'a> {
    pub(super) fn operation(
        &self,
        id: &str,
        method: &str,
        path: &str,
        item_params: (Option<&'a Value>, &String),
        op: &'a Value,
        op_at: &str,
    ) -> Result<CompiledOp, Problem> {
        let template = path::parse_template(path).map_err(|e| invalid(e).with("at", op_at))?;
        let mut params: Vec<Param> = Vec::new();
        let op_at_owned = op_at.to_owned();
        for (list, at) in [item_params, (op.get("parameters"), &op_at_owned)] {
            let Some(list) = list else { continue };
            let Some(list) = list.as_array() else {
                return Err(invalid(format!("`parameters` at {at} must be an array")));
            };
            for (i, p) in list.iter().enumerate() {
                let (p, p_at) = self.deref(p, format!("{at}/parameters/{i}"))?;
                let Some(param) = self.parameter(p, &p_at)? else {
                    continue;
                };
                match params
                    .iter_mut()
                    .find(|x| x.location == param.location && x.name == param.name)
                {
                    Some(x) => *x = param,
                    None => params.push(param),
                }
            }
        }
        let body = match op.get("requestBody") {
            None => None,
            Some(b) => {
                let (b, b_at) = self.deref(b, format!("{op_at}/requestBody"))?;
                Some(Body {
                    required: b.get("required") == Some(&Value::Bool(true)),
                    media: self.media(b.get("content"), &b_at)?,
                })
            }
        };
        let mut responses = Vec::new();
        if let Some(list) = op.get("responses").and_then(Value::as_object) {
            for (key, r) in list {
                if key.starts_with("x-") {
                    continue;
                }
                let (r, r_at) = self.deref(r, format!("{op_at}/responses/{}", escape(key)))?;
                // `2xx` is `2XX`; `default` stays as it is.
                let key = if key.len() == 3 {
                    key.to_ascii_uppercase()
                } else {
                    key.clone()
                };
                responses.push((key, self.media(r.get("content"), &r_at)?));
            }
        }
        Ok(CompiledOp {
            id: id.to_owned(),
            method: method.to_owned(),
            template,
            params,
            body,
            responses,
        })
    }

    /// One parameter, or `None` for those that are not checked (cookies; `Accept`,
    /// `Content-Type` and `Authorization` headers, which OpenAPI says to ignore).
    fn parameter(&self, p: &'a Value, at: &str) -> Result<Option<Param>, Problem> {
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        let location = match p.get("in").and_then(Value::as_str) {
            Some("path") => In::Path,
            Some("query") => In::Query,
            Some("header") => In::Header,
            _ => return Ok(None),
        };
        let name = if location == In::Header {
            let lower = name.to_ascii_lowercase();
            if matches!(lower.as_str(), "accept" | "content-type" | "authorization") {
                return Ok(None);
            }
            lower
        } else {
            name.to_owned()
        };
        let required = location == In::Path || p.get("required") == Some(&Value::Bool(true));
        let subject = p
            .get("x-enlace-subject")
            .and_then(Value::as_str)
            .map(String::from);
        let unsupported = |what: String| {
            Err(invalid(format!(
                "the {} parameter `{name}` at {at} {what}, which Enlace cannot check",
                location.as_str()
            ))
            .with("at", at))
        };
        if let Some(schema) = p.get("schema") {
            let (validator, bundled) = self.validator(schema, &format!("{at}/schema"))?;
            let types = schema::types_of(&bundled, &bundled);
            let style = p.get("style").and_then(Value::as_str);
            let default_style = if location == In::Query {
                "form"
            } else {
                "simple"
            };
            let style = style.unwrap_or(default_style);
            let explode = p
                .get("explode")
                .and_then(Value::as_bool)
                .unwrap_or(style == "form");
            let array = types.iter().any(|t| t == "array");
            let delimiter = match (location, style, array) {
                (In::Query, "form", _) | (In::Path | In::Header, "simple", _) => ',',
                (In::Query, "spaceDelimited", true) if !explode => ' ',
                (In::Query, "pipeDelimited", true) if !explode => '|',
                _ => return unsupported(format!("uses style `{style}`")),
            };
            if types.iter().any(|t| t == "object") {
                return unsupported("is an object".into());
            }
            let form = if array {
                let item_types = schema::items_of(&bundled, &bundled)
                    .map(|items| schema::types_of(&bundled, items))
                    .unwrap_or_default();
                if item_types.iter().any(|t| t == "object" || t == "array") {
                    return unsupported("is an array of objects or arrays".into());
                }
                Form::Array {
                    explode,
                    delimiter,
                    item_types,
                }
            } else {
                Form::Scalar { types }
            };
            return Ok(Some(Param {
                name,
                location,
                required,
                subject: subject.clone(),
                form,
                validator: Some(validator),
            }));
        }
        if let Some(content) = p.get("content").and_then(Value::as_object) {
            let Some((key, media)) = content.iter().next() else {
                return unsupported("has an empty `content`".into());
            };
            let essence = key
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !is_json(&essence) {
                return unsupported(format!("is described as {essence}"));
            }
            let validator = match media.get("schema") {
                Some(s) => {
                    let s_at = format!("{at}/content/{}/schema", escape(key));
                    Some(self.validator(s, &s_at)?.0)
                }
                None => None,
            };
            return Ok(Some(Param {
                name,
                location,
                required,
                subject: subject.clone(),
                form: Form::Json,
                validator,
            }));
        }
        Ok(Some(Param {
            name,
            location,
            required,
            subject: subject.clone(),
            form: Form::Scalar { types: Vec::new() },
            validator: None,
        }))
    }

    /// The media types of a `content` object, with a validator for each that has a schema.
    fn media(&self, content: Option<&'a Value>, at: &str) -> Result<Vec<Media>, Problem> {
        let Some(content) = content.and_then(Value::as_object) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(content.len());
        for (key, media) in content {
            let essence = key
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let validator = match media.get("schema") {
                Some(s) if is_json(&essence) => {
                    let s_at = format!("{at}/content/{}/schema", escape(key));
                    Some(self.validator(s, &s_at)?.0)
                }
                _ => None,
            };
            out.push(Media { essence, validator });
        }
        Ok(out)
    }

    /// Builds one validator; returns it with the bundled schema it was built from.
    fn validator(&self, schema: &Value, at: &str) -> Result<(Validator, Value), Problem> {
        let bundled = schema::bundle(self.root, self.v30, schema)
            .map_err(|e| invalid(format!("the schema at {at}: {e}")).with("at", at))?;
        pattern::check(
            self.root,
            self.v30,
            schema,
            at,
            &mut self.patterns.borrow_mut(),
        )?;
        let validator = pattern::options().build(&bundled).map_err(|e| {
            invalid(format!("the schema at {at} cannot be compiled: {e}")).with("at", at)
        })?;
        Ok((validator, bundled))
    }

    /// Follows `$ref` on a path item, parameter, request body or response.
    pub(super) fn deref(&self, v: &'a Value, at: String) -> Result<(&'a Value, String), Problem> {
        let mut cur = (v, at);
        for _ in 0..MAX_REF_HOPS {
            let Some(r) = cur.0.get("$ref") else {
                return Ok(cur);
            };
            let pointer = r
                .as_str()
                .and_then(|r| r.strip_prefix('#'))
                .filter(|p| p.starts_with("/components/"))
                .and_then(schema::percent_decode)
                .ok_or_else(|| invalid(format!("the `$ref` at {} is not local", cur.1)))?;
            let target = self
                .root
                .pointer(&pointer)
                .ok_or_else(|| invalid(format!("the `$ref` at {} points at nothing", cur.1)))?;
            cur = (target, pointer);
        }
        Err(invalid(format!(
            "the references starting at {} are more than {MAX_REF_HOPS} deep",
            cur.1
        )))
    }
}

pub(super) fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}
