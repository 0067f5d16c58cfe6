//! A request or response head seen as RFC 9421 components, and the message a signature is
//! over (with, for a response, its request).

use http::{HeaderMap, Method, StatusCode, Uri};

use crate::Component;

/// A request or response head, seen as RFC 9421 components.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    head: Head<'a>,
    headers: &'a HeaderMap,
}

#[derive(Debug, Clone, Copy)]
enum Head<'a> {
    Request { method: &'a Method, uri: &'a Uri },
    Response { status: StatusCode },
}

impl<'a> Message<'a> {
    /// A request: its method, target (origin or absolute form) and headers.
    pub fn request(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        Message {
            head: Head::Request { method, uri },
            headers,
        }
    }

    /// A response: its status and headers.
    pub fn response(status: StatusCode, headers: &'a HeaderMap) -> Self {
        Message {
            head: Head::Response { status },
            headers,
        }
    }

    /// The head of an `http::Request`.
    pub fn of_request<B>(request: &'a http::Request<B>) -> Self {
        Message::request(request.method(), request.uri(), request.headers())
    }

    /// The head of an `http::Response`.
    pub fn of_response<B>(response: &'a http::Response<B>) -> Self {
        Message::response(response.status(), response.headers())
    }

    /// The headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.head, Head::Request { .. })
    }

    fn uri(&self) -> Option<&'a Uri> {
        match self.head {
            Head::Request { uri, .. } => Some(uri),
            Head::Response { .. } => None,
        }
    }

    /// `@method`: the method, as sent (case-sensitive).
    pub fn method(&self) -> Option<&'a str> {
        match self.head {
            Head::Request { method, .. } => Some(method.as_str()),
            Head::Response { .. } => None,
        }
    }

    /// `@scheme`: the scheme, lower case, when the target is in absolute form.
    pub fn scheme(&self) -> Option<String> {
        Some(self.uri()?.scheme_str()?.to_ascii_lowercase())
    }

    /// `@authority`: host and port, lower case, default port removed; from the target if in
    /// absolute form, else from the `Host` header.
    pub fn authority(&self) -> Option<String> {
        let uri = self.uri()?;
        let authority = match uri.authority() {
            Some(a) => a.as_str().to_ascii_lowercase(),
            None => {
                let mut hosts = self.headers.get_all(http::header::HOST).iter();
                let host = hosts.next()?;
                if hosts.next().is_some() {
                    return None;
                }
                host.to_str().ok()?.trim().to_ascii_lowercase()
            }
        };
        let default_port = match self.scheme().as_deref() {
            Some("https") => Some(":443"),
            Some("http") => Some(":80"),
            _ => None,
        };
        match default_port.and_then(|p| authority.strip_suffix(p)) {
            Some(stripped) => Some(stripped.to_string()),
            None => Some(authority),
        }
    }

    /// `@path`: the absolute path, as sent; `/` when empty.
    pub fn path(&self) -> Option<&'a str> {
        let path = self.uri()?.path();
        Some(if path.is_empty() { "/" } else { path })
    }

    /// `@query`: the query with its leading `?`, or `?` alone when there is none.
    pub fn query(&self) -> Option<String> {
        Some(format!("?{}", self.uri()?.query().unwrap_or("")))
    }

    /// `@request-target`: the path and query, as in an origin-form request line.
    pub fn request_target(&self) -> Option<String> {
        let uri = self.uri()?;
        let path = self.path()?;
        Some(match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        })
    }

    /// `@target-uri`: the full target URI; only when the scheme and authority are known.
    pub fn target_uri(&self) -> Option<String> {
        let scheme = self.scheme()?;
        self.uri()?.authority()?;
        let authority = self.authority()?;
        Some(format!("{scheme}://{authority}{}", self.request_target()?))
    }

    /// `@status`: the three-digit status code.
    pub fn status(&self) -> Option<u16> {
        match self.head {
            Head::Response { status } => Some(status.as_u16()),
            Head::Request { .. } => None,
        }
    }

    /// A field's component value (RFC 9421 §2.1): every line's value with surrounding spaces
    /// and tabs removed, joined by `, `. `Ok(None)` when absent; an error for values that are
    /// not visible ASCII, which the signature base cannot carry unambiguously.
    pub fn field(&self, name: &str) -> Result<Option<String>, String> {
        let mut values = self.headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            return Ok(None);
        }
        let mut joined = String::new();
        for (i, value) in values.enumerate() {
            let bytes = value.as_bytes();
            if !bytes
                .iter()
                .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b))
            {
                return Err(format!("header `{name}` has a non-ASCII value"));
            }
            // Visible ASCII, so this is valid UTF-8.
            let text = String::from_utf8_lossy(bytes);
            if i > 0 {
                joined.push_str(", ");
            }
            joined.push_str(text.trim_matches([' ', '\t']));
        }
        Ok(Some(joined))
    }
}

/// The message being signed or verified and, for a response, the request it answers (the
/// source of `;req` components).
#[derive(Debug, Clone, Copy)]
pub struct MessageContext<'a> {
    pub message: Message<'a>,
    pub request: Option<Message<'a>>,
}

impl<'a> MessageContext<'a> {
    /// A request on its own.
    pub fn request(request: Message<'a>) -> Self {
        MessageContext {
            message: request,
            request: None,
        }
    }

    /// A response to `request`.
    pub fn response(response: Message<'a>, request: Message<'a>) -> Self {
        MessageContext {
            message: response,
            request: Some(request),
        }
    }

    /// The value of one component, or why there is none.
    pub(crate) fn value(&self, c: &Component) -> Result<String, String> {
        let msg = if c.req {
            if self.message.is_request() {
                return Err(format!("{c}: `req` is only meaningful on a response"));
            }
            if c.name == "@status" {
                return Err(format!("{c}: a request has no status"));
            }
            self.request
                .ok_or_else(|| format!("{c}: no request to take it from"))?
        } else {
            self.message
        };
        let value = match &*c.name {
            "@method" => msg.method().map(str::to_string),
            "@target-uri" => msg.target_uri(),
            "@authority" => msg.authority(),
            "@scheme" => msg.scheme(),
            "@request-target" => msg.request_target(),
            "@path" => msg.path().map(str::to_string),
            "@query" => msg.query(),
            "@status" => msg.status().map(|s| s.to_string()),
            field if !field.starts_with('@') => msg.field(field)?,
            other => return Err(format!("`{other}` is not a supported derived component")),
        };
        value.ok_or_else(|| format!("the message has no value for {c}"))
    }
}
