//! `jwt` mode: bearer tokens from the centre's identity provider (Keycloak, Azure AD, Okta),
//! checked with the public keys of its JWKS file.
//!
//! Only asymmetric signatures are accepted (RS256, ES256 on P-256, EdDSA on Ed25519), and a
//! token's `alg` must be the one its key is for: a token cannot pick a weaker algorithm, or turn
//! a public key into an HMAC secret. `exp`, `iss` and `aud` are required; `exp` and `nbf` are
//! checked with the configured leeway.

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::path::Path;

/// One usable key of the set.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys of a JWKS file, ready to check signatures.
pub struct JwtKeys {
    keys: Vec<Key>,
}

/// What a token must say besides being signed by one of the keys.
#[derive(Debug, Clone)]
pub struct JwtRules {
    pub issuer: String,
    pub audience: String,
    pub agent_claim: String,
    pub leeway_ms: u64,
}

impl JwtKeys {
    /// Reads the JWKS file. Keys for encryption, symmetric keys and curves other than P-256 and
    /// Ed25519 are left out; a file with no usable key is an error.
    pub fn load(path: &Path) -> Result<JwtKeys, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the JWKS file {shown}: {e}"))?;
        JwtKeys::parse(&text).map_err(|e| format!("invalid JWKS file {shown}: {e}"))
    }

    pub fn parse(text: &str) -> Result<JwtKeys, String> {
        let set: JwkSet = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if let Some(key) = usable(jwk)? {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err("no signing key for RS256, ES256 or EdDSA in it".into());
        }
        Ok(JwtKeys { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The agent id the token vouches for, or `None` for any token that does not check out. The
    /// reason stays here: a desktop is only ever told `auth_failed`.
    pub fn agent_of(&self, token: &str, rules: &JwtRules) -> Option<String> {
        let header = decode_header(token).ok()?;
        let key = self.keys.iter().find(|k| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        })?;
        let mut validation = Validation::new(key.alg);
        validation.algorithms = vec![key.alg];
        validation.leeway = rules.leeway_ms.div_ceil(1000);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[rules.issuer.as_str()]);
        validation.set_audience(&[rules.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = decode::<Map<String, Value>>(token, &key.key, &validation)
            .ok()?
            .claims;
        match claims.get(&rules.agent_claim)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }
}

/// The key and algorithm of one JWK, or `None` for a key Baton does not take.
fn usable(jwk: &Jwk) -> Result<Option<Key>, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return Ok(None),
    };
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        // A key declared for another algorithm (RS512, PS256, RSA-OAEP...) is not used.
        Some(_) => return Ok(None),
    };
    if declared.is_some_and(|d| d != alg) {
        return Ok(None);
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| {
        let kid = jwk.common.key_id.as_deref().unwrap_or("(no kid)");
        format!("key {kid}: {e}")
    })?;
    Ok(Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    }))
}
