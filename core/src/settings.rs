//! `${NAME}` and `${NAME:-default}` expansion in configuration files, done before parsing.

/// Expands `${NAME}` and `${NAME:-default}` using `lookup`. An unset variable without a
/// default is an error naming it; `$$` stands for a literal `$`.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let Some(inner) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = inner
            .find('}')
            .ok_or_else(|| "unterminated ${ in configuration".to_string())?;
        let expr = &inner[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!("`${{{expr}}}`: not a variable name"));
        }
        match (lookup(name), default) {
            (Some(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (Some(v), None) => out.push_str(&v),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set and has no default"
                ));
            }
        }
        rest = &inner[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PORT").then(|| "9000".to_string())
    }

    #[test]
    fn expands_set_default_and_literal() {
        assert_eq!(
            expand_env("a=${PORT} b=${HOST:-127.0.0.1} c=$$x d=$y", env).unwrap(),
            "a=9000 b=127.0.0.1 c=$x d=$y"
        );
    }

    #[test]
    fn unset_without_default_names_the_variable() {
        let e = expand_env("x=${SECRET}", env).unwrap_err();
        assert!(e.contains("SECRET"));
        assert!(expand_env("x=${", env).is_err());
        assert!(expand_env("x=${A B}", env).is_err());
    }
}
