#!/usr/bin/env python3
"""An independent RFC 9421 check of docs/examples/captured-exchange.json.

Written from docs/PROTOCOL.md only (no Enlace code): rebuilds both signature bases from the
captured headers and verifies the Ed25519 signatures with the `cryptography` package, taking
each key from the signer's certificate in the bundle. Prints the bases it verified.
Usage: python3 docs/examples/verify_captured.py [bundle.json]
"""
import base64
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def params_of(signature_input):
    label, rest = signature_input.split("=", 1)
    return label, rest  # the inner list and its parameters, verbatim


def components_of(inner):
    names = inner[1 : inner.index(")")].split(" ")
    return [(n.split(";")[0].strip('"'), n.endswith(";req")) for n in names]


def base(inner, message, request):
    lines = []
    for name, req in components_of(inner):
        source = request if req else message
        value = source[name]
        lines.append(f'"{name}"{";req" if req else ""}: {value}')
    lines.append(f'"@signature-params": {inner}')
    return "\n".join(lines)


def verify(bundle, record, message, request=None):
    label, inner = params_of(record["signature_input"])
    keyid = inner.split('keyid="')[1].split('"')[0]
    cert = x509.load_pem_x509_certificate(bundle["signing_certificates"][keyid].encode())
    key = cert.public_key()
    assert isinstance(key, Ed25519PublicKey), "an Enlace signing key is Ed25519"
    sig_label, sig = record["signature"].split("=", 1)
    assert sig_label == label
    signature = base64.b64decode(sig.strip(":"))
    text = base(inner, message, request)
    key.verify(signature, text.encode())  # raises InvalidSignature
    return keyid, text


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/examples/captured-exchange.json"
    bundle = json.load(open(path))
    entries = [e["record"] for e in bundle["evidence"]["entries"]]
    req = next(r for r in entries if r["kind"] == "request-out")
    resp = next(r for r in entries if r["kind"] == "response-in")
    path_, _, query = req["target"].partition("?")
    request = dict(req["headers"])
    request.update({"@method": req["method"], "@path": path_, "@query": "?" + query, "content-digest": req["request_digest"]})
    keyid, text = verify(bundle, req, request)
    print(f"request signed by {keyid} verifies; signature base:\n{text}\n")
    response = dict(resp["headers"])
    response.update({"@status": str(resp["status"]), "content-digest": resp["response_digest"]})
    keyid, text = verify(bundle, resp, response, request)
    print(f"response signed by {keyid} verifies; signature base:\n{text}")


if __name__ == "__main__":
    main()
