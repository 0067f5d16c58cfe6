//! Identifiers of the federation: instances, members, subsystems, services, nodes, data subjects,
//! data concepts and contracts, each parsed strictly and displayed canonically.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest identifier text we look at; anything longer is refused before parsing.
pub const MAX_ID_LEN: usize = 256;

/// A refused identifier: which field, which rule, and the offending text (shortened).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule} (got `{value}`)")]
pub struct IdError {
    /// The field that was being parsed, e.g. `member.code`.
    pub field: &'static str,
    /// The rule it breaks, in words.
    pub rule: String,
    /// The text refused, cut to 64 characters.
    pub value: String,
}

impl IdError {
    fn new(field: &'static str, rule: impl Into<String>, value: &str) -> Self {
        let value: String = value.chars().take(64).collect();
        IdError {
            field,
            rule: rule.into(),
            value,
        }
    }
}

fn check_len(field: &'static str, s: &str) -> Result<(), IdError> {
    if s.len() > MAX_ID_LEN {
        return Err(IdError::new(
            field,
            format!("longer than {MAX_ID_LEN} bytes"),
            s,
        ));
    }
    Ok(())
}

/// `first` then `rest`, `min..=max` characters in all.
fn check_chars(
    field: &'static str,
    s: &str,
    min: usize,
    max: usize,
    first: fn(char) -> bool,
    rest: fn(char) -> bool,
    rule: &str,
) -> Result<(), IdError> {
    let n = s.chars().count();
    let mut chars = s.chars();
    let ok = (min..=max).contains(&n) && chars.next().is_some_and(first) && chars.all(rest);
    if ok {
        Ok(())
    } else {
        Err(IdError::new(field, rule.to_string(), s))
    }
}

fn upper(c: char) -> bool {
    c.is_ascii_uppercase()
}
fn upper_digit_dash(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-'
}
fn upper_digit(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit()
}
fn lower(c: char) -> bool {
    c.is_ascii_lowercase()
}
fn lower_digit(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}
fn lower_digit_dash(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}
fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}
fn code_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '.'
}

/// The modulo-11 check digit of a Chilean RUT/RUN body: `0`-`9` or `K`.
pub fn rut_check_digit(body: u32) -> char {
    let mut sum = 0u32;
    let mut factor = 2;
    let mut n = body;
    while n > 0 {
        sum += (n % 10) * factor;
        n /= 10;
        factor = if factor == 7 { 2 } else { factor + 1 };
    }
    match 11 - (sum % 11) {
        11 => '0',
        10 => 'K',
        d => char::from_digit(d, 10).unwrap_or('0'),
    }
}

/// Validates `NNNNNNNN-D` (1 to 8 digits, no dots, no leading zero, check digit `0`-`9` or
/// upper-case `K`) with its modulo-11 check digit.
pub fn check_rut(field: &'static str, s: &str) -> Result<(), IdError> {
    let Some((body, dv)) = s.split_once('-') else {
        return Err(IdError::new(
            field,
            "must be digits, a dash and a check digit, like 61002000-3",
            s,
        ));
    };
    let well_formed = (1..=8).contains(&body.len())
        && body.bytes().all(|b| b.is_ascii_digit())
        && !body.starts_with('0')
        && dv.len() == 1
        && dv.bytes().all(|b| b.is_ascii_digit() || b == b'K');
    if !well_formed {
        return Err(IdError::new(
            field,
            "must be 1 to 8 digits without dots or leading zeros, a dash and a check digit 0-9 or K",
            s,
        ));
    }
    let body_n: u32 = body
        .parse()
        .map_err(|_| IdError::new(field, "body is not a number", s))?;
    let expected = rut_check_digit(body_n);
    let given = dv.chars().next().unwrap_or(' ');
    if given != expected {
        return Err(IdError::new(
            field,
            format!("check digit is {given} but the modulo-11 rule gives {expected}"),
            s,
        ));
    }
    Ok(())
}

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A federation instance, `[A-Z][A-Z0-9-]{1,15}`, e.g. `CL-DEV`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance(String);

impl Instance {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Instance {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        check_len("instance", s)?;
        check_chars(
            "instance",
            s,
            2,
            16,
            upper,
            upper_digit_dash,
            "must match [A-Z][A-Z0-9-]{1,15}",
        )?;
        Ok(Instance(s.to_string()))
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(Instance);

/// A member class, `[A-Z][A-Z0-9]{1,7}`, e.g. `GOV`. Members of class `GOV` have RUT codes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberClass(String);

impl MemberClass {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Whether member codes of this class are Chilean RUTs.
    pub fn uses_rut(&self) -> bool {
        self.0 == "GOV"
    }
}

impl FromStr for MemberClass {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        check_len("member.class", s)?;
        check_chars(
            "member.class",
            s,
            2,
            8,
            upper,
            upper_digit,
            "must match [A-Z][A-Z0-9]{1,7}",
        )?;
        Ok(MemberClass(s.to_string()))
    }
}

impl fmt::Display for MemberClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(MemberClass);

/// A member (institution): `INSTANCE/CLASS/CODE`, e.g. `CL-DEV/GOV/61002000-3`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId {
    pub instance: Instance,
    pub class: MemberClass,
    code: String,
}

impl MemberId {
    pub fn new(instance: Instance, class: MemberClass, code: &str) -> Result<Self, IdError> {
        check_member_code(&class, code)?;
        Ok(MemberId {
            instance,
            class,
            code: code.to_string(),
        })
    }
    pub fn code(&self) -> &str {
        &self.code
    }
}

fn check_member_code(class: &MemberClass, code: &str) -> Result<(), IdError> {
    if class.uses_rut() {
        return check_rut("member.code", code);
    }
    check_chars(
        "member.code",
        code,
        1,
        32,
        alnum,
        code_char,
        "must match [A-Za-z0-9][A-Za-z0-9.-]{0,31}",
    )
}

fn split_exact<'a, const N: usize>(
    field: &'static str,
    s: &'a str,
    shape: &str,
) -> Result<[&'a str; N], IdError> {
    let parts: Vec<&str> = s.split('/').collect();
    parts
        .try_into()
        .map_err(|_| IdError::new(field, format!("must have the form {shape}"), s))
}

impl FromStr for MemberId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        check_len("member", s)?;
        let [instance, class, code] = split_exact::<3>("member", s, "INSTANCE/CLASS/CODE")?;
        MemberId::new(instance.parse()?, class.parse()?, code)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.instance, self.class, self.code)
    }
}
string_serde!(MemberId);

/// A code inside a member: subsystem, service or node name, `[a-z][a-z0-9-]{0,62}`.
fn check_code(field: &'static str, s: &str) -> Result<(), IdError> {
    check_chars(
        field,
        s,
        1,
        63,
        lower,
        lower_digit_dash,
        "must match [a-z][a-z0-9-]{0,62}",
    )
}

/// A subsystem (an information system of a member): `MEMBER/SUBSYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubsystemId {
    pub member: MemberId,
    code: String,
}

impl SubsystemId {
    pub fn new(member: MemberId, code: &str) -> Result<Self, IdError> {
        check_code("subsystem.code", code)?;
        if code == "node" {
            return Err(IdError::new(
                "subsystem.code",
                "`node` is reserved for node identifiers",
                code,
            ));
        }
        Ok(SubsystemId {
            member,
            code: code.to_string(),
        })
    }
    pub fn code(&self) -> &str {
        &self.code
    }
}

impl FromStr for SubsystemId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        check_len("subsystem", s)?;
        let [i, c, m, sub] = split_exact::<4>("subsystem", s, "INSTANCE/CLASS/CODE/SUBSYSTEM")?;
        SubsystemId::new(MemberId::new(i.parse()?, c.parse()?, m)?, sub)
    }
}

impl fmt::Display for SubsystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.member, self.code)
    }
}
string_serde!(SubsystemId);

/// A service of a subsystem, without version: `SUBSYSTEM/SERVICE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    pub subsystem: SubsystemId,
    code: String,
}

impl ServiceId {
    pub fn new(subsystem: SubsystemId, code: &str) -> Result<Self, IdError> {
        check_code("service.code", code)?;
        Ok(ServiceId {
            subsystem,
            code: code.to_string(),
        })
    }
    pub fn code(&self) -> &str {
        &self.code
    }
    pub fn member(&self) -> &MemberId {
        &self.subsystem.member
    }
}

impl FromStr for ServiceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        check_len("service", s)?;
        let [i, c, m, sub, svc] =
            split_exact::<5>("service", s, "INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE")?;
        let subsystem = SubsystemId::new(MemberId::new(i.parse()?, c.parse()?, m)?, sub)?;
        ServiceId::new(subsystem, svc)
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.subsystem, self.code)
    }
}
string_serde!(ServiceId);

/// A service version `vMAJOR.MINOR` (`v1` reads as `v1.0`). A new minor version must be
/// compatible with the one before it; a new major version may break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceVersion {
    pub major: u16,
    pub minor: u16,
}

impl ServiceVersion {
    pub fn new(major: u16, minor: u16) -> Self {
        ServiceVersion { major, minor }
    }
}

impl FromStr for ServiceVersion {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        const RULE: &str =
            "must be vMAJOR or vMAJOR.MINOR with numbers 0-9999 and no leading zeros";
        check_len("service.version", s)?;
        let rest = s
            .strip_prefix('v')
            .ok_or_else(|| IdError::new("service.version", RULE, s))?;
        let (major, minor) = match rest.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (rest, None),
        };
        let num = |t: &str| -> Result<u16, IdError> {
            let ok = (1..=4).contains(&t.len())
                && t.bytes().all(|b| b.is_ascii_digit())
                && !(t.len() > 1 && t.starts_with('0'));
            if !ok {
                return Err(IdError::new("service.version", RULE, s));
            }
            t.parse()
                .map_err(|_| IdError::new("service.version", RULE, s))
        };
        Ok(ServiceVersion {
            major: num(major)?,
            minor: match minor {
                Some(m) => num(m)?,
                None => 0,
            },
        })
    }
}

impl fmt::Display for ServiceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}", self.major, self.minor)
    }
}
string_serde!(ServiceVersion);

/// A node (security server) of a member: `MEMBER/node/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub member: MemberId,
    name: String,
}

impl NodeId {
    pub fn new(member: MemberId, name: &str) -> Result<Self, IdError> {
        check_chars(
            "node.name",
            name,
            1,
            63,
            lower_digit,
            lower_digit_dash,
            "must match [a-z0-9][a-z0-9-]{0,62}",
        )?;
        Ok(NodeId {
            member,
            name: name.to_string(),
        })
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The URI placed in the node's certificates' subjectAltName.
    pub fn uri(&self) -> String {
        format!("{NODE_URI_PREFIX}{self}")
    }
    /// Reads a node id back from a certificate URI SAN.
    pub fn from_uri(uri: &str) -> Result<Self, IdError> {
        uri.strip_prefix(NODE_URI_PREFIX)
            .ok_or_else(|| {
                IdError::new(
                    "node.uri",
                    format!("must start with {NODE_URI_PREFIX}"),
                    uri,
                )
            })?
            .parse()
    }
}

/// Prefix of the URI SAN that carries a node id in its certificates.
pub const NODE_URI_PREFIX: &str = "urn:enlace:node:";

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        check_len("node", s)?;
        let [i, c, m, kw, name] = split_exact::<5>("node", s, "INSTANCE/CLASS/CODE/node/NAME")?;
        if kw != "node" {
            return Err(IdError::new(
                "node",
                "must have the form INSTANCE/CLASS/CODE/node/NAME",
                s,
            ));
        }
        NodeId::new(MemberId::new(i.parse()?, c.parse()?, m)?, name)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/node/{}", self.member, self.name)
    }
}
string_serde!(NodeId);

/// A data subject (a person): `SCHEME:VALUE`, e.g. `CL-RUN:12345678-5`.
/// `CL-RUN` values are RUNs and their check digit is verified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectId {
    scheme: String,
    value: String,
}

impl SubjectId {
    pub fn scheme(&self) -> &str {
        &self.scheme
    }
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl FromStr for SubjectId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        check_len("subject", s)?;
        let Some((scheme, value)) = s.split_once(':') else {
            return Err(IdError::new(
                "subject",
                "must have the form SCHEME:VALUE",
                s,
            ));
        };
        check_chars(
            "subject.scheme",
            scheme,
            2,
            16,
            upper,
            upper_digit_dash,
            "must match [A-Z][A-Z0-9-]{1,15}",
        )?;
        if scheme == "CL-RUN" {
            check_rut("subject.value", value)?;
        } else {
            check_chars(
                "subject.value",
                value,
                1,
                64,
                alnum,
                code_char,
                "must match [A-Za-z0-9][A-Za-z0-9.-]{0,63}",
            )?;
        }
        Ok(SubjectId {
            scheme: scheme.to_string(),
            value: value.to_string(),
        })
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scheme, self.value)
    }
}
string_serde!(SubjectId);

/// A data concept, dotted lower-case words: `person.address`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConceptId(String);

impl ConceptId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ConceptId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        const RULE: &str =
            "must be dotted words [a-z][a-z0-9_]*, at least two, at most 128 characters";
        if s.len() > 128 || s.split('.').count() < 2 {
            return Err(IdError::new("concept", RULE, s));
        }
        for word in s.split('.') {
            check_chars(
                "concept",
                word,
                1,
                64,
                lower,
                |c| lower_digit(c) || c == '_',
                RULE,
            )?;
        }
        Ok(ConceptId(s.to_string()))
    }
}

impl fmt::Display for ConceptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(ConceptId);

/// Crockford's base-32 alphabet, as used by ULIDs.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A contract id assigned by the registry: `ctr_` and 26 Crockford base-32 characters
/// (a UUIDv7, so ids sort by creation time).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContractId(String);

impl ContractId {
    /// A fresh id from a UUIDv7.
    pub fn generate() -> Self {
        Self::from_uuid(uuid::Uuid::now_v7())
    }
    pub fn from_uuid(u: uuid::Uuid) -> Self {
        let n = u.as_u128();
        let mut out = String::from("ctr_");
        for i in (0..26).rev() {
            let idx = ((n >> (i * 5)) & 31) as usize;
            out.push(CROCKFORD[idx] as char);
        }
        ContractId(out)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ContractId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        const RULE: &str =
            "must be ctr_ and 26 characters of Crockford base 32 (0-9, A-Z without I, L, O, U)";
        let Some(rest) = s.strip_prefix("ctr_") else {
            return Err(IdError::new("contract", RULE, s));
        };
        let ok = rest.len() == 26
            && rest.bytes().all(|b| CROCKFORD.contains(&b))
            && rest.as_bytes()[0] <= b'7';
        if !ok {
            return Err(IdError::new("contract", RULE, s));
        }
        Ok(ContractId(s.to_string()))
    }
}

impl fmt::Display for ContractId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(ContractId);

#[cfg(test)]
mod tests;
