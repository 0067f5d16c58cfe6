//! Decoding JSON or YAML into a bounded `serde_json::Value`: duplicate keys, depth and expansion weight refused as they are built.

use super::*;

/// Decodes JSON (when the first non-blank byte is `{`) or YAML. Refuses duplicate keys, nesting
/// deeper than [`MAX_DEPTH`], non-finite numbers, YAML tags, and documents whose expansion
/// (YAML aliases) would exceed [`MAX_DESCRIPTION_BYTES`]: every value is weighed as it is built
/// (one per node plus string lengths, never more than its compact JSON length), so an alias
/// bomb stops before it fills memory. serde_norway's own limits (128 levels, alias jumps at most
/// 100 times the event count) also apply, but only the weight bounds wide aliases.
pub(super) fn decode(bytes: &[u8]) -> Result<Value, Problem> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut limits = Limits::default();
    let json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let result = if json {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        ValueSeed {
            limits: &mut limits,
            depth: 0,
        }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| format!("not valid JSON: {e}"))
    } else {
        // The YAML parser reads the whole event stream before the seed below sees a level,
        // and its cost grows with the square of flow nesting: bound that nesting first.
        if let Some(at) = yaml_flow_too_deep(bytes) {
            return Err(invalid(format!(
                "the document's flow collections (`[`, `{{`) nest deeper than {MAX_DEPTH} levels \
                 (at byte {at})"
            ))
            .with("limit", MAX_DEPTH));
        }
        let de = serde_norway::Deserializer::from_slice(bytes);
        ValueSeed {
            limits: &mut limits,
            depth: 0,
        }
        .deserialize(de)
        .map_err(|e| format!("not valid JSON or YAML: {e}"))
    };
    result.map_err(|msg| limits.tripped.take().unwrap_or_else(|| invalid(msg)))
}

/// Where YAML flow collections (`[…]`, `{…}`) first nest deeper than [`MAX_DEPTH`], counted
/// outside quoted scalars and comments, in one linear pass; `None` when they never do. A plain
/// scalar's brackets are counted too, which can only make the count larger.
pub(super) fn yaml_flow_too_deep(bytes: &[u8]) -> Option<usize> {
    #[derive(PartialEq)]
    enum In {
        Text,
        Single,
        Double,
        Comment,
    }
    let mut state = In::Text;
    let mut depth = 0usize;
    let mut prev = b'\n';
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let starts_token =
            prev.is_ascii_whitespace() || matches!(prev, b':' | b',' | b'[' | b'{' | b'-');
        match state {
            In::Text => match b {
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Some(i);
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                b'\'' if starts_token => state = In::Single,
                b'"' if starts_token => state = In::Double,
                b'#' if prev.is_ascii_whitespace() => state = In::Comment,
                _ => {}
            },
            In::Single if b == b'\'' => state = In::Text,
            In::Double if b == b'\\' => i += 1,
            In::Double if b == b'"' => state = In::Text,
            In::Comment if b == b'\n' => state = In::Text,
            _ => {}
        }
        prev = b;
        i += 1;
    }
    None
}

#[derive(Default)]
pub(super) struct Limits {
    weight: usize,
    tripped: Option<Problem>,
}

impl Limits {
    fn weigh<E: de::Error>(&mut self, w: usize) -> Result<(), E> {
        self.weight = self.weight.saturating_add(w);
        if self.weight > MAX_DESCRIPTION_BYTES {
            return Err(self.trip(too_large(format!(
                "the document expands to more than {MAX_DESCRIPTION_BYTES} bytes of JSON \
                 (YAML aliases are expanded)"
            ))));
        }
        Ok(())
    }

    fn trip<E: de::Error>(&mut self, p: Problem) -> E {
        let msg = p.detail.clone();
        self.tripped.get_or_insert(p);
        E::custom(msg)
    }
}

pub(super) struct ValueSeed<'l> {
    limits: &'l mut Limits,
    depth: usize,
}

impl ValueSeed<'_> {
    fn enter<E: de::Error>(&mut self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(self.limits.trip(
                invalid(format!("the document nests deeper than {MAX_DEPTH} levels"))
                    .with("limit", MAX_DEPTH),
            ));
        }
        self.limits.weigh(1)?;
        Ok(depth)
    }

    fn number<E: de::Error>(self, n: Option<Number>) -> Result<Value, E> {
        self.limits.weigh(1)?;
        match n {
            Some(n) => Ok(Value::Number(n)),
            None => Err(E::custom("number not representable in JSON")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.limits.weigh(1)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.number(Some(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.number(Some(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        self.number(Number::from_i128(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        self.number(Number::from_u128(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.number(Number::from_f64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.limits.weigh(1 + v.len())?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.limits.weigh(1 + v.len())?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.limits.weigh(1)?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(ValueSeed {
            limits: &mut *self.limits,
            depth,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut out = Map::new();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            self.limits.weigh(1 + k.len())?;
            if out.contains_key(&k) {
                return Err(self.limits.trip(invalid(format!("duplicate key `{k}`"))));
            }
            let v = map.next_value_seed(ValueSeed {
                limits: &mut *self.limits,
                depth,
            })?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// A mapping key: a string, or (YAML) an integer or boolean such as an unquoted `200:`.
pub(super) struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key that is a string, an integer or a boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
}
