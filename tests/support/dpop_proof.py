#!/usr/bin/env python3
"""DPoP proofs (RFC 9449) made with jwcrypto, an independent JOSE library, for the integration
tests: sessiond's own code never builds the proofs it is tested with.

Reads one JSON request on stdin, writes one JSON answer on stdout:
  {"op": "key", "alg": "EdDSA" | "ES256"}
      -> {"jwk": <private JWK>, "jkt": <RFC 7638 SHA-256 thumbprint>}
  {"op": "proof", "jwk": <private JWK>, "alg": ..., "htm": ..., "htu": ..., "iat": <int>,
   "jti": <str, optional>, "ath_of": <access token, optional>, "nonce": <optional>,
   "typ": <optional, default dpop+jwt>, "embed_private": <bool, optional>}
      -> {"proof": <compact JWS>}
"""
import base64
import hashlib
import json
import sys
import uuid

from jwcrypto import jwk, jws


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> None:
    req = json.load(sys.stdin)
    if req["op"] == "key":
        if req["alg"] == "EdDSA":
            key = jwk.JWK.generate(kty="OKP", crv="Ed25519")
        else:
            key = jwk.JWK.generate(kty="EC", crv="P-256")
        out = {"jwk": json.loads(key.export_private()), "jkt": key.thumbprint()}
    elif req["op"] == "proof":
        key = jwk.JWK(**req["jwk"])
        public = json.loads(key.export_private() if req.get("embed_private") else key.export_public())
        header = {"typ": req.get("typ", "dpop+jwt"), "alg": req["alg"], "jwk": public}
        claims = {
            "jti": req.get("jti") or str(uuid.uuid4()),
            "htm": req["htm"],
            "htu": req["htu"],
            "iat": req["iat"],
        }
        if req.get("ath_of"):
            claims["ath"] = b64url(hashlib.sha256(req["ath_of"].encode()).digest())
        if req.get("nonce"):
            claims["nonce"] = req["nonce"]
        token = jws.JWS(json.dumps(claims).encode())
        token.add_signature(key, alg=req["alg"], protected=json.dumps(header))
        out = {"proof": token.serialize(compact=True)}
    else:
        raise SystemExit(f"unknown op {req['op']!r}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
