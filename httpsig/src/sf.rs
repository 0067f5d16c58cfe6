//! A strict RFC 8941 structured-field parser and serialiser for the dictionaries, inner lists and
//! items that message signatures and digests use.
//!
//! Parsing follows RFC 8941 §4.2 with two deliberate refusals the RFC would tolerate: a
//! duplicated dictionary key or parameter key (the RFC keeps the last one; a signature header
//! with two members of the same name is an attack, not a typo), and a byte sequence that is not
//! canonical padded base64. Decimals are parsed but kept as text: nothing we sign contains one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A bare item: the value of an item or of a parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BareItem {
    Integer(i64),
    /// A decimal, as written (never serialised by us).
    Decimal(String),
    String(String),
    Token(String),
    ByteSeq(Vec<u8>),
    Boolean(bool),
}

/// Ordered parameters, keys unique.
pub(crate) type Params = Vec<(String, BareItem)>;

/// An item with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub bare: BareItem,
    pub params: Params,
}

/// A dictionary member's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Member {
    Item(Item),
    InnerList(Vec<Item>, Params),
}

/// An ordered dictionary, keys unique.
pub(crate) type Dictionary = Vec<(String, Member)>;

const MAX_INTEGER: i64 = 999_999_999_999_999;

/// Parses a dictionary field value (RFC 8941 §4.2.2). An empty value is an empty dictionary.
pub(crate) fn parse_dictionary(input: &str) -> Result<Dictionary, String> {
    let mut p = Parser::new(input);
    p.skip_sp();
    let dict = p.dictionary()?;
    p.skip_sp();
    p.end()?;
    Ok(dict)
}

/// Parses an item field value (RFC 8941 §4.2.3).
pub(crate) fn parse_item(input: &str) -> Result<Item, String> {
    let mut p = Parser::new(input);
    p.skip_sp();
    let item = p.item()?;
    p.skip_sp();
    p.end()?;
    Ok(item)
}

/// Whether `s` can be serialised as a structured-field string (printable ASCII).
pub(crate) fn is_serialisable_string(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b'*')
}

/// A `tchar` of RFC 9110 §5.6.2: what a token (and a field name) is made of.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Parser {
            s: s.as_bytes(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn fail<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.pos))
    }

    fn end(&self) -> Result<(), String> {
        if self.pos == self.s.len() {
            Ok(())
        } else {
            self.fail("unexpected trailing characters")
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn dictionary(&mut self) -> Result<Dictionary, String> {
        let mut dict: Dictionary = Vec::new();
        while self.peek().is_some() {
            let key = self.key()?;
            let member = if self.peek() == Some(b'=') {
                self.pos += 1;
                self.item_or_inner_list()?
            } else {
                let params = self.params()?;
                Member::Item(Item {
                    bare: BareItem::Boolean(true),
                    params,
                })
            };
            if dict.iter().any(|(k, _)| *k == key) {
                return self.fail(&format!("duplicate dictionary key `{key}`"));
            }
            dict.push((key, member));
            self.skip_ows();
            if self.peek().is_none() {
                return Ok(dict);
            }
            if self.bump() != Some(b',') {
                return self.fail("expected `,` between dictionary members");
            }
            self.skip_ows();
            if self.peek().is_none() {
                return self.fail("trailing `,` in dictionary");
            }
        }
        Ok(dict)
    }

    fn item_or_inner_list(&mut self) -> Result<Member, String> {
        if self.peek() == Some(b'(') {
            let (items, params) = self.inner_list()?;
            Ok(Member::InnerList(items, params))
        } else {
            Ok(Member::Item(self.item()?))
        }
    }

    fn inner_list(&mut self) -> Result<(Vec<Item>, Params), String> {
        if self.bump() != Some(b'(') {
            return self.fail("expected `(`");
        }
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            match self.peek() {
                None => return self.fail("unterminated inner list"),
                Some(b')') => {
                    self.pos += 1;
                    let params = self.params()?;
                    return Ok((items, params));
                }
                Some(_) => {}
            }
            items.push(self.item()?);
            match self.peek() {
                Some(b' ' | b')') => {}
                _ => return self.fail("expected a space or `)` after an inner-list item"),
            }
        }
    }

    fn item(&mut self) -> Result<Item, String> {
        let bare = self.bare_item()?;
        let params = self.params()?;
        Ok(Item { bare, params })
    }

    fn params(&mut self) -> Result<Params, String> {
        let mut params: Params = Vec::new();
        while self.peek() == Some(b';') {
            self.pos += 1;
            self.skip_sp();
            let key = self.key()?;
            let value = if self.peek() == Some(b'=') {
                self.pos += 1;
                self.bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            if params.iter().any(|(k, _)| *k == key) {
                return self.fail(&format!("duplicate parameter `{key}`"));
            }
            params.push((key, value));
        }
        Ok(params)
    }

    fn key(&mut self) -> Result<String, String> {
        let start = self.pos;
        match self.peek() {
            Some(b) if b.is_ascii_lowercase() || b == b'*' => self.pos += 1,
            _ => return self.fail("expected a key"),
        }
        while self.peek().is_some_and(is_key_char) {
            self.pos += 1;
        }
        Ok(self.text(start))
    }

    /// The ASCII text from `start` to the current position.
    fn text(&self, start: usize) -> String {
        String::from_utf8_lossy(&self.s[start..self.pos]).into_owned()
    }

    fn bare_item(&mut self) -> Result<BareItem, String> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string(),
            Some(b':') => self.byte_seq(),
            Some(b'?') => self.boolean(),
            Some(b) if b.is_ascii_alphabetic() || b == b'*' => self.token(),
            _ => self.fail("expected an item"),
        }
    }

    fn number(&mut self) -> Result<BareItem, String> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return self.fail("expected a digit");
        }
        let digits_start = self.pos;
        let mut decimal_at = None;
        while let Some(b) = self.peek() {
            if b.is_ascii_digit() {
                self.pos += 1;
            } else if b == b'.' && decimal_at.is_none() {
                if self.pos - digits_start > 12 {
                    return self.fail("too many integer digits in a decimal");
                }
                decimal_at = Some(self.pos);
                self.pos += 1;
            } else {
                break;
            }
            let len = self.pos - digits_start;
            if decimal_at.is_none() && len > 15 {
                return self.fail("integer longer than 15 digits");
            }
            if decimal_at.is_some() && len > 16 {
                return self.fail("decimal longer than 16 characters");
            }
        }
        match decimal_at {
            None => {
                let text = self.text(digits_start);
                let magnitude: i64 = text
                    .parse()
                    .map_err(|_| format!("bad integer at byte {start}"))?;
                debug_assert!(magnitude <= MAX_INTEGER);
                Ok(BareItem::Integer(if negative {
                    -magnitude
                } else {
                    magnitude
                }))
            }
            Some(dot) => {
                let fraction = self.pos - dot - 1;
                if fraction == 0 {
                    return self.fail("decimal ends with `.`");
                }
                if fraction > 3 {
                    return self.fail("more than three fractional digits");
                }
                Ok(BareItem::Decimal(self.text(start)))
            }
        }
    }

    fn string(&mut self) -> Result<BareItem, String> {
        self.pos += 1; // the opening quote
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return self.fail("unterminated string"),
                Some(b'\\') => match self.bump() {
                    Some(c @ (b'"' | b'\\')) => out.push(char::from(c)),
                    _ => return self.fail("bad escape in string"),
                },
                Some(b'"') => return Ok(BareItem::String(out)),
                Some(c @ 0x20..=0x7e) => out.push(char::from(c)),
                Some(_) => return self.fail("non-printable character in string"),
            }
        }
    }

    fn token(&mut self) -> Result<BareItem, String> {
        let start = self.pos;
        self.pos += 1; // checked by the caller: ALPHA or `*`
        while self
            .peek()
            .is_some_and(|b| is_tchar(b) || b == b':' || b == b'/')
        {
            self.pos += 1;
        }
        Ok(BareItem::Token(self.text(start)))
    }

    fn byte_seq(&mut self) -> Result<BareItem, String> {
        self.pos += 1; // the opening colon
        let start = self.pos;
        loop {
            match self.peek() {
                None => return self.fail("unterminated byte sequence"),
                Some(b':') => break,
                Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=') => {
                    self.pos += 1;
                }
                Some(_) => return self.fail("bad character in byte sequence"),
            }
        }
        let bytes = STANDARD
            .decode(&self.s[start..self.pos])
            .map_err(|e| format!("bad base64 in byte sequence at byte {start}: {e}"))?;
        self.pos += 1; // the closing colon
        Ok(BareItem::ByteSeq(bytes))
    }

    fn boolean(&mut self) -> Result<BareItem, String> {
        self.pos += 1; // `?`
        match self.bump() {
            Some(b'1') => Ok(BareItem::Boolean(true)),
            Some(b'0') => Ok(BareItem::Boolean(false)),
            _ => self.fail("expected `?0` or `?1`"),
        }
    }
}

/// Appends the serialisation of a bare item (RFC 8941 §4.1.3). Strings must satisfy
/// [`is_serialisable_string`]; callers check before building items from local data.
pub(crate) fn write_bare(out: &mut String, bare: &BareItem) {
    match bare {
        BareItem::Integer(i) => out.push_str(&i.to_string()),
        BareItem::Decimal(d) => out.push_str(d),
        BareItem::String(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        BareItem::Token(t) => out.push_str(t),
        BareItem::ByteSeq(b) => {
            out.push(':');
            out.push_str(&STANDARD.encode(b));
            out.push(':');
        }
        BareItem::Boolean(true) => out.push_str("?1"),
        BareItem::Boolean(false) => out.push_str("?0"),
    }
}

/// Appends the serialisation of parameters (RFC 8941 §4.1.1.2): a true boolean is the bare key.
pub(crate) fn write_params(out: &mut String, params: &Params) {
    for (key, value) in params {
        out.push(';');
        out.push_str(key);
        if *value != BareItem::Boolean(true) {
            out.push('=');
            write_bare(out, value);
        }
    }
}

/// Appends the serialisation of an item with its parameters.
pub(crate) fn write_item(out: &mut String, item: &Item) {
    write_bare(out, &item.bare);
    write_params(out, &item.params);
}

/// The serialisation of an inner list with its parameters (RFC 8941 §4.1.1.1).
pub(crate) fn inner_list_to_string(items: &[Item], params: &Params) -> String {
    let mut out = String::from("(");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_item(&mut out, item);
    }
    out.push(')');
    write_params(&mut out, params);
    out
}

/// The serialisation of a dictionary (RFC 8941 §4.1.2): a true boolean member is the bare key.
pub(crate) fn dictionary_to_string(dict: &Dictionary) -> String {
    let mut out = String::new();
    for (i, (key, member)) in dict.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(key);
        match member {
            Member::Item(item) if item.bare == BareItem::Boolean(true) => {
                write_params(&mut out, &item.params);
            }
            Member::Item(item) => {
                out.push('=');
                write_item(&mut out, item);
            }
            Member::InnerList(items, params) => {
                out.push('=');
                out.push_str(&inner_list_to_string(items, params));
            }
        }
    }
    out
}
