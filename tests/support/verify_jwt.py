#!/usr/bin/env python3
"""Verifies a compact JWS against a JWK Set with jwcrypto, an independent JOSE library, for the
integration tests: sessiond's own code never checks the tokens it is tested with.

Reads {"jwks": <JWK Set>, "token": <compact JWS>} on stdin; writes {"header": ..., "claims": ...}
when the signature verifies with the key its `kid` names, and exits non-zero otherwise.
"""
import json
import sys

from jwcrypto import jwk, jws


def main() -> None:
    req = json.load(sys.stdin)
    keys = jwk.JWKSet.from_json(json.dumps(req["jwks"]))
    token = jws.JWS()
    token.allowed_algs = ["RS256", "EdDSA"]
    token.deserialize(req["token"])
    header = token.jose_header
    key = keys.get_key(header["kid"])
    if key is None:
        raise SystemExit(f"no key {header['kid']!r} in the JWK Set")
    token.verify(key)
    json.dump({"header": header, "claims": json.loads(token.payload)}, sys.stdout)


if __name__ == "__main__":
    main()
