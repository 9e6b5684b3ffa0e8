//! DPoP keys and proofs from jwcrypto (Python), an independent JOSE implementation: the tests
//! never sign a proof with sessiond's own code. A missing jwcrypto is installed with pip
//! (`helpers::python3`); without Python the test fails.

use serde_json::{Value, json};
use std::io::Write;
use std::process::Stdio;

fn jwcrypto(request: Value) -> Value {
    let mut child = crate::helpers::python3(&["jwcrypto"])
        .arg("tests/support/dpop_proof.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (the DPoP tests need it, with jwcrypto)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tests/support/dpop_proof.py failed (is jwcrypto installed? pip install jwcrypto): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A client's DPoP key pair, held by jwcrypto.
#[derive(Debug, Clone)]
pub struct DpopKey {
    pub alg: &'static str,
    jwk: Value,
    /// Its RFC 7638 thumbprint, as jwcrypto computes it.
    pub jkt: String,
}

/// What a proof says; the defaults are a valid proof for `htm` and `htu` at `iat`.
#[derive(Debug, Clone)]
pub struct Claims {
    pub htm: String,
    pub htu: String,
    pub iat: i64,
    pub jti: Option<String>,
    pub ath_of: Option<String>,
    pub nonce: Option<String>,
    pub typ: Option<String>,
    pub embed_private: bool,
}

impl Claims {
    pub fn new(htm: &str, htu: &str, iat: i64) -> Claims {
        Claims {
            htm: htm.into(),
            htu: htu.into(),
            iat,
            jti: None,
            ath_of: None,
            nonce: None,
            typ: None,
            embed_private: false,
        }
    }
}

impl DpopKey {
    pub fn ed25519() -> DpopKey {
        Self::generate("EdDSA")
    }

    pub fn p256() -> DpopKey {
        Self::generate("ES256")
    }

    fn generate(alg: &'static str) -> DpopKey {
        let v = jwcrypto(json!({ "op": "key", "alg": alg }));
        DpopKey {
            alg,
            jwk: v["jwk"].clone(),
            jkt: v["jkt"].as_str().unwrap().to_owned(),
        }
    }

    pub fn sign(&self, c: &Claims) -> String {
        let mut req = json!({
            "op": "proof", "jwk": self.jwk, "alg": self.alg,
            "htm": c.htm, "htu": c.htu, "iat": c.iat,
            "embed_private": c.embed_private,
        });
        for (k, v) in [
            ("jti", &c.jti),
            ("ath_of", &c.ath_of),
            ("nonce", &c.nonce),
            ("typ", &c.typ),
        ] {
            if let Some(v) = v {
                req[k] = json!(v);
            }
        }
        jwcrypto(req)["proof"].as_str().unwrap().to_owned()
    }

    /// A valid proof for `htm` `htu` at `iat`.
    pub fn proof(&self, htm: &str, htu: &str, iat: i64) -> String {
        self.sign(&Claims::new(htm, htu, iat))
    }
}
