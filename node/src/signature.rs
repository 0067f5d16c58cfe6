//! RFC 9421 HTTP Message Signatures (Ed25519) and RFC 9530 `Content-Digest` for exchanges.
