//! Entry points for the fuzz targets in `fuzz/` into the private structured-field parser; not
//! part of this crate's API.

use super::sf;

/// The dictionary `input` parses to, serialised again; `None` when it does not parse.
pub fn reserialise_dictionary(input: &str) -> Option<String> {
    sf::parse_dictionary(input)
        .ok()
        .map(|dict| sf::dictionary_to_string(&dict))
}

/// The item `input` parses to, serialised again; `None` when it does not parse.
pub fn reserialise_item(input: &str) -> Option<String> {
    let item = sf::parse_item(input).ok()?;
    let mut out = String::new();
    sf::write_item(&mut out, &item);
    Some(out)
}
