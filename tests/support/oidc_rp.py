#!/usr/bin/env python3
"""An OpenID Connect relying party built from Authlib, an unmodified third-party library, for the
integration tests: it runs the whole authorization code flow with PKCE against a real sessiond,
playing the browser with `requests` (sessiond's own code never builds these requests).

Usage: oidc_rp.py BASE_URL CLIENT_ID USERNAME PASSWORD REDIRECT_URI POST_LOGOUT_URI
Prints one JSON object with what it saw; exits non-zero (with the reason) on any failure.
"""
import json
import sys
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlparse

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
import warnings

warnings.filterwarnings("ignore", module="authlib")
from authlib.jose import JsonWebKey, jwt  # noqa: E402
from authlib.oidc.core import CodeIDToken


class Form(HTMLParser):
    """The sign-in form's action and fields, as a browser would submit them."""

    def __init__(self):
        super().__init__()
        self.fields, self.action = {}, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.action = a.get("action")
        if tag == "input" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")


def check(cond, why):
    if not cond:
        print(why, file=sys.stderr)
        sys.exit(1)


def main():
    base, client_id, username, password, redirect_uri, post_logout = sys.argv[1:7]
    # Discovery: the OpenID Provider document (OIDC Discovery 1.0), every endpoint from it.
    meta = requests.get(base + "/.well-known/openid-configuration")
    check(meta.status_code == 200, f"discovery answered {meta.status_code}")
    meta = meta.json()
    issuer = meta["issuer"]
    authorize = meta["authorization_endpoint"]
    userinfo = meta["userinfo_endpoint"]
    end_session = meta["end_session_endpoint"]
    check("S256" in meta["code_challenge_methods_supported"], "S256 is not advertised")

    client = OAuth2Session(
        client_id,
        scope="openid profile offline_access",
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier, nonce = generate_token(48), generate_token(20)
    url, state = client.create_authorization_url(authorize, nonce=nonce, code_verifier=verifier)

    # The browser: the sign-in page, then the form with the password. The CSRF cookie is
    # `Secure`, which requests' jar keeps from plain http; a browser on localhost sends it.
    browser = requests.Session()
    page = browser.get(url, allow_redirects=False)
    check(page.status_code == 200, f"sign-in page: {page.status_code} {page.text[:200]}")
    form = Form()
    form.feed(page.text)
    check("username" in form.fields and "password" in form.fields, "no username/password fields")
    form.fields.update(username=username, password=password)
    csrf = page.cookies.get("__Host-sessiond_csrf")
    answer = browser.post(
        base + form.action,
        data=form.fields,
        headers={"Cookie": f"__Host-sessiond_csrf={csrf}"},
        allow_redirects=False,
    )
    check(answer.status_code in (302, 303), f"sign-in: {answer.status_code} {answer.text[:300]}")
    callback = answer.headers["Location"]
    check(callback.startswith(redirect_uri), f"callback {callback}")
    returned = parse_qs(urlparse(callback).query)
    check(returned["state"] == [state], "state not echoed unchanged")
    check(returned.get("iss") == [issuer], f"iss {returned.get('iss')} != {issuer}")

    token = client.fetch_token(
        meta["token_endpoint"], authorization_response=callback, code_verifier=verifier
    )
    jwks = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"]).json())
    claims = jwt.decode(
        token["id_token"],
        jwks,
        claims_cls=CodeIDToken,
        claims_options={"iss": {"essential": True, "value": issuer}},
        claims_params={
            "nonce": nonce,
            "client_id": client_id,
            "access_token": token["access_token"],
        },
    )
    claims.validate(leeway=120)
    alg = json.loads(
        __import__("base64").urlsafe_b64decode(token["id_token"].split(".")[0] + "==")
    )["alg"]

    info = client.get(userinfo).json()
    check(info["sub"] == claims["sub"], f"userinfo sub {info}")

    refreshed = client.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
    check(refreshed["refresh_token"] != token["refresh_token"], "refresh did not rotate")
    revoked = client.revoke_token(meta["revocation_endpoint"], token=refreshed["refresh_token"])
    check(revoked.status_code == 200, f"revocation {revoked.status_code}")
    again = requests.post(
        meta["token_endpoint"],
        data={
            "grant_type": "refresh_token",
            "refresh_token": refreshed["refresh_token"],
            "client_id": client_id,
        },
    )
    check(again.status_code == 400, f"a revoked refresh token still works: {again.status_code}")

    logout = requests.get(
        end_session,
        params={
            "id_token_hint": token["id_token"],
            "post_logout_redirect_uri": post_logout,
            "state": "bye-1",
        },
        allow_redirects=False,
    )
    check(logout.status_code == 302, f"logout {logout.status_code} {logout.text[:200]}")
    check(logout.headers["Location"] == post_logout + "?state=bye-1", logout.headers["Location"])
    print(
        json.dumps(
            {
                "sub": claims["sub"],
                "sid": claims["sid"],
                "alg": alg,
                "preferred_username": claims.get("preferred_username"),
                "userinfo": info,
            }
        )
    )


if __name__ == "__main__":
    main()
