//! The request check of a [`ListenerStream`](crate::ListenerStream): it refuses what
//! hyper's HTTP/1 parser lets through, a bare `\n` line end (RFC 9112 §2.2 lets a server take
//! one; Enlace does not) and a `#fragment` in the request target (hyper drops it silently; a
//! request target never has one, RFC 9112 §3.2).
//!
//! It follows the message framing (the head, then a `Content-Length` body or `chunked` chunks
//! and trailers) so that every request of a kept-alive or pipelined connection is checked, and
//! hands hyper a request head only once the whole head has been checked: so a refused request
//! never reaches hyper, which sees the end of the stream instead, finishes the responses it
//! owes, and shuts the stream down — and then the stream writes its `400` problem and closes.
//! An HTTP/2 connection (its preface first) passes through unchanged: HTTP/2 has its own
//! framing. Memory is bounded: a head over [`MAX_HEAD_BYTES`] is refused (`431`), and body
//! bytes pass in reads of at most [`READ_CHUNK`]. The scan is linear: each byte is looked at
//! once, and a head once more when it is complete.

use enlace_core::problem::{Problem, ProblemKind};

/// The largest request head (request line and header fields) accepted, bytes; also the
/// largest trailer section.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most read from the client at once.
pub const READ_CHUNK: usize = 16 * 1024;
/// The largest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Before a request line: empty lines (CRLF) are skipped (RFC 9112 §2.2).
    Start,
    StartLf,
    /// In a head (the caller keeps its bytes from where it began).
    Head,
    Body(u64),
    ChunkSize {
        size: u64,
        digits: u32,
        ext: bool,
        len: usize,
    },
    ChunkSizeLf {
        size: u64,
    },
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    /// Trailer lines (`len` bytes so far); `empty` while the current line has no byte but
    /// its CR.
    Trailer {
        empty: bool,
        cr: bool,
        len: usize,
    },
    /// An HTTP/2 connection: not ours to check.
    Http2,
}

/// A refusal: why, as the problem to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal(pub Problem);

/// Follows one connection's request bytes: `feed` scans bytes and says how many of them may
/// go to the HTTP server now (the rest are a head not yet complete).
#[derive(Debug)]
pub(crate) struct Scanner {
    pub(crate) state: State,
    /// How many bytes of the connection matched the HTTP/2 preface, while they all do.
    preface: Option<usize>,
}

impl Scanner {
    pub(crate) fn new() -> Scanner {
        Scanner {
            state: State::Start,
            preface: Some(0),
        }
    }

    /// Whether `new` completes the HTTP/2 preface (every byte so far matched it).
    fn is_http2(&mut self, new: &[u8]) -> bool {
        let Some(seen) = self.preface else {
            return false;
        };
        let n = new.len().min(H2_PREFACE.len() - seen);
        if new[..n] != H2_PREFACE[seen..seen + n] {
            self.preface = None;
            return false;
        }
        self.preface = Some(seen + n);
        seen + n == H2_PREFACE.len()
    }
}

fn bad(detail: &str) -> Refusal {
    Refusal(Problem::new(ProblemKind::InvalidRequest, detail))
}

fn bare_lf() -> Refusal {
    bad("the request has a line ending in a bare LF; HTTP/1.1 lines end with CRLF (RFC 9112 §2.2)")
}

/// The framing a checked head announces.
fn check_head(head: &[u8]) -> Result<State, Refusal> {
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.splitn(3, |b| *b == b' ');
    let _method = parts.next();
    if parts.next().is_some_and(|target| target.contains(&b'#')) {
        return Err(bad(
            "the request target has a #fragment; a request target never carries one (RFC 9112 §3.2)",
        ));
    }
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            for v in value.split(|b| *b == b',') {
                let v = v.trim_ascii();
                let n = std::str::from_utf8(v)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| bad("Content-Length is not a number"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("Content-Length is given twice with different values"));
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    match (chunked, length) {
        (Some(_), Some(_)) => Err(bad(
            "the request has both Transfer-Encoding and Content-Length; send one",
        )),
        (Some(false), None) => Err(bad(
            "the request's Transfer-Encoding does not end with chunked",
        )),
        (Some(true), None) => Ok(State::ChunkSize {
            size: 0,
            digits: 0,
            ext: false,
            len: 0,
        }),
        (None, Some(n)) if n > 0 => Ok(State::Body(n)),
        (None, _) => Ok(State::Start),
    }
}

impl Scanner {
    /// Scans `buf[from..]`, where `buf[head_from..from]` is a head already begun (the caller
    /// keeps it). Returns how far bytes may be released (everything before the first byte of
    /// an incomplete head) or the refusal.
    pub(crate) fn feed(
        &mut self,
        buf: &[u8],
        mut head_from: usize,
        from: usize,
    ) -> Result<usize, (usize, Refusal)> {
        if self.state == State::Http2 || self.is_http2(&buf[from..]) {
            self.state = State::Http2;
            return Ok(buf.len());
        }
        let mut released = if self.state == State::Head {
            head_from
        } else {
            from
        };
        let mut i = from;
        while i < buf.len() {
            let b = buf[i];
            let at = released;
            let refuse = move |r: Refusal| -> Result<usize, (usize, Refusal)> { Err((at, r)) };
            match self.state {
                State::Http2 => return Ok(buf.len()),
                State::Start => match b {
                    b'\r' => self.state = State::StartLf,
                    b'\n' => return refuse(bare_lf()),
                    _ => {
                        self.state = State::Head;
                        head_from = i;
                    }
                },
                State::StartLf => {
                    if b != b'\n' {
                        return refuse(bad("a CR not followed by LF before the request line"));
                    }
                    self.state = State::Start;
                }
                State::Head => {
                    // The rest of the head up to its end, in one search.
                    let Some(lf) = buf[i..].iter().position(|c| *c == b'\n') else {
                        i = buf.len();
                        if i - head_from > MAX_HEAD_BYTES {
                            return refuse(too_large());
                        }
                        released = head_from;
                        break;
                    };
                    let lf = i + lf;
                    if lf == head_from || buf[lf - 1] != b'\r' {
                        return refuse(bare_lf());
                    }
                    if lf - head_from > MAX_HEAD_BYTES {
                        return refuse(too_large());
                    }
                    // An empty line (`\r\n` right after the previous `\n`) ends the head.
                    if lf >= head_from + 2 && buf[lf - 2] == b'\n' {
                        self.state = match check_head(&buf[head_from..=lf]) {
                            Ok(next) => next,
                            Err(r) => return refuse(r),
                        };
                    }
                    i = lf;
                }
                State::Body(n) => {
                    let take = (n as usize).min(buf.len() - i);
                    let rest = n - take as u64;
                    self.state = if rest == 0 {
                        State::Start
                    } else {
                        State::Body(rest)
                    };
                    i += take;
                    released = i;
                    continue;
                }
                State::ChunkSize {
                    size,
                    digits,
                    ext,
                    len,
                } => {
                    if len >= MAX_CHUNK_LINE {
                        return refuse(bad("a chunk-size line is too long"));
                    }
                    let len = len + 1;
                    self.state = match b {
                        b'\r' if digits > 0 => State::ChunkSizeLf { size },
                        b'\n' => return refuse(bare_lf()),
                        b'\r' => return refuse(bad("a chunk without a size")),
                        _ if ext => State::ChunkSize {
                            size,
                            digits,
                            ext,
                            len,
                        },
                        b';' | b' ' | b'\t' if digits > 0 => State::ChunkSize {
                            size,
                            digits,
                            ext: true,
                            len,
                        },
                        _ => {
                            let d = (b as char)
                                .to_digit(16)
                                .ok_or_else(|| bad("a chunk size is not hexadecimal"));
                            let Ok(d) = d else {
                                return refuse(bad("a chunk size is not hexadecimal"));
                            };
                            if digits >= 15 {
                                return refuse(bad("a chunk size is too large"));
                            }
                            State::ChunkSize {
                                size: size * 16 + u64::from(d),
                                digits: digits + 1,
                                ext,
                                len,
                            }
                        }
                    };
                }
                State::ChunkSizeLf { size } => {
                    if b != b'\n' {
                        return refuse(bad("a CR not followed by LF after a chunk size"));
                    }
                    self.state = if size == 0 {
                        State::Trailer {
                            empty: true,
                            cr: false,
                            len: 0,
                        }
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(n) => {
                    let take = (n as usize).min(buf.len() - i);
                    let rest = n - take as u64;
                    self.state = if rest == 0 {
                        State::ChunkDataCr
                    } else {
                        State::ChunkData(rest)
                    };
                    i += take;
                    released = i;
                    continue;
                }
                State::ChunkDataCr => {
                    if b != b'\r' {
                        return refuse(bad("chunk data longer than its size"));
                    }
                    self.state = State::ChunkDataLf;
                }
                State::ChunkDataLf => {
                    if b != b'\n' {
                        return refuse(bad("a CR not followed by LF after chunk data"));
                    }
                    self.state = State::ChunkSize {
                        size: 0,
                        digits: 0,
                        ext: false,
                        len: 0,
                    };
                }
                State::Trailer { empty, cr, len } => {
                    if len >= MAX_HEAD_BYTES {
                        return refuse(too_large());
                    }
                    let len = len + 1;
                    self.state = match b {
                        b'\n' if !cr => return refuse(bare_lf()),
                        b'\n' if empty => State::Start,
                        b'\n' => State::Trailer {
                            empty: true,
                            cr: false,
                            len,
                        },
                        b'\r' => State::Trailer {
                            empty,
                            cr: true,
                            len,
                        },
                        _ if cr => return refuse(bad("a CR not followed by LF in the trailers")),
                        _ => State::Trailer {
                            empty: false,
                            cr: false,
                            len,
                        },
                    };
                }
            }
            i += 1;
            if self.state != State::Head {
                released = i;
            }
        }
        Ok(released)
    }
}

fn too_large() -> Refusal {
    Refusal(
        Problem::new(
            ProblemKind::HeadersTooLarge,
            format!("the request head is larger than {MAX_HEAD_BYTES} bytes"),
        )
        .with("limit", MAX_HEAD_BYTES),
    )
}

/// The bytes of an HTTP/1.1 response carrying `refusal`'s problem, closing the connection.
pub(crate) fn response_bytes(refusal: &Refusal) -> Vec<u8> {
    let p = &refusal.0;
    let body = p.to_json().to_string();
    let status = p.kind.status();
    let reason = match status {
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\nenlace-error: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        p.culprit().as_str(),
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` as successive reads; returns what reached the server and the refusal.
    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Option<Refusal>) {
        let mut scanner = Scanner::new();
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        for chunk in chunks {
            let from = buf.len();
            buf.extend_from_slice(chunk);
            match scanner.feed(&buf, 0, from) {
                Ok(released) => out.extend(buf.drain(..released)),
                Err((released, refusal)) => {
                    out.extend_from_slice(&buf[..released]);
                    return (out, Some(refusal));
                }
            }
        }
        (out, None)
    }

    /// The same outcome whole, split in two at every position, and byte by byte.
    #[track_caller]
    fn check(input: &[u8], released: &[u8], refused: Option<&str>) {
        let mut splits = vec![run(&[input])];
        for at in 0..=input.len() {
            splits.push(run(&[&input[..at], &input[at..]]));
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        splits.push(run(&bytes));
        for (n, (out, refusal)) in splits.iter().enumerate() {
            assert_eq!(
                String::from_utf8_lossy(out),
                String::from_utf8_lossy(released),
                "split {n}"
            );
            match (refused, refusal) {
                (None, None) => {}
                (Some(want), Some(r)) => assert!(r.0.detail.contains(want), "split {n}: {:?}", r),
                _ => panic!("split {n}: expected {refused:?}, got {refusal:?}"),
            }
        }
    }

    const GET: &[u8] = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n";
    const POST: &[u8] = b"POST /b HTTP/1.1\r\ncontent-length: 7\r\n\r\na\nb#\r\nc";
    const CHUNKED: &[u8] = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
        4;x=y\r\n\n#\n\r\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n";

    #[test]
    fn well_formed_pipelined_requests_pass_whole_at_any_split() {
        let mut all = b"\r\n".to_vec();
        for r in [GET, POST, CHUNKED, GET] {
            all.extend_from_slice(r);
        }
        check(&all, &all, None);
    }

    #[test]
    fn a_bare_lf_anywhere_in_a_head_is_refused_before_the_head_reaches_the_server() {
        for bad in [
            &b"GET /x HTTP/1.1\nHost: x\r\n\r\n"[..],
            b"GET /x HTTP/1.1\r\nHost: x\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: x\r\n\n",
            b"\nGET /x HTTP/1.1\r\n\r\n",
        ] {
            let input = [GET, bad].concat();
            check(&input, GET, Some("bare LF"));
        }
        // In chunked framing and trailers too.
        let head = b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        for tail in [&b"4\n"[..], b"4\r\nabcd\r\n0\r\nX-T: 1\n\r\n", b"0\r\n\n"] {
            let input = [GET, head, tail].concat();
            let (out, refusal) = run(&[&input]);
            assert!(refusal.unwrap().0.detail.contains("bare LF"));
            assert!(out.starts_with(&[GET, head].concat()));
        }
    }

    #[test]
    fn a_fragment_in_the_request_target_is_refused_but_not_in_a_body_or_header() {
        let input = [GET, b"GET /persons/1#x HTTP/1.1\r\n\r\n"].concat();
        check(&input, GET, Some("#fragment"));
        let fine = b"GET /a HTTP/1.1\r\nX-Note: #1\r\n\r\n";
        check(fine, fine, None);
    }

    #[test]
    fn framing_the_server_would_read_otherwise_is_refused() {
        for (bad, why) in [
            (
                &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                "both",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "twice",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                "not a number",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "chunked",
            ),
        ] {
            check(bad, b"", Some(why));
        }
        let long = [
            b"GET / HTTP/1.1\r\nX: ".as_slice(),
            &vec![b'a'; MAX_HEAD_BYTES],
        ]
        .concat();
        let (out, refusal) = run(&[&long]);
        assert!(out.is_empty());
        assert_eq!(refusal.unwrap().0.kind, ProblemKind::HeadersTooLarge);
    }

    #[test]
    fn an_http2_connection_passes_unchecked() {
        let input = [H2_PREFACE, b"\x00\x00\n\x04#\n\n"].concat();
        check(&input, &input, None);
        // Only at the start of a connection.
        let later = [GET, H2_PREFACE, b"\n"].concat();
        let (_, refusal) = run(&[&later]);
        assert!(refusal.is_some());
    }

    #[test]
    fn a_refusal_is_a_problem_response_that_closes() {
        let bytes = response_bytes(&bare_lf());
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("content-type: application/problem+json\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(text.contains("urn:enlace:problem:invalid-request"));
    }
}
