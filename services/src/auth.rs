//! Authentication: a bearer JWT becomes verified [`Claims`], or an [`AuthError`] that says which
//! check failed (and becomes UNAUTHENTICATED).
//!
//! Two kinds of tokens are accepted, and the key is chosen by (`iss`, `kid`), never by anything
//! else in the token:
//!
//! - **Platform tokens**: `iss` is [`AuthConfig::platform_issuer`]. Only platformd's own Ed25519
//!   key ([`SigningKey`], `<data-dir>/signing-key.pem`) and only EdDSA. They always carry a `jti`
//!   (so each one can be revoked) and may embed a tenant and role grants (`platformd token issue`).
//! - **Identity-provider tokens**: `iss` is one of [`AuthConfig::issuers`]. Only the keys of the
//!   configured JWKS file (selected by `kid`) and only the configured algorithms, each further
//!   restricted to what its key can do (an EC P-256 key only ES256, and so on). Symmetric (HMAC)
//!   algorithms and `oct` keys are never accepted. `tenant` and `roles` claims of IdP tokens are
//!   ignored: what a user may do comes from role bindings, not from the IdP's claims.
//!
//! The algorithm is pinned by configuration and by the key, never taken from the token header, so
//! `alg: none` and the HS256-with-a-public-key confusion are refused before any cryptography runs.
//!
//! Verifying a signature costs tens of microseconds, so verified tokens are cached until they
//! expire (key: the SHA-256 of the token, never the token itself; bounded size). The expiry is
//! checked again on every hit with the same leeway, and the revocation set is consulted on every
//! call, cached or not. Reloading the JWKS invalidates every cached token at once.
//!
//! Nothing here logs a token, a key or a claim value, and no error message echoes the token.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// File name of platformd's signing key inside the data directory.
pub const SIGNING_KEY_FILE: &str = "signing-key.pem";
/// Default required `aud`.
pub const DEFAULT_AUDIENCE: &str = "platform-api";
/// Default `iss` of the tokens platformd signs.
pub const DEFAULT_PLATFORM_ISSUER: &str = "platformd";
/// Default clock leeway for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// The largest leeway the configuration may set: leeway is for clock skew, not for extending
/// token lifetimes.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Longer bearer strings are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// How many verified tokens are cached at most.
pub const TOKEN_CACHE_CAPACITY: usize = 100_000;

const MAX_JWKS_BYTES: u64 = 1024 * 1024;
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
const CACHE_SHARDS: usize = 16;
const MIN_RSA_BITS: usize = 2048;
/// The `rsa` crate refuses larger public keys at verification time; refuse them at load time.
const MAX_RSA_BITS: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// What the server accepts. Nothing in a token can widen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Algorithms accepted for identity-provider tokens (e.g. RS256, ES256, EdDSA). HMAC
    /// algorithms are refused. Platform tokens are always and only EdDSA.
    pub algorithms: Vec<Algorithm>,
    /// Accepted `iss` values of identity-provider tokens.
    pub issuers: Vec<String>,
    /// The `aud` every token must contain.
    pub audience: String,
    /// Clock leeway applied to `exp` and `nbf` (at most [`MAX_LEEWAY`]).
    pub leeway: Duration,
    /// The identity provider's JWKS file; keys are selected by `kid`.
    pub jwks_path: Option<PathBuf>,
    /// The `iss` of the tokens platformd signs.
    pub platform_issuer: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithms: Vec::new(),
            issuers: Vec::new(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            leeway: DEFAULT_LEEWAY,
            jwks_path: None,
            platform_issuer: DEFAULT_PLATFORM_ISSUER.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a bearer token was refused. Every variant becomes UNAUTHENTICATED; the message names the
/// check that failed and never contains the token, a claim value or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed bearer token: {0}")]
    Malformed(&'static str),
    #[error("bearer token has expired")]
    Expired,
    #[error("bearer token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("bearer token signature is invalid")]
    BadSignature,
    #[error("bearer token issuer (iss) is missing or not accepted")]
    WrongIssuer,
    #[error("bearer token audience (aud) is missing or does not name this server")]
    WrongAudience,
    #[error("bearer token algorithm (alg) is not allowed for this issuer and key")]
    DisallowedAlgorithm,
    #[error("bearer token signing key is unknown: {0}")]
    UnknownKey(&'static str),
    #[error("bearer token has no expiry (exp)")]
    MissingExp,
    #[error("bearer token has been revoked")]
    Revoked,
}

impl From<AuthError> for Error {
    fn from(err: AuthError) -> Self {
        Error::Unauthenticated {
            message: err.to_string(),
        }
    }
}

/// Failures outside the request path: loading keys, reading the JWKS, bad configuration,
/// issuing a token. Messages name files and reasons, never key material.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("signing key {}: {reason}", path.display())]
    InvalidKeyFile { path: PathBuf, reason: String },
    #[error("JWKS file {}: {reason}", path.display())]
    Jwks { path: PathBuf, reason: String },
    #[error("authentication configuration: {0}")]
    Config(String),
    #[error("cannot issue token: {0}")]
    Issue(String),
}

impl AuthSetupError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl From<AuthSetupError> for Error {
    fn from(err: AuthSetupError) -> Self {
        Error::internal(err.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------------------

/// The claims of a verified token (and of the tokens platformd issues).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The principal.
    pub sub: String,
    pub iss: String,
    /// The audience this server accepted (an IdP token's `aud` list is reduced to it).
    pub aud: String,
    /// Expiry, seconds since the Unix epoch. Always present: tokens without it are refused.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Always set on platform tokens; optional on IdP tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Always set on platform tokens (revocation handle); optional on IdP tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Platform tokens only: the tenant the embedded roles apply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Platform tokens only: role grants embedded at issue time (e.g. `["platform-admin"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// Who signed a verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenSource {
    /// platformd's own key: `tenant` and `roles` are meaningful.
    Platform,
    /// The identity provider (JWKS): `tenant` and `roles` are always empty.
    IdentityProvider,
}

/// A token that passed every check. Cheap to clone.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub claims: Arc<Claims>,
    pub source: TokenSource,
}

// ---------------------------------------------------------------------------------------------
// Platform signing key
// ---------------------------------------------------------------------------------------------

/// platformd's Ed25519 signing key. `Debug` shows only the `kid`.
pub struct SigningKey {
    kid: String,
    public: [u8; 32],
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl SigningKey {
    /// Loads `<data_dir>/signing-key.pem` (PKCS#8 PEM, Ed25519), or creates it with mode 0600 if
    /// it does not exist. Creation is race-free: the key is written to a private temporary file
    /// and hard-linked into place, so a concurrent starter either wins or loads the winner's key,
    /// and nobody ever reads a half-written file.
    pub fn load_or_create(data_dir: &Path) -> Result<SigningKey, AuthSetupError> {
        let path = data_dir.join(SIGNING_KEY_FILE);
        match Self::load(&path) {
            Err(AuthSetupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }

        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| AuthSetupError::io(data_dir, e))?;

        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| AuthSetupError::InvalidKeyFile {
                path: path.clone(),
                reason: format!("cannot encode a new key: {e}"),
            })?;

        let tmp = data_dir.join(format!(
            ".{SIGNING_KEY_FILE}.{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(pem.as_bytes())?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(AuthSetupError::io(&tmp, e));
        }
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Ok(dir) = fs::File::open(data_dir) {
                    let _ = dir.sync_all();
                }
                let key = Self::from_dalek(&key)?;
                tracing::info!(path = %path.display(), kid = %key.kid, "created the platform signing key");
                Ok(key)
            }
            // Someone else created it meanwhile: theirs is complete (it was linked whole).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(&path),
            Err(e) => Err(AuthSetupError::io(&path, e)),
        }
    }

    /// A fresh key that lives only in memory (tests, throwaway servers).
    pub fn generate() -> Result<SigningKey, AuthSetupError> {
        Self::from_dalek(&ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    fn load(path: &Path) -> Result<SigningKey, AuthSetupError> {
        let file = fs::File::open(path).map_err(|e| AuthSetupError::io(path, e))?;
        let meta = file.metadata().map_err(|e| AuthSetupError::io(path, e))?;
        if !meta.is_file() {
            return Err(AuthSetupError::InvalidKeyFile {
                path: path.to_owned(),
                reason: "not a regular file".to_owned(),
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "the platform signing key is readable by other users; chmod 600 it"
            );
        }
        let mut pem = String::new();
        file.take(MAX_KEY_FILE_BYTES)
            .read_to_string(&mut pem)
            .map_err(|e| AuthSetupError::io(path, e))?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| {
            AuthSetupError::InvalidKeyFile {
                path: path.to_owned(),
                reason: format!("not a PKCS#8 PEM Ed25519 private key ({e})"),
            }
        })?;
        Self::from_dalek(&key)
    }

    fn from_dalek(key: &ed25519_dalek::SigningKey) -> Result<SigningKey, AuthSetupError> {
        let public = key.verifying_key().to_bytes();
        let der = key
            .to_pkcs8_der()
            .map_err(|e| AuthSetupError::Config(format!("cannot encode the signing key: {e}")))?;
        Ok(SigningKey {
            kid: kid_for(&public),
            public,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&public),
        })
    }

    /// The key id in the header of every platform token: base64url of the first 12 bytes of the
    /// SHA-256 of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The public key as a JWK (for publishing, e.g. so other services can verify platform
    /// tokens).
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.public),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

fn kid_for(public: &[u8]) -> String {
    let digest = Sha256::digest(public);
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

// ---------------------------------------------------------------------------------------------
// JWKS
// ---------------------------------------------------------------------------------------------

struct JwksKey {
    decoding: DecodingKey,
    /// What this key may verify (by its type, curve and `alg`).
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, JwksKey>,
}

fn load_jwks(path: &Path) -> Result<KeySet, AuthSetupError> {
    let bad = |reason: String| AuthSetupError::Jwks {
        path: path.to_owned(),
        reason,
    };
    let file = fs::File::open(path).map_err(|e| AuthSetupError::io(path, e))?;
    let mut text = String::new();
    file.take(MAX_JWKS_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| AuthSetupError::io(path, e))?;
    if text.len() as u64 > MAX_JWKS_BYTES {
        return Err(bad(format!("larger than {MAX_JWKS_BYTES} bytes")));
    }
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let entries = doc
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| bad("no \"keys\" array".to_owned()))?;

    let mut keys = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let kid = entry.get("kid").and_then(serde_json::Value::as_str);
        let kid_shown = kid.unwrap_or("(none)");
        match parse_jwk(entry) {
            Ok((kid, key)) => {
                if keys.insert(kid.clone(), key).is_some() {
                    return Err(bad(format!("two keys have kid {kid:?}")));
                }
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), index, kid = kid_shown, reason, "skipping a JWKS key");
            }
        }
    }
    if keys.is_empty() {
        return Err(bad("no usable signature keys".to_owned()));
    }
    Ok(KeySet { keys })
}

/// One JWK → (kid, key), or why it cannot be used.
fn parse_jwk(entry: &serde_json::Value) -> Result<(String, JwksKey), &'static str> {
    let jwk: Jwk = serde_json::from_value(entry.clone())
        .map_err(|_| "unsupported key type or malformed key")?;
    let kid = jwk.common.key_id.clone().ok_or("no kid")?;
    if kid.is_empty() {
        return Err("empty kid");
    }
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("not a signature key (use)"),
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.iter().any(|op| matches!(op, KeyOperations::Verify))
    {
        return Err("key_ops does not include verify");
    }

    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(params) => {
            let n = b64url_lenient(&params.n).ok_or("RSA modulus is not base64url")?;
            let e = b64url_lenient(&params.e).ok_or("RSA exponent is not base64url")?;
            let bits = bit_length(&n);
            if bits < MIN_RSA_BITS {
                return Err("RSA key shorter than 2048 bits");
            }
            if bits > MAX_RSA_BITS {
                return Err("RSA key longer than 4096 bits");
            }
            if !(2..=33).contains(&bit_length(&e)) {
                return Err("RSA exponent is invalid");
            }
            AlgorithmFamily::Rsa.algorithms().to_vec()
        }
        AlgorithmParameters::EllipticCurve(params) => {
            let (alg, len) = match params.curve {
                EllipticCurve::P256 => (Algorithm::ES256, 32),
                EllipticCurve::P384 => (Algorithm::ES384, 48),
                _ => return Err("unsupported elliptic curve"),
            };
            let x = b64url_lenient(&params.x).ok_or("EC x is not base64url")?;
            let y = b64url_lenient(&params.y).ok_or("EC y is not base64url")?;
            if x.len() != len || y.len() != len {
                return Err("EC coordinates have the wrong length");
            }
            vec![alg]
        }
        AlgorithmParameters::OctetKeyPair(params) => {
            if params.curve != EllipticCurve::Ed25519 {
                return Err("unsupported OKP curve");
            }
            let x = b64url_lenient(&params.x).ok_or("OKP x is not base64url")?;
            if x.len() != 32 {
                return Err("Ed25519 key is not 32 bytes");
            }
            vec![Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are never accepted"),
    };

    let algorithms = match &jwk.common.key_algorithm {
        None => by_type,
        Some(declared) => {
            let alg =
                key_algorithm_to_algorithm(declared).ok_or("alg is not a signature algorithm")?;
            if !by_type.contains(&alg) {
                return Err("alg does not match the key type");
            }
            vec![alg]
        }
    };

    let decoding = match &jwk.algorithm {
        AlgorithmParameters::RSA(params) => {
            let n = b64url_lenient(&params.n).ok_or("RSA modulus is not base64url")?;
            let e = b64url_lenient(&params.e).ok_or("RSA exponent is not base64url")?;
            DecodingKey::from_rsa_raw_components(&n, &e)
        }
        AlgorithmParameters::EllipticCurve(params) => {
            let x = b64url_lenient(&params.x).ok_or("EC x is not base64url")?;
            let y = b64url_lenient(&params.y).ok_or("EC y is not base64url")?;
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            DecodingKey::from_ec_der(&point)
        }
        AlgorithmParameters::OctetKeyPair(params) => {
            let x = b64url_lenient(&params.x).ok_or("OKP x is not base64url")?;
            DecodingKey::from_ed_der(&x)
        }
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are never accepted"),
    };

    // EC and Ed25519 points are parsed when a verifier is built: build one now, so a key that is
    // not a valid point is refused at load time rather than at request time.
    if let Some(&alg) = algorithms.first()
        && matches!(alg.family(), AlgorithmFamily::Ec | AlgorithmFamily::Ed)
        && jsonwebtoken::crypto::verify("AA", b"probe", &decoding, alg).is_err()
    {
        return Err("the public key is not a valid curve point");
    }

    Ok((
        kid,
        JwksKey {
            decoding,
            algorithms,
        },
    ))
}

fn key_algorithm_to_algorithm(alg: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// base64url, tolerating the padding some JWKS publishers add.
fn b64url_lenient(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn bit_length(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b != 0) {
        None => 0,
        Some(first) => {
            let rest = bytes.len() - first - 1;
            let top = bytes.get(first).copied().unwrap_or(0);
            rest * 8 + (8 - top.leading_zeros() as usize)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Token cache
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct CacheEntry {
    token: VerifiedToken,
    /// The key generation the token was verified under; a JWKS reload bumps it.
    generation: u64,
}

type Digest32 = [u8; 32];

/// Verified tokens by SHA-256 of the token string. Sharded to keep lock contention low.
struct TokenCache {
    shards: [RwLock<HashMap<Digest32, CacheEntry>>; CACHE_SHARDS],
    shard_capacity: usize,
}

impl TokenCache {
    fn new(capacity: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            shard_capacity: capacity.div_ceil(CACHE_SHARDS).max(1),
        }
    }

    fn shard(&self, key: &Digest32) -> &RwLock<HashMap<Digest32, CacheEntry>> {
        &self.shards[usize::from(key[0]) % CACHE_SHARDS]
    }

    fn get(&self, key: &Digest32, generation: u64) -> Option<VerifiedToken> {
        let shard = read(self.shard(key));
        shard
            .get(key)
            .filter(|entry| entry.generation == generation)
            .map(|entry| entry.token.clone())
    }

    fn insert(&self, key: Digest32, entry: CacheEntry, now: u64, leeway: u64) {
        let mut shard = write(self.shard(&key));
        if shard.len() >= self.shard_capacity && !shard.contains_key(&key) {
            let generation = entry.generation;
            shard.retain(|_, e| {
                e.generation == generation && !is_expired(e.token.claims.exp, now, leeway)
            });
            if shard.len() >= self.shard_capacity {
                // Still full of live tokens: drop about an eighth, arbitrarily. O(n) once per
                // n/8 inserts.
                let mut i = 0usize;
                shard.retain(|_, _| {
                    i += 1;
                    i % 8 != 1
                });
            }
        }
        shard.insert(key, entry);
    }

    fn clear(&self) {
        for shard in &self.shards {
            write(shard).clear();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn is_expired(exp: u64, now: u64, leeway: u64) -> bool {
    exp.saturating_add(leeway) < now
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Wire formats
// ---------------------------------------------------------------------------------------------

/// The header fields we look at before any cryptography.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<de::IgnoredAny>,
}

/// Only `iss`, read (unverified) to choose the key.
#[derive(Deserialize)]
struct PeekClaims {
    #[serde(default)]
    iss: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims as they arrive; everything optional so that each missing claim gets its own error.
#[derive(Deserialize)]
struct WireClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    // Only interpreted for platform tokens; an IdP may use these names for anything.
    #[serde(default)]
    tenant: Option<serde_json::Value>,
    #[serde(default)]
    roles: Option<serde_json::Value>,
}

/// A JWT NumericDate: a non-negative number of seconds (fractions are truncated).
fn numeric_date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<serde_json::Number>::deserialize(deserializer)?;
    match value {
        None => Ok(None),
        Some(n) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                        Ok(Some(f as u64))
                    }
                    _ => Err(de::Error::custom("not a valid NumericDate")),
                }
            }
        }
    }
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn map_jwt_error(err: &jsonwebtoken::errors::Error) -> AuthError {
    match err.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::DisallowedAlgorithm,
        // Keys are checked at load time; should one still be unusable, nothing verified.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => AuthError::MissingExp,
        ErrorKind::Base64(_) => AuthError::Malformed("a part is not valid base64url"),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            AuthError::Malformed("header or claims are not JSON of the expected shape")
        }
        _ => AuthError::Malformed("token could not be decoded"),
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization header
// ---------------------------------------------------------------------------------------------

/// Extracts the token from an `Authorization` header value: `Bearer <token>`, scheme
/// case-insensitive. Anything else is refused; the error never contains the value.
pub fn parse_authorization_header(value: &str) -> Result<&str, AuthError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let scheme = value.get(..6);
    if !scheme.is_some_and(|s| s.eq_ignore_ascii_case("bearer")) {
        return Err(AuthError::Malformed(
            "the authorization header is not a Bearer credential",
        ));
    }
    let rest = value.get(6..).unwrap_or("");
    if rest.is_empty() {
        return Err(AuthError::Missing);
    }
    if !rest.starts_with(' ') {
        return Err(AuthError::Malformed(
            "the authorization header is not a Bearer credential",
        ));
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    // token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    let token68 = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !token68 {
        return Err(AuthError::Malformed(
            "the bearer token contains characters a token cannot contain",
        ));
    }
    Ok(token)
}

// ---------------------------------------------------------------------------------------------
// Authenticator
// ---------------------------------------------------------------------------------------------

/// Verifies bearer tokens, issues platform tokens and holds the revocation set.
/// Share it behind an `Arc`; every method takes `&self`.
pub struct Authenticator {
    config: AuthConfig,
    leeway: u64,
    platform: SigningKey,
    /// One signature-only validation per algorithm we may ever verify with.
    validations: HashMap<Algorithm, Validation>,
    jwks: RwLock<Arc<KeySet>>,
    /// Bumped after every JWKS swap; cache entries of an older generation are ignored.
    generation: AtomicU64,
    cache: TokenCache,
    revoked: RwLock<HashSet<String>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let jwks_keys = read(&self.jwks).keys.len();
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .field("platform_key", &self.platform)
            .field("jwks_keys", &jwks_keys)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Checks the configuration and loads the JWKS file, if one is configured.
    pub fn new(config: AuthConfig, signing_key: SigningKey) -> Result<Self, AuthSetupError> {
        Self::with_cache_capacity(config, signing_key, TOKEN_CACHE_CAPACITY)
    }

    fn with_cache_capacity(
        config: AuthConfig,
        signing_key: SigningKey,
        cache_capacity: usize,
    ) -> Result<Self, AuthSetupError> {
        let fail = |m: &str| Err(AuthSetupError::Config(m.to_owned()));
        if config.leeway > MAX_LEEWAY {
            return fail("leeway must be at most 300 seconds");
        }
        if config.audience.is_empty() {
            return fail("audience must not be empty");
        }
        if config.platform_issuer.is_empty() {
            return fail("platform_issuer must not be empty");
        }
        if config.issuers.iter().any(|i| i == &config.platform_issuer) {
            return fail("platform_issuer must not also be an identity-provider issuer");
        }
        if config.issuers.iter().any(String::is_empty) {
            return fail("identity-provider issuers must not be empty strings");
        }
        if config
            .algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac)
        {
            return fail("HMAC algorithms (HS256/HS384/HS512) are not accepted");
        }
        match (
            &config.jwks_path,
            config.issuers.is_empty(),
            config.algorithms.is_empty(),
        ) {
            (Some(_), true, _) => return fail("jwks_path is set but no issuers are accepted"),
            (Some(_), _, true) => return fail("jwks_path is set but no algorithms are accepted"),
            (None, false, _) => return fail("issuers are configured but jwks_path is not"),
            _ => {}
        }

        let keys = match &config.jwks_path {
            Some(path) => load_jwks(path)?,
            None => KeySet::default(),
        };

        let mut validations = HashMap::new();
        for &alg in config.algorithms.iter().chain([Algorithm::EdDSA].iter()) {
            // Signature and algorithm only: every claim is checked by `check_claims`, so the
            // cache path and the cold path apply the very same rules.
            let mut v = Validation::new(alg);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            v.validate_nbf = false;
            v.validate_aud = false;
            v.leeway = 0;
            validations.insert(alg, v);
        }

        tracing::info!(
            platform_kid = %signing_key.kid,
            jwks_keys = keys.keys.len(),
            issuers = config.issuers.len(),
            "authentication configured"
        );
        Ok(Self {
            leeway: config.leeway.as_secs(),
            config,
            platform: signing_key,
            validations,
            jwks: RwLock::new(Arc::new(keys)),
            generation: AtomicU64::new(0),
            cache: TokenCache::new(cache_capacity),
            revoked: RwLock::new(HashSet::new()),
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.platform
    }

    /// Re-reads the JWKS file (on SIGHUP). On any error the old keys stay in force and the error
    /// says why. On success every cached token is forgotten, so tokens of a removed key are
    /// refused from the next call on.
    pub fn reload_jwks(&self) -> Result<(), AuthSetupError> {
        let Some(path) = &self.config.jwks_path else {
            tracing::debug!("no JWKS file configured; nothing to reload");
            return Ok(());
        };
        let keys = match load_jwks(path) {
            Ok(keys) => keys,
            Err(err) => {
                tracing::warn!(error = %err, "JWKS reload failed; keeping the previous keys");
                return Err(err);
            }
        };
        let count = keys.keys.len();
        *write(&self.jwks) = Arc::new(keys);
        // After the swap: a verification that read the old generation can only have used the
        // old keys (or the new ones), and its cache entry is dead from here on.
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
        tracing::info!(path = %path.display(), keys = count, "reloaded the JWKS");
        Ok(())
    }

    /// Signs a platform token (EdDSA, platform key): `iss` = platform issuer, `aud` = audience,
    /// `iat` = `nbf` = now, `exp` = now + ttl, `jti` = the given one or a new UUID v4.
    pub fn issue(
        &self,
        subject: &str,
        tenant: Option<&str>,
        roles: &[String],
        ttl: Duration,
        jti: Option<String>,
    ) -> Result<(String, Claims), AuthSetupError> {
        let fail = |m: &str| Err(AuthSetupError::Issue(m.to_owned()));
        if subject.is_empty() {
            return fail("the subject must not be empty");
        }
        if tenant.is_some_and(str::is_empty) {
            return fail("the tenant must not be empty");
        }
        if roles.iter().any(String::is_empty) {
            return fail("a role must not be empty");
        }
        if ttl.as_secs() == 0 {
            return fail("the lifetime must be at least one second");
        }
        let jti = jti.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if jti.is_empty() {
            return fail("the jti must not be empty");
        }
        let now = unix_now();
        let Some(exp) = now.checked_add(ttl.as_secs()) else {
            return fail("the lifetime is too long");
        };
        let claims = Claims {
            sub: subject.to_owned(),
            iss: self.config.platform_issuer.clone(),
            aud: self.config.audience.clone(),
            exp,
            nbf: Some(now),
            iat: Some(now),
            jti: Some(jti),
            tenant: tenant.map(str::to_owned),
            roles: roles.to_vec(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("JWT".to_owned());
        header.kid = Some(self.platform.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.platform.encoding)
            .map_err(|e| AuthSetupError::Issue(format!("signing failed: {e}")))?;
        Ok((token, claims))
    }

    /// Verifies a bearer token (the part after `Bearer `).
    pub fn verify(&self, bearer: &str) -> Result<VerifiedToken, AuthError> {
        self.verify_at(bearer, unix_now())
    }

    /// Revokes one token id; in force from the next call on, cached tokens included.
    pub fn revoke(&self, jti: impl Into<String>) {
        write(&self.revoked).insert(jti.into());
    }

    /// Replaces the whole revocation set (e.g. loaded from the database).
    pub fn set_revoked(&self, all: HashSet<String>) {
        *write(&self.revoked) = all;
    }

    /// The identity of an authentic, unexpired token that [`Authenticator::verify`] refuses only
    /// because it was revoked: for the audit record of its use, never to authorize anything.
    pub fn revoked_token_identity(&self, bearer: &str) -> Option<VerifiedToken> {
        if bearer.is_empty() || bearer.len() > MAX_TOKEN_LEN {
            return None;
        }
        let token = self.verify_uncached(bearer, unix_now()).ok()?;
        self.check_revoked(&token.claims).is_err().then_some(token)
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        read(&self.revoked).contains(jti)
    }

    fn verify_at(&self, bearer: &str, now: u64) -> Result<VerifiedToken, AuthError> {
        if bearer.is_empty() {
            return Err(AuthError::Missing);
        }
        if bearer.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("token is too long"));
        }
        let digest: Digest32 = Sha256::digest(bearer.as_bytes()).into();
        let generation = self.generation.load(Ordering::Acquire);

        if let Some(token) = self.cache.get(&digest, generation) {
            if is_expired(token.claims.exp, now, self.leeway) {
                return Err(AuthError::Expired);
            }
            self.check_revoked(&token.claims)?;
            return Ok(token);
        }

        let token = self.verify_uncached(bearer, now)?;
        self.cache.insert(
            digest,
            CacheEntry {
                token: token.clone(),
                generation,
            },
            now,
            self.leeway,
        );
        self.check_revoked(&token.claims)?;
        Ok(token)
    }

    fn check_revoked(&self, claims: &Claims) -> Result<(), AuthError> {
        if let Some(jti) = &claims.jti
            && read(&self.revoked).contains(jti)
        {
            return Err(AuthError::Revoked);
        }
        Ok(())
    }

    fn verify_uncached(&self, bearer: &str, now: u64) -> Result<VerifiedToken, AuthError> {
        let mut parts = bearer.split('.');
        let (header_b64, payload_b64) =
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(h), Some(p), Some(_), None) if !h.is_empty() && !p.is_empty() => (h, p),
                _ => {
                    return Err(AuthError::Malformed(
                        "not a compact JWS (three dot-separated parts)",
                    ));
                }
            };
        let header: RawHeader = decode_part(header_b64).ok_or(AuthError::Malformed(
            "the header is not base64url-encoded JSON",
        ))?;
        if header.crit.is_some() {
            return Err(AuthError::Malformed(
                "the header has critical parameters this server does not support",
            ));
        }
        let alg = Algorithm::from_str(&header.alg).map_err(|_| AuthError::DisallowedAlgorithm)?;
        let peek: PeekClaims = decode_part(payload_b64).ok_or(AuthError::Malformed(
            "the claims are not base64url-encoded JSON",
        ))?;
        let iss = peek.iss.ok_or(AuthError::WrongIssuer)?;

        let jwks_snapshot;
        let (source, key) = if iss == self.config.platform_issuer {
            if alg != Algorithm::EdDSA {
                return Err(AuthError::DisallowedAlgorithm);
            }
            match header.kid.as_deref() {
                None => return Err(AuthError::UnknownKey("the token has no kid")),
                Some(kid) if kid == self.platform.kid => {}
                Some(_) => return Err(AuthError::UnknownKey("no platform key has this kid")),
            }
            (TokenSource::Platform, &self.platform.decoding)
        } else if self.config.issuers.contains(&iss) {
            if !self.config.algorithms.contains(&alg) {
                return Err(AuthError::DisallowedAlgorithm);
            }
            let kid = header
                .kid
                .as_deref()
                .ok_or(AuthError::UnknownKey("the token has no kid"))?;
            jwks_snapshot = Arc::clone(&read(&self.jwks));
            let key = jwks_snapshot.keys.get(kid).ok_or(AuthError::UnknownKey(
                "no identity-provider key has this kid",
            ))?;
            if !key.algorithms.contains(&alg) {
                return Err(AuthError::DisallowedAlgorithm);
            }
            (TokenSource::IdentityProvider, &key.decoding)
        } else {
            return Err(AuthError::WrongIssuer);
        };

        let validation = self
            .validations
            .get(&alg)
            .ok_or(AuthError::DisallowedAlgorithm)?;
        let data = jsonwebtoken::decode::<WireClaims>(bearer, key, validation)
            .map_err(|e| map_jwt_error(&e))?;
        let claims = self.check_claims(data.claims, &iss, source, now)?;
        Ok(VerifiedToken {
            claims: Arc::new(claims),
            source,
        })
    }

    /// The claim checks, after the signature. Order: exp, nbf, iss, aud, sub, then the
    /// platform-only claims.
    fn check_claims(
        &self,
        wire: WireClaims,
        iss: &str,
        source: TokenSource,
        now: u64,
    ) -> Result<Claims, AuthError> {
        let exp = wire.exp.ok_or(AuthError::MissingExp)?;
        if is_expired(exp, now, self.leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = wire.nbf
            && nbf > now.saturating_add(self.leeway)
        {
            return Err(AuthError::NotYetValid);
        }
        if wire.iss.as_deref() != Some(iss) {
            return Err(AuthError::WrongIssuer);
        }
        let audience = &self.config.audience;
        let aud_ok = match &wire.aud {
            Some(Audience::One(a)) => a == audience,
            Some(Audience::Many(list)) => list.iter().any(|a| a == audience),
            None => false,
        };
        if !aud_ok {
            return Err(AuthError::WrongAudience);
        }
        let sub = match wire.sub {
            Some(sub) if !sub.is_empty() => sub,
            _ => return Err(AuthError::Malformed("the token has no sub claim")),
        };
        let jti = wire.jti.filter(|j| !j.is_empty());

        let (tenant, roles) = match source {
            TokenSource::IdentityProvider => (None, Vec::new()),
            TokenSource::Platform => {
                if jti.is_none() {
                    return Err(AuthError::Malformed("a platform token must have a jti"));
                }
                let tenant = match wire.tenant {
                    None => None,
                    Some(serde_json::Value::String(t)) if !t.is_empty() => Some(t),
                    Some(_) => return Err(AuthError::Malformed("the tenant claim is invalid")),
                };
                let roles = match wire.roles {
                    None => Vec::new(),
                    Some(value) => serde_json::from_value::<Vec<String>>(value)
                        .map_err(|_| AuthError::Malformed("the roles claim is invalid"))?,
                };
                (tenant, roles)
            }
        };

        Ok(Claims {
            sub,
            iss: iss.to_owned(),
            aud: audience.clone(),
            exp,
            nbf: wire.nbf,
            iat: wire.iat,
            jti,
            tenant,
            roles,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey as EcSigningKey;
    use serde_json::json;
    use tonic::{Code, Status};

    const IDP: &str = "https://idp.example.com/";

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn b64_json(value: &serde_json::Value) -> String {
        b64(&serde_json::to_vec(value).expect("json"))
    }

    fn platform_auth() -> Authenticator {
        Authenticator::new(AuthConfig::default(), SigningKey::generate().expect("key"))
            .expect("authenticator")
    }

    fn now() -> u64 {
        unix_now()
    }

    /// Platform-style claims that pass every check, to be altered per test.
    fn good_platform_claims() -> serde_json::Value {
        let now = now();
        json!({
            "sub": "alice",
            "iss": DEFAULT_PLATFORM_ISSUER,
            "aud": DEFAULT_AUDIENCE,
            "exp": now + 600,
            "nbf": now,
            "iat": now,
            "jti": uuid::Uuid::new_v4().to_string(),
        })
    }

    fn sign_platform(auth: &Authenticator, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(auth.platform.kid.clone());
        jsonwebtoken::encode(&header, claims, &auth.platform.encoding).expect("sign")
    }

    // ---- an EC identity provider ------------------------------------------------------------

    struct EcKey {
        kid: String,
        signing: EcSigningKey,
    }

    impl EcKey {
        fn new(kid: &str) -> Self {
            Self {
                kid: kid.to_owned(),
                signing: EcSigningKey::random(&mut rand::rngs::OsRng),
            }
        }

        fn jwk(&self) -> serde_json::Value {
            let point = self.signing.verifying_key().to_encoded_point(false);
            json!({
                "kty": "EC",
                "crv": "P-256",
                "kid": self.kid,
                "use": "sig",
                "alg": "ES256",
                "x": b64(point.x().expect("x")),
                "y": b64(point.y().expect("y")),
            })
        }

        fn sign(&self, claims: &serde_json::Value) -> String {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(self.kid.clone());
            let der = self.signing.to_pkcs8_der().expect("der");
            let key = EncodingKey::from_ec_der(der.as_bytes());
            jsonwebtoken::encode(&header, claims, &key).expect("sign")
        }
    }

    fn write_jwks(path: &Path, keys: &[serde_json::Value]) {
        fs::write(
            path,
            serde_json::to_vec(&json!({ "keys": keys })).expect("json"),
        )
        .expect("write jwks");
    }

    fn idp_claims() -> serde_json::Value {
        let now = now();
        json!({
            "sub": "user-123",
            "iss": IDP,
            "aud": ["other-api", DEFAULT_AUDIENCE],
            "exp": now + 600,
            "iat": now,
            "roles": ["platform-admin"],
            "tenant": "acme",
        })
    }

    fn idp_auth(dir: &Path, keys: &[serde_json::Value]) -> Authenticator {
        let path = dir.join("jwks.json");
        write_jwks(&path, keys);
        Authenticator::new(
            AuthConfig {
                algorithms: vec![Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA],
                issuers: vec![IDP.to_owned()],
                jwks_path: Some(path),
                ..AuthConfig::default()
            },
            SigningKey::generate().expect("key"),
        )
        .expect("authenticator")
    }

    fn assert_err(auth: &Authenticator, token: &str, expected: &AuthError) {
        match auth.verify(token) {
            Ok(_) => panic!("accepted; expected {expected:?}"),
            Err(err) => {
                assert_eq!(&err, expected);
                let status: Status = Error::from(err).into();
                assert_eq!(status.code(), Code::Unauthenticated);
                if token.len() > 8 {
                    assert!(!status.message().contains(token));
                }
            }
        }
    }

    // ---- positive cases ---------------------------------------------------------------------

    #[test]
    fn platform_token_round_trips() {
        let auth = platform_auth();
        let roles = vec!["developer".to_owned()];
        let (token, issued) = auth
            .issue(
                "svc-deployer",
                Some("acme"),
                &roles,
                Duration::from_secs(3600),
                None,
            )
            .expect("issue");
        let verified = auth.verify(&token).expect("verify");
        assert_eq!(*verified.claims, issued);
        assert_eq!(verified.source, TokenSource::Platform);
        assert_eq!(verified.claims.iss, "platformd");
        assert_eq!(verified.claims.aud, "platform-api");
        assert_eq!(verified.claims.tenant.as_deref(), Some("acme"));
        assert_eq!(verified.claims.roles, roles);
        assert!(verified.claims.jti.is_some());
        assert_eq!(verified.claims.exp, issued.iat.expect("iat") + 3600);

        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(auth.signing_key().kid()));

        // Second call: served from the cache, same answer.
        let again = auth.verify(&token).expect("cached verify");
        assert_eq!(again.claims, verified.claims);

        let (_, with_jti) = auth
            .issue(
                "x",
                None,
                &[],
                Duration::from_secs(60),
                Some("my-jti".to_owned()),
            )
            .expect("issue");
        assert_eq!(with_jti.jti.as_deref(), Some("my-jti"));
    }

    #[test]
    fn idp_token_from_jwks_is_accepted_without_its_role_claims() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = EcKey::new("ec-1");
        let auth = idp_auth(dir.path(), &[key.jwk()]);
        let verified = auth.verify(&key.sign(&idp_claims())).expect("verify");
        assert_eq!(verified.source, TokenSource::IdentityProvider);
        assert_eq!(verified.claims.sub, "user-123");
        assert_eq!(verified.claims.iss, IDP);
        assert_eq!(verified.claims.aud, DEFAULT_AUDIENCE);
        // An IdP cannot grant platform roles by putting them in a claim.
        assert!(verified.claims.roles.is_empty());
        assert!(verified.claims.tenant.is_none());
    }

    #[test]
    fn idp_okp_ed25519_key_from_jwks_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let idp_key = SigningKey::generate().expect("key");
        let mut jwk = idp_key.public_jwk();
        jwk["kid"] = json!("okp-1");
        let auth = idp_auth(dir.path(), &[jwk]);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("okp-1".to_owned());
        let token = jsonwebtoken::encode(&header, &idp_claims(), &idp_key.encoding).expect("sign");
        assert!(auth.verify(&token).is_ok());
    }

    #[test]
    fn reload_drops_removed_keys_even_for_cached_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = EcKey::new("old");
        let new = EcKey::new("new");
        let auth = idp_auth(dir.path(), &[old.jwk()]);
        let old_token = old.sign(&idp_claims());
        auth.verify(&old_token).expect("old key accepted");
        auth.verify(&old_token).expect("and cached");
        assert_err(
            &auth,
            &new.sign(&idp_claims()),
            &AuthError::UnknownKey("no identity-provider key has this kid"),
        );

        // A bad file is refused and the old keys stay.
        let path = dir.path().join("jwks.json");
        fs::write(&path, b"{ not json").expect("write");
        let err = auth.reload_jwks().expect_err("bad file");
        assert!(err.to_string().contains("not JSON"), "{err}");
        auth.verify(&old_token).expect("old key still in force");
        write_jwks(
            &path,
            &[json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"})],
        );
        assert!(
            auth.reload_jwks()
                .expect_err("only a symmetric key")
                .to_string()
                .contains("no usable signature keys")
        );
        auth.verify(&old_token).expect("old key still in force");

        write_jwks(&path, &[new.jwk()]);
        auth.reload_jwks().expect("reload");
        assert_err(
            &auth,
            &old_token,
            &AuthError::UnknownKey("no identity-provider key has this kid"),
        );
        auth.verify(&new.sign(&idp_claims()))
            .expect("new key accepted");
    }

    #[test]
    fn entries_cached_under_old_keys_are_never_served() {
        // A verification racing a reload may insert its entry after the reload cleared the
        // cache; the generation tag makes that entry dead. Simulate it: swap keys and bump the
        // generation without clearing.
        let dir = tempfile::tempdir().expect("tempdir");
        let old = EcKey::new("old");
        let auth = idp_auth(dir.path(), &[old.jwk()]);
        let token = old.sign(&idp_claims());
        auth.verify(&token).expect("cached");
        let path = dir.path().join("jwks.json");
        write_jwks(&path, &[EcKey::new("new").jwk()]);
        *write(&auth.jwks) = Arc::new(load_jwks(&path).expect("jwks"));
        auth.generation.fetch_add(1, Ordering::AcqRel);
        assert_eq!(auth.cache.len(), 1);
        assert_err(
            &auth,
            &token,
            &AuthError::UnknownKey("no identity-provider key has this kid"),
        );
    }

    #[test]
    fn shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Authenticator>();
        send_sync::<SigningKey>();
        send_sync::<VerifiedToken>();
    }

    // ---- the negative suite -----------------------------------------------------------------

    #[test]
    fn alg_none_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = EcKey::new("ec-1");
        let auth = idp_auth(dir.path(), &[key.jwk()]);
        for alg in ["none", "None", "NONE", "nOnE"] {
            for (claims, kid) in [
                (good_platform_claims(), auth.platform.kid.clone()),
                (idp_claims(), "ec-1".to_owned()),
            ] {
                let token = format!(
                    "{}.{}.",
                    b64_json(&json!({"alg": alg, "typ": "JWT", "kid": kid})),
                    b64_json(&claims)
                );
                assert_err(&auth, &token, &AuthError::DisallowedAlgorithm);
                // With a bogus signature too.
                assert_err(
                    &auth,
                    &format!("{token}AAAA"),
                    &AuthError::DisallowedAlgorithm,
                );
            }
        }
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ec = EcKey::new("ec-1");
        let auth = idp_auth(dir.path(), &[ec.jwk()]);
        let public = auth.platform.public_key();
        let public_pem_like = serde_json::to_vec(&auth.platform.public_jwk()).expect("json");
        for secret in [&public[..], &public_pem_like[..]] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(auth.platform.kid.clone());
            let token = jsonwebtoken::encode(
                &header,
                &good_platform_claims(),
                &EncodingKey::from_secret(secret),
            )
            .expect("sign");
            assert_err(&auth, &token, &AuthError::DisallowedAlgorithm);
        }
        // The same against the identity provider's EC key.
        let point = ec.signing.verifying_key().to_encoded_point(false);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("ec-1".to_owned());
        let token = jsonwebtoken::encode(
            &header,
            &idp_claims(),
            &EncodingKey::from_secret(point.as_bytes()),
        )
        .expect("sign");
        assert_err(&auth, &token, &AuthError::DisallowedAlgorithm);

        // And HMAC cannot even be configured.
        let err = Authenticator::new(
            AuthConfig {
                algorithms: vec![Algorithm::HS256],
                issuers: vec![IDP.to_owned()],
                jwks_path: Some(dir.path().join("jwks.json")),
                ..AuthConfig::default()
            },
            SigningKey::generate().expect("key"),
        )
        .expect_err("HS256 refused");
        assert!(err.to_string().contains("HMAC"));
    }

    #[test]
    fn algorithm_must_match_issuer_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ec = EcKey::new("ec-1");
        let auth = idp_auth(dir.path(), &[ec.jwk()]);
        // A platform token signed ES256 by someone else's key with the platform kid.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(auth.platform.kid.clone());
        let der = ec.signing.to_pkcs8_der().expect("der");
        let token = jsonwebtoken::encode(
            &header,
            &good_platform_claims(),
            &EncodingKey::from_ec_der(der.as_bytes()),
        )
        .expect("sign");
        assert_err(&auth, &token, &AuthError::DisallowedAlgorithm);
        // An IdP token claiming EdDSA (allowed by config) for the EC key.
        let fake = format!(
            "{}.{}.AAAA",
            b64_json(&json!({"alg": "EdDSA", "kid": "ec-1"})),
            b64_json(&idp_claims())
        );
        assert_err(&auth, &fake, &AuthError::DisallowedAlgorithm);
        // An IdP token with an algorithm the configuration does not allow.
        let fake = format!(
            "{}.{}.AAAA",
            b64_json(&json!({"alg": "ES384", "kid": "ec-1"})),
            b64_json(&idp_claims())
        );
        assert_err(&auth, &fake, &AuthError::DisallowedAlgorithm);
    }

    #[test]
    fn wrong_key_with_the_same_kid_is_refused() {
        let auth = platform_auth();
        let other = SigningKey::generate().expect("key");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(auth.platform.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &good_platform_claims(), &other.encoding).expect("sign");
        assert_err(&auth, &token, &AuthError::BadSignature);

        // A valid token with its payload swapped keeps a signature that no longer matches.
        let good = sign_platform(&auth, &good_platform_claims());
        let mut claims = good_platform_claims();
        claims["sub"] = json!("mallory");
        let parts: Vec<&str> = good.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64_json(&claims), parts[2]);
        assert_err(&auth, &tampered, &AuthError::BadSignature);

        // And an IdP token signed by a different EC key under a known kid.
        let dir = tempfile::tempdir().expect("tempdir");
        let real = EcKey::new("ec-1");
        let auth = idp_auth(dir.path(), &[real.jwk()]);
        let impostor = EcKey::new("ec-1");
        assert_err(
            &auth,
            &impostor.sign(&idp_claims()),
            &AuthError::BadSignature,
        );
    }

    #[test]
    fn expiry_respects_the_leeway() {
        let auth = platform_auth();
        let mut claims = good_platform_claims();
        claims["exp"] = json!(now() - 90);
        assert_err(&auth, &sign_platform(&auth, &claims), &AuthError::Expired);

        let mut claims = good_platform_claims();
        claims["exp"] = json!(now() - 10);
        auth.verify(&sign_platform(&auth, &claims))
            .expect("expired 10 s ago is within the 30 s leeway");

        // Fractional NumericDates are fine.
        let mut claims = good_platform_claims();
        claims["exp"] = json!((now() + 100) as f64 + 0.5);
        auth.verify(&sign_platform(&auth, &claims))
            .expect("float exp");
    }

    #[test]
    fn cached_tokens_expire_with_the_same_rule() {
        let auth = platform_auth();
        let (token, claims) = auth
            .issue("alice", None, &[], Duration::from_secs(60), None)
            .expect("issue");
        let t0 = claims.iat.expect("iat");
        auth.verify_at(&token, t0).expect("fresh");
        assert_eq!(auth.cache.len(), 1);
        // Served from the cache: within the leeway after exp, then beyond it.
        auth.verify_at(&token, claims.exp + 30)
            .expect("within leeway");
        assert_eq!(
            auth.verify_at(&token, claims.exp + 31)
                .expect_err("expired"),
            AuthError::Expired
        );
    }

    #[test]
    fn nbf_in_the_future_is_refused() {
        let auth = platform_auth();
        let mut claims = good_platform_claims();
        claims["nbf"] = json!(now() + 300);
        assert_err(
            &auth,
            &sign_platform(&auth, &claims),
            &AuthError::NotYetValid,
        );
        claims["nbf"] = json!(now() + 10);
        auth.verify(&sign_platform(&auth, &claims))
            .expect("within leeway");
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ec = EcKey::new("ec-1");
        let auth = idp_auth(dir.path(), &[ec.jwk()]);
        let mut claims = idp_claims();
        claims["iss"] = json!("https://evil.example.com/");
        assert_err(&auth, &ec.sign(&claims), &AuthError::WrongIssuer);
        claims.as_object_mut().expect("object").remove("iss");
        assert_err(&auth, &ec.sign(&claims), &AuthError::WrongIssuer);
        // The IdP key cannot sign as the platform.
        let mut claims = good_platform_claims();
        claims["iss"] = json!(DEFAULT_PLATFORM_ISSUER);
        assert_err(&auth, &ec.sign(&claims), &AuthError::DisallowedAlgorithm);
        // Nor the platform key as the IdP.
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(auth.platform.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &idp_claims(), &auth.platform.encoding).expect("sign");
        assert_err(
            &auth,
            &token,
            &AuthError::UnknownKey("no identity-provider key has this kid"),
        );
    }

    #[test]
    fn wrong_audience_is_refused() {
        let auth = platform_auth();
        let mut claims = good_platform_claims();
        claims["aud"] = json!("some-other-api");
        assert_err(
            &auth,
            &sign_platform(&auth, &claims),
            &AuthError::WrongAudience,
        );
        claims["aud"] = json!(["a", "b"]);
        assert_err(
            &auth,
            &sign_platform(&auth, &claims),
            &AuthError::WrongAudience,
        );
        claims.as_object_mut().expect("object").remove("aud");
        assert_err(
            &auth,
            &sign_platform(&auth, &claims),
            &AuthError::WrongAudience,
        );
        claims["aud"] = json!(["a", DEFAULT_AUDIENCE]);
        auth.verify(&sign_platform(&auth, &claims))
            .expect("aud list");
    }

    #[test]
    fn missing_exp_is_refused() {
        let auth = platform_auth();
        let mut claims = good_platform_claims();
        claims.as_object_mut().expect("object").remove("exp");
        assert_err(
            &auth,
            &sign_platform(&auth, &claims),
            &AuthError::MissingExp,
        );
        claims["exp"] = json!(null);
        assert_err(
            &auth,
            &sign_platform(&auth, &claims),
            &AuthError::MissingExp,
        );
        claims["exp"] = json!("tomorrow");
        assert!(matches!(
            auth.verify(&sign_platform(&auth, &claims)),
            Err(AuthError::Malformed(_))
        ));
        claims["exp"] = json!(-5);
        assert!(matches!(
            auth.verify(&sign_platform(&auth, &claims)),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_kid_is_refused() {
        let auth = platform_auth();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("not-our-kid".to_owned());
        let token = jsonwebtoken::encode(&header, &good_platform_claims(), &auth.platform.encoding)
            .expect("sign");
        assert_err(
            &auth,
            &token,
            &AuthError::UnknownKey("no platform key has this kid"),
        );
        let header = Header::new(Algorithm::EdDSA);
        let token = jsonwebtoken::encode(&header, &good_platform_claims(), &auth.platform.encoding)
            .expect("sign");
        assert_err(
            &auth,
            &token,
            &AuthError::UnknownKey("the token has no kid"),
        );
    }

    #[test]
    fn revoked_jti_is_refused_even_when_cached() {
        let auth = platform_auth();
        let (token, claims) = auth
            .issue("bot", Some("acme"), &[], Duration::from_secs(600), None)
            .expect("issue");
        let jti = claims.jti.clone().expect("jti");
        auth.verify(&token).expect("valid");
        auth.verify(&token).expect("cached");
        auth.revoke(jti.clone());
        assert!(auth.is_revoked(&jti));
        assert_err(&auth, &token, &AuthError::Revoked);

        // Replacing the set un-revokes and re-revokes.
        auth.set_revoked(HashSet::new());
        auth.verify(&token).expect("no longer revoked");
        auth.set_revoked(HashSet::from([jti]));
        assert_err(&auth, &token, &AuthError::Revoked);

        // Revoked before it was ever seen.
        let (token, claims) = auth
            .issue("bot2", None, &[], Duration::from_secs(600), None)
            .expect("issue");
        auth.revoke(claims.jti.expect("jti"));
        assert_err(&auth, &token, &AuthError::Revoked);
    }

    #[test]
    fn platform_tokens_must_carry_a_jti() {
        let auth = platform_auth();
        let mut claims = good_platform_claims();
        claims.as_object_mut().expect("object").remove("jti");
        assert!(matches!(
            auth.verify(&sign_platform(&auth, &claims)),
            Err(AuthError::Malformed(_))
        ));
        let mut claims = good_platform_claims();
        claims["roles"] = json!("platform-admin");
        assert!(matches!(
            auth.verify(&sign_platform(&auth, &claims)),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ec = EcKey::new("ec-1");
        let auth = idp_auth(dir.path(), &[ec.jwk()]);
        let good = auth
            .issue("alice", None, &[], Duration::from_secs(60), None)
            .expect("issue")
            .0;
        let parts: Vec<&str> = good.split('.').collect();
        let junk_10k: String = (0..10 * 1024)
            .map(|i| char::from(b"abcXYZ019-_.+/="[i % 15]))
            .collect();
        let huge = "A".repeat(MAX_TOKEN_LEN + 1);
        let bad_utf8 = b64(&[0xff, 0xfe, 0xfd, 0x80, 0xc3, 0x28]);
        let cases: Vec<String> = vec![
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            "a.b".into(),
            "a.b.c".into(),
            "a.b.c.d".into(),
            "Bearer".into(),
            "é.ü.ß".into(),
            "\u{0}\u{0}.\u{0}.\u{0}".into(),
            junk_10k,
            huge,
            format!("{bad_utf8}.{bad_utf8}.{bad_utf8}"),
            format!("{}.{bad_utf8}.{}", parts[0], parts[2]),
            format!("{bad_utf8}.{}.{}", parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], parts[1], "%%%%"),
            format!("{}.{}.", parts[0], parts[1]),
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            format!("{}..{}", parts[0], parts[2]),
            format!("{}.{}.{}", b64(b"[]"), b64(b"{}"), parts[2]),
            format!("{}.{}.{}", b64_json(&json!({"alg": 5})), parts[1], parts[2]),
            format!(
                "{}.{}.{}",
                b64_json(&json!({"alg": "EdDSA", "kid": 7})),
                parts[1],
                parts[2]
            ),
            format!("{}.{}.{}", parts[0], b64(b"null"), parts[2]),
            format!("{}.{}.{}", parts[0], b64(b"\"str\""), parts[2]),
            format!(
                "{}.{}.{}",
                parts[0],
                b64_json(&json!({"iss": ["a", "b"]})),
                parts[2]
            ),
            format!(
                "{}.{}.{}",
                b64_json(&json!({"alg": "EdDSA", "kid": auth.platform.kid, "crit": ["exp"]})),
                parts[1],
                parts[2]
            ),
            format!("{}.{}.{}", parts[0], parts[1], "A".repeat(5000)),
        ];
        for case in &cases {
            let result = auth.verify(case);
            assert!(result.is_err(), "accepted garbage {:.40}", case);
            if let Err(err) = result {
                let status: Status = Error::from(err).into();
                assert_eq!(status.code(), Code::Unauthenticated);
            }
        }
        assert_eq!(auth.verify("").err(), Some(AuthError::Missing));
        assert_eq!(
            auth.verify("a.b").err(),
            Some(AuthError::Malformed(
                "not a compact JWS (three dot-separated parts)"
            ))
        );
        // Pseudo-random bytes of every length, as header, claims and whole token.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[0]
                })
                .collect();
            let part = b64(&bytes);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            for case in [
                format!("{part}.{part}.{part}"),
                format!("{}.{part}.{}", parts[0], parts[2]),
                format!("{part}.{}.{}", parts[1], parts[2]),
                text.clone(),
            ] {
                assert!(auth.verify(&case).is_err());
            }
            let _ = parse_authorization_header(&text);
        }
    }

    #[test]
    fn messages_name_the_check_and_leak_nothing() {
        for err in [
            AuthError::Missing,
            AuthError::Malformed("x"),
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::BadSignature,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::DisallowedAlgorithm,
            AuthError::UnknownKey("x"),
            AuthError::MissingExp,
            AuthError::Revoked,
        ] {
            let message = err.to_string();
            let status: Status = Error::from(err).into();
            assert_eq!(status.code(), Code::Unauthenticated);
            assert_eq!(status.message(), message);
        }
        assert_eq!(AuthError::Missing.to_string(), "no bearer token");
    }

    #[test]
    fn authorization_header_parsing() {
        assert_eq!(
            parse_authorization_header("Bearer abc.def.ghi"),
            Ok("abc.def.ghi")
        );
        assert_eq!(parse_authorization_header("bearer abc"), Ok("abc"));
        assert_eq!(parse_authorization_header("BEARER   abc== "), Ok("abc=="));
        assert_eq!(parse_authorization_header(""), Err(AuthError::Missing));
        assert_eq!(
            parse_authorization_header("Bearer"),
            Err(AuthError::Missing)
        );
        assert_eq!(
            parse_authorization_header("Bearer   "),
            Err(AuthError::Missing)
        );
        for bad in [
            "Basic dXNlcjpwYXNz",
            "Bearerabc",
            "Token abc",
            "abc.def.ghi",
            "Bearer abc def",
            "Bearer a,b",
            "Bearer é",
            "Beaéer abc",
            "é",
            "Bearer ===",
            "Bearer\tabc",
        ] {
            assert!(
                matches!(
                    parse_authorization_header(bad),
                    Err(AuthError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    // ---- keys and JWKS ----------------------------------------------------------------------

    #[test]
    fn key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let first = SigningKey::load_or_create(&data_dir).expect("create");
        let path = data_dir.join(SIGNING_KEY_FILE);
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let pem = fs::read_to_string(&path).expect("read");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let second = SigningKey::load_or_create(&data_dir).expect("load");
        assert_eq!(first.kid(), second.kid());
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(first.kid().len(), 16);
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(&data_dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [SIGNING_KEY_FILE]);

        // A token signed with the first load verifies with the second.
        let a = Authenticator::new(AuthConfig::default(), first).expect("auth");
        let b = Authenticator::new(AuthConfig::default(), second).expect("auth");
        let (token, _) = a
            .issue("x", None, &[], Duration::from_secs(60), None)
            .expect("issue");
        b.verify(&token).expect("same key");

        // Debug output never shows the key.
        let shown = format!("{a:?} {:?}", a.signing_key());
        assert!(shown.contains(a.signing_key().kid()));
        assert!(!shown.contains(&b64(&a.signing_key().public_key())));
        assert!(!shown.contains("PRIVATE"));

        // A corrupt key file is an error, never silently replaced.
        fs::write(&path, "-----BEGIN PRIVATE KEY-----\ngarbage\n").expect("write");
        let err = SigningKey::load_or_create(&data_dir).expect_err("corrupt");
        assert!(err.to_string().contains("PKCS#8"), "{err}");
        assert!(fs::read_to_string(&path).expect("read").contains("garbage"));
    }

    #[test]
    fn concurrent_creation_agrees_on_one_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| SigningKey::load_or_create(dir.path()).map(|k| k.kid)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread").expect("key"))
                .collect()
        });
        assert!(kids.windows(2).all(|w| w[0] == w[1]), "{kids:?}");
    }

    #[test]
    fn jwks_keys_are_vetted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = EcKey::new("good");
        let mut off_curve = EcKey::new("off-curve").jwk();
        off_curve["y"] = json!(b64(&[7u8; 32]));
        let mut short_ed = SigningKey::generate().expect("key").public_jwk();
        short_ed["kid"] = json!("short-ed");
        short_ed["x"] = json!(b64(&[1u8; 16]));
        let mut enc = EcKey::new("enc").jwk();
        enc["use"] = json!("enc");
        let mut mismatched = EcKey::new("mismatched").jwk();
        mismatched["alg"] = json!("RS256");
        let weak_rsa = json!({"kty": "RSA", "kid": "weak", "n": b64(&[0xc5u8; 128]), "e": "AQAB"});
        let strong_rsa = json!({"kty": "RSA", "kid": "rsa", "n": b64(&[0xc5u8; 256]), "e": "AQAB"});
        let huge_rsa = json!({"kty": "RSA", "kid": "huge", "n": b64(&[0xc5u8; 1024]), "e": "AQAB"});
        let bad_e = json!({"kty": "RSA", "kid": "bad-e", "n": b64(&[0xc5u8; 256]), "e": "AQ"});
        let mut no_kid = EcKey::new("x").jwk();
        no_kid.as_object_mut().expect("object").remove("kid");
        let keys = [
            good.jwk(),
            off_curve,
            short_ed,
            enc,
            mismatched,
            weak_rsa,
            strong_rsa,
            huge_rsa,
            bad_e,
            no_kid,
            json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
            json!({"kty": "weird", "kid": "weird"}),
            json!("not an object"),
        ];
        let auth = idp_auth(dir.path(), &keys);
        let mut kids: Vec<String> = read(&auth.jwks).keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["good", "rsa"]);

        // A token naming a refused key is an unknown key, and nothing panics.
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("short-ed".to_owned());
        let token = format!(
            "{}.{}.AAAA",
            b64_json(&json!({"alg": "EdDSA", "kid": "short-ed"})),
            b64_json(&idp_claims())
        );
        assert_err(
            &auth,
            &token,
            &AuthError::UnknownKey("no identity-provider key has this kid"),
        );
        // An RS256 token for the (bogus) RSA key fails cleanly.
        let token = format!(
            "{}.{}.{}",
            b64_json(&json!({"alg": "RS256", "kid": "rsa"})),
            b64_json(&idp_claims()),
            b64(&[0u8; 256])
        );
        assert_err(&auth, &token, &AuthError::BadSignature);

        // Duplicate kids make the file invalid.
        let path = dir.path().join("dup.json");
        write_jwks(&path, &[good.jwk(), good.jwk()]);
        assert!(load_jwks(&path).is_err());
    }

    #[test]
    fn configuration_is_checked() {
        let key = || SigningKey::generate().expect("key");
        let bad = [
            AuthConfig {
                leeway: Duration::from_secs(3600),
                ..AuthConfig::default()
            },
            AuthConfig {
                audience: String::new(),
                ..AuthConfig::default()
            },
            AuthConfig {
                issuers: vec!["x".into()],
                ..AuthConfig::default()
            },
            AuthConfig {
                issuers: vec![DEFAULT_PLATFORM_ISSUER.into()],
                algorithms: vec![Algorithm::ES256],
                jwks_path: Some("/nonexistent".into()),
                ..AuthConfig::default()
            },
            AuthConfig {
                jwks_path: Some("/nonexistent".into()),
                algorithms: vec![Algorithm::ES256],
                ..AuthConfig::default()
            },
        ];
        for config in bad {
            assert!(Authenticator::new(config, key()).is_err());
        }
        let missing = AuthConfig {
            jwks_path: Some("/nonexistent/jwks.json".into()),
            algorithms: vec![Algorithm::ES256],
            issuers: vec![IDP.into()],
            ..AuthConfig::default()
        };
        let err = Authenticator::new(missing, key()).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/jwks.json"));
        let status: Status = Error::from(err).into();
        assert_eq!(status.code(), Code::Internal);
    }

    #[test]
    fn issue_checks_its_arguments() {
        let auth = platform_auth();
        let ttl = Duration::from_secs(60);
        assert!(auth.issue("", None, &[], ttl, None).is_err());
        assert!(auth.issue("a", Some(""), &[], ttl, None).is_err());
        assert!(auth.issue("a", None, &[String::new()], ttl, None).is_err());
        assert!(auth.issue("a", None, &[], Duration::ZERO, None).is_err());
        assert!(auth.issue("a", None, &[], Duration::MAX, None).is_err());
        assert!(
            auth.issue("a", None, &[], ttl, Some(String::new()))
                .is_err()
        );
    }

    #[test]
    fn the_cache_stays_bounded() {
        let auth = Authenticator::with_cache_capacity(
            AuthConfig::default(),
            SigningKey::generate().expect("key"),
            32,
        )
        .expect("auth");
        let tokens: Vec<String> = (0..200)
            .map(|i| {
                auth.issue(
                    &format!("user-{i}"),
                    None,
                    &[],
                    Duration::from_secs(600),
                    None,
                )
                .expect("issue")
                .0
            })
            .collect();
        for token in &tokens {
            auth.verify(token).expect("verify");
        }
        assert!(
            auth.cache.len() <= 32 + CACHE_SHARDS,
            "{}",
            auth.cache.len()
        );
        for token in &tokens {
            auth.verify(token).expect("verify again");
        }
    }

    /// Throwaway measurement: `cargo test --release -- --ignored --nocapture measure`.
    #[test]
    #[ignore = "measurement, not a test"]
    fn measure_verify_cold_and_warm() {
        let auth = platform_auth();
        let n = 10_000;
        let tokens: Vec<String> = (0..n)
            .map(|i| {
                auth.issue(
                    &format!("user-{i}"),
                    Some("acme"),
                    &["developer".to_owned()],
                    Duration::from_secs(3600),
                    None,
                )
                .expect("issue")
                .0
            })
            .collect();
        let start = std::time::Instant::now();
        for token in &tokens {
            auth.verify(token).expect("cold");
        }
        let cold = start.elapsed();
        let start = std::time::Instant::now();
        for token in &tokens {
            auth.verify(token).expect("warm");
        }
        let warm = start.elapsed();
        let start = std::time::Instant::now();
        for _ in 0..n {
            auth.verify(&tokens[0]).expect("hot");
        }
        let hot = start.elapsed();
        let start = std::time::Instant::now();
        let mut acc = 0u8;
        for token in &tokens {
            acc ^= Sha256::digest(token.as_bytes())[0];
        }
        let hashing = start.elapsed();
        let start = std::time::Instant::now();
        for token in &tokens {
            let _ = std::hint::black_box(jsonwebtoken::decode::<WireClaims>(
                token,
                &auth.platform.decoding,
                &auth.validations[&Algorithm::EdDSA],
            ));
        }
        let library = start.elapsed();
        println!(
            "of which SHA-256 of the token {:.3} µs (x{acc}); jsonwebtoken::decode alone {:.2} µs",
            hashing.as_secs_f64() * 1e6 / n as f64,
            library.as_secs_f64() * 1e6 / n as f64,
        );
        println!(
            "token {} bytes; verify over {n} calls: cold {:.2} µs/call, warm (10k distinct, cached) {:.3} µs/call, same token {:.3} µs/call",
            tokens[0].len(),
            cold.as_secs_f64() * 1e6 / n as f64,
            warm.as_secs_f64() * 1e6 / n as f64,
            hot.as_secs_f64() * 1e6 / n as f64,
        );
    }
}
