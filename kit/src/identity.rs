//! Credentials made at run time for the identity and TLS tests: a certificate authority with
//! server and client certificates (rcgen), an identity provider's signing keys with their JWKS,
//! and tokens signed with them. Nothing here is committed: every test run makes its own.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test certificate authority that issues server and client certificates into `dir`.
pub struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate (PEM): what clients trust, and `client_ca` on the server.
    pub ca_file: PathBuf,
}

impl Pki {
    /// A new CA named `name`, its certificate written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        Pki {
            dir: dir.to_owned(),
            ca,
            ca_key,
            ca_file,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1, written as `<file>.pem` and
    /// `<file>.key`.
    pub fn server(&self, file: &str) -> CertFiles {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("an address")));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("baton {file}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, file)
    }

    /// A client certificate for `name`, written as `<name>.pem` and `<name>.key`.
    pub fn client(&self, name: &str) -> CertFiles {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, name)
    }

    fn issue(&self, params: CertificateParams, file: &str) -> CertFiles {
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("certificate");
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}

/// One signing key of a test identity provider.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

/// A test identity provider: signing keys (ES256 and EdDSA), their JWKS, and tokens.
pub struct Idp {
    pub issuer: String,
    pub audience: String,
    keys: Vec<SigningKey>,
}

impl Idp {
    /// An identity provider with one ES256 key (`es-1`) and one EdDSA key (`ed-1`).
    pub fn new(issuer: &str, audience: &str) -> Idp {
        let mut idp = Idp {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            keys: Vec::new(),
        };
        idp.add_es256("es-1");
        idp.add_eddsa("ed-1");
        idp
    }

    /// Adds an ES256 key (P-256) named `kid`.
    pub fn add_es256(&mut self, kid: &str) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let point = key.public_key_raw();
        let (x, y) = (&point[1..33], &point[33..65]);
        self.keys.push(SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            }),
        });
    }

    /// Adds an EdDSA key (Ed25519) named `kid`.
    pub fn add_eddsa(&mut self, kid: &str) {
        let key = KeyPair::generate_for(&PKCS_ED25519).expect("Ed25519 key");
        self.keys.push(SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&key.serialize_der()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(key.public_key_raw()),
            }),
        });
    }

    /// The JWKS document of the keys whose kid is in `kids` (all keys when empty).
    pub fn jwks(&self, kids: &[&str]) -> String {
        let keys: Vec<&Value> = self
            .keys
            .iter()
            .filter(|k| kids.is_empty() || kids.contains(&k.kid.as_str()))
            .map(|k| &k.jwk)
            .collect();
        json!({ "keys": keys }).to_string()
    }

    /// Writes the JWKS of `kids` (all when empty) to `path`.
    pub fn write_jwks(&self, path: &Path, kids: &[&str]) {
        std::fs::write(path, self.jwks(kids)).expect("write JWKS");
    }

    /// Claims a valid token for `agent` carries: issuer, audience, `sub`, and a lifetime of
    /// five minutes from now.
    pub fn claims(&self, agent: &str) -> Value {
        let now = now_s();
        json!({
            "iss": self.issuer, "aud": self.audience, "sub": agent,
            "iat": now, "nbf": now, "exp": now + 300,
        })
    }

    /// `claims` signed with the key `kid`.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .expect("a key of this identity provider");
        let mut header = Header::new(key.alg);
        header.kid = Some(kid.to_owned());
        encode(&header, claims, &key.encoding).expect("signed token")
    }

    /// A valid token for `agent`, signed with the ES256 key.
    pub fn token(&self, agent: &str) -> String {
        self.sign("es-1", &self.claims(agent))
    }
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
