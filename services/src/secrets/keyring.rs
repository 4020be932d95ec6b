//! Key-encryption keys (KEKs) and the envelope encryption of secret values.
//!
//! Every secret version gets its own random 256-bit data key (DEK). The value is sealed with
//! AES-256-GCM under the DEK with a fresh 96-bit nonce; the DEK is sealed ("wrapped") the same
//! way under a KEK. Both seals carry associated data naming the tenant, the secret (id and uid)
//! and the version number — the wrap also names the KEK — so a ciphertext or wrapped key copied
//! onto another row fails authentication instead of decrypting. Nonces are random: a DEK seals
//! exactly one value, and a KEK wraps at most a few billion DEKs long before random 96-bit nonces
//! could collide.
//!
//! KEKs come from a key file (`--secret-keys-file`) and/or the `PLATFORM_SECRET_KEYS` variable;
//! when neither is given, platformd generates a key file in its data dir on first start (mode
//! 0600). Both hold entries `KEY_ID:BASE64_OF_32_BYTES`, one per line (or separated by commas);
//! `#` starts a comment. The primary key (the one new DEKs are wrapped by) is
//! `--secret-primary-key`, else the first key of the file, else the first of the variable.
//!
//! Key material lives in [`Zeroizing`] buffers, is never logged, never returned, never put in an
//! error. The file is re-read when it changes (checked before each wrap and when a DEK names an
//! unknown key) and on SIGHUP, so adding a key for a rotation needs no restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use parking_lot::RwLock;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::store::now_micros;

/// The generated key file's name inside the data directory.
pub const GENERATED_KEY_FILE: &str = "secret-keys";
/// The environment variable that may hold key-encryption keys.
pub const KEYS_ENV: &str = "PLATFORM_SECRET_KEYS";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// Where a key was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    File,
    Environment,
    Generated,
}

/// Why the keys could not be loaded: an operator's configuration problem, said in one line that
/// never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("secret key file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{KEYS_ENV}: {0}")]
    Environment(String),
    #[error("{0}")]
    Config(String),
}

/// Why a sealed value or wrapped key could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The DEK is wrapped by a key this server does not hold.
    #[error("the data key is wrapped by key-encryption key `{0}`, which this server does not hold")]
    MissingKey(String),
    /// Authentication failed: the bytes do not belong to this row, or storage is corrupt.
    #[error("authenticated decryption failed")]
    Corrupt,
}

/// How the keys are configured.
#[derive(Debug, Clone, Default)]
pub struct KeyringConfig {
    /// `--secret-keys-file`.
    pub file: Option<PathBuf>,
    /// `--secret-primary-key`.
    pub primary: Option<String>,
    /// Where the development key file is generated when no key is configured.
    pub data_dir: PathBuf,
}

/// What a seal binds the ciphertext to.
#[derive(Debug, Clone)]
pub struct VersionAad<'a> {
    pub tenant: &'a str,
    pub secret: &'a str,
    pub secret_uid: &'a str,
    pub number: i64,
}

impl VersionAad<'_> {
    fn value(&self) -> Vec<u8> {
        format!(
            "platform.secrets.v1/value\n{}\n{}\n{}\n{}",
            self.tenant, self.secret, self.secret_uid, self.number
        )
        .into_bytes()
    }

    fn data_key(&self, kek_id: &str) -> Vec<u8> {
        format!(
            "platform.secrets.v1/data-key\n{kek_id}\n{}\n{}\n{}\n{}",
            self.tenant, self.secret, self.secret_uid, self.number
        )
        .into_bytes()
    }
}

/// A sealed value as stored: the KEK's id, the wrapped DEK and the ciphertext (each nonce-first).
#[derive(Debug, Clone)]
pub struct Sealed {
    pub kek_id: String,
    pub wrapped_key: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

struct Kek {
    key: Zeroizing<[u8; KEY_LEN]>,
    source: KeySource,
    load_time_us: i64,
}

/// A key as operators see it: never its material.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: String,
    pub source: KeySource,
    pub primary: bool,
    pub load_time_us: i64,
}

struct Loaded {
    keys: BTreeMap<String, Kek>,
    primary: String,
    /// The key file read and its (modification time, length), to notice changes.
    file: Option<(PathBuf, Option<(SystemTime, u64)>)>,
}

/// The key-encryption keys this process holds.
pub struct Keyring {
    config: KeyringConfig,
    loaded: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loaded = self.loaded.read();
        f.debug_struct("Keyring")
            .field("keys", &loaded.keys.keys().collect::<Vec<_>>())
            .field("primary", &loaded.primary)
            .finish()
    }
}

fn random<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut bytes = Zeroizing::new([0u8; N]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    bytes
}

fn seal(key: &[u8; KEY_LEN], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let nonce = random::<NONCE_LEN>();
    let mut out = nonce.to_vec();
    // Encryption with a valid key and nonce cannot fail for inputs far below GCM's 64 GiB limit.
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(nonce.as_ref()),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    out.extend_from_slice(&sealed);
    out
}

fn open(key: &[u8; KEY_LEN], sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(OpenError::Corrupt);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
        .map(Zeroizing::new)
        .map_err(|_| OpenError::Corrupt)
}

/// Is `id` a valid key id: 1-64 of `[A-Za-z0-9._-]`?
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses `ID:BASE64` entries; `what` names the source for errors (which never quote a key).
fn parse_entries(
    text: &str,
    source: KeySource,
    into: &mut Vec<(String, Kek)>,
) -> Result<(), String> {
    let now = now_micros();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        for entry in line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
        {
            let Some((id, material)) = entry.split_once(':') else {
                return Err(format!(
                    "line {}: an entry is not `KEY_ID:BASE64_KEY`",
                    n + 1
                ));
            };
            if !valid_key_id(id) {
                return Err(format!(
                    "line {}: key ids are 1-64 characters of [A-Za-z0-9._-]",
                    n + 1
                ));
            }
            let decoded = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(material)
                    .map_err(|_| format!("line {}: key `{id}` is not valid base64", n + 1))?,
            );
            if decoded.len() != KEY_LEN {
                return Err(format!(
                    "line {}: key `{id}` must be {KEY_LEN} bytes (256 bits), not {}",
                    n + 1,
                    decoded.len()
                ));
            }
            if into.iter().any(|(existing, _)| existing == id) {
                return Err(format!("key id `{id}` appears twice"));
            }
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            key.copy_from_slice(&decoded);
            into.push((
                id.to_owned(),
                Kek {
                    key,
                    source,
                    load_time_us: now,
                },
            ));
        }
    }
    Ok(())
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A new key entry line, `ID:BASE64`, with a fresh random key and an id from the time.
pub fn new_key_entry(prefix: &str) -> (String, Zeroizing<String>) {
    let key = random::<KEY_LEN>();
    let id = format!(
        "{prefix}-{}-{}",
        chrono_like_date(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let line = Zeroizing::new(format!(
        "{id}:{}",
        base64::engine::general_purpose::STANDARD.encode(key.as_ref())
    ));
    (id, line)
}

/// `YYYYMMDD` of today (UTC), from the RFC 3339 form of a protobuf `Timestamp`.
fn chrono_like_date() -> String {
    let rfc3339 = prost_types::Timestamp::from(std::time::SystemTime::now()).to_string();
    rfc3339.get(..10).unwrap_or_default().replace('-', "")
}

/// Writes `contents` to `path` with mode 0600, replacing it atomically.
pub fn write_key_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(contents.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl Keyring {
    /// Loads the configured keys, generating the development key file if none is configured.
    pub fn load(config: KeyringConfig) -> Result<Keyring, KeyError> {
        let loaded = Self::read(&config)?;
        Ok(Keyring {
            config,
            loaded: RwLock::new(Arc::new(loaded)),
        })
    }

    /// The key file rotation writes to: the configured one, or the generated one.
    pub fn key_file(&self) -> Option<PathBuf> {
        self.loaded.read().file.as_ref().map(|(p, _)| p.clone())
    }

    /// Whether the primary key was chosen explicitly (`--secret-primary-key`).
    pub fn primary_is_explicit(&self) -> bool {
        self.config.primary.is_some()
    }

    fn read(config: &KeyringConfig) -> Result<Loaded, KeyError> {
        let env_value = std::env::var(KEYS_ENV)
            .ok()
            .map(Zeroizing::new)
            .filter(|v| !v.trim().is_empty());
        let mut keys: Vec<(String, Kek)> = Vec::new();
        let mut file = None;
        let (path, source) = match (&config.file, &env_value) {
            (Some(path), _) => (Some(path.clone()), KeySource::File),
            (None, Some(_)) => (None, KeySource::File),
            (None, None) => (
                Some(config.data_dir.join(GENERATED_KEY_FILE)),
                KeySource::Generated,
            ),
        };
        if let Some(path) = path {
            let file_err = |message: String| KeyError::File {
                path: path.clone(),
                message,
            };
            if source == KeySource::Generated && !path.exists() {
                let (id, line) = new_key_entry("generated");
                let contents = Zeroizing::new(format!(
                    "# Key-encryption keys of platformd's secrets, generated on first start for development.\n\
                     # Keep this file secret and backed up: without it, no stored secret can be read.\n\
                     # Format: KEY_ID:BASE64_OF_32_BYTES per line; the first key is the primary one.\n{}\n",
                    line.as_str()
                ));
                write_key_file(&path, &contents).map_err(|e| file_err(e.to_string()))?;
                tracing::info!(path = %path.display(), key_id = %id, "generated a key-encryption key for secrets");
            }
            let text = Zeroizing::new(
                std::fs::read_to_string(&path).map_err(|e| file_err(e.to_string()))?,
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(&path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(path = %path.display(), "the secret key file is readable by other users; chmod 600 it");
                }
            }
            parse_entries(&text, source, &mut keys).map_err(file_err)?;
            if keys.is_empty() {
                return Err(file_err("holds no key".into()));
            }
            file = Some((path.clone(), file_stamp(&path)));
        }
        if let Some(value) = &env_value {
            let before = keys.len();
            let mut from_env = Vec::new();
            parse_entries(value, KeySource::Environment, &mut from_env)
                .map_err(KeyError::Environment)?;
            for (id, kek) in from_env {
                if keys.iter().any(|(existing, _)| *existing == id) {
                    return Err(KeyError::Config(format!(
                        "key id `{id}` is in both the key file and {KEYS_ENV}"
                    )));
                }
                keys.push((id, kek));
            }
            if keys.len() == before {
                return Err(KeyError::Environment("holds no key".into()));
            }
        }
        let primary = match &config.primary {
            Some(id) if keys.iter().any(|(k, _)| k == id) => id.clone(),
            Some(id) => {
                return Err(KeyError::Config(format!(
                    "--secret-primary-key `{}` is not among the loaded keys",
                    crate::names::printable(id)
                )));
            }
            None => keys
                .first()
                .map(|(id, _)| id.clone())
                .ok_or_else(|| KeyError::Config("no key-encryption key".into()))?,
        };
        Ok(Loaded {
            keys: keys.into_iter().collect(),
            primary,
            file,
        })
    }

    /// Re-reads the key sources; on failure the keys held so far stay in force.
    pub fn reload(&self) -> Result<(), KeyError> {
        let loaded = Self::read(&self.config)?;
        *self.loaded.write() = Arc::new(loaded);
        Ok(())
    }

    /// Re-reads the key file if it changed since it was read.
    pub fn refresh_if_changed(&self) {
        let changed = {
            let loaded = self.loaded.read();
            match &loaded.file {
                Some((path, stamp)) => file_stamp(path) != *stamp,
                None => false,
            }
        };
        if changed {
            match self.reload() {
                Ok(()) => tracing::info!("reloaded the secret key-encryption keys"),
                Err(err) => {
                    tracing::error!(error = %err, "could not reload the secret keys; keeping the ones loaded")
                }
            }
        }
    }

    pub fn primary_id(&self) -> String {
        self.loaded.read().primary.clone()
    }

    pub fn holds(&self, id: &str) -> bool {
        self.loaded.read().keys.contains_key(id)
    }

    /// The keys held, primary first, then by id.
    pub fn keys(&self) -> Vec<KeyInfo> {
        let loaded = self.loaded.read();
        let mut out: Vec<KeyInfo> = loaded
            .keys
            .iter()
            .map(|(id, k)| KeyInfo {
                id: id.clone(),
                source: k.source,
                primary: *id == loaded.primary,
                load_time_us: k.load_time_us,
            })
            .collect();
        out.sort_by_key(|k| (!k.primary, k.id.clone()));
        out
    }

    /// Seals `plaintext` under a new data key wrapped by the primary key.
    pub fn seal(&self, aad: &VersionAad<'_>, plaintext: &[u8]) -> Sealed {
        self.refresh_if_changed();
        let loaded = self.loaded.read().clone();
        let data_key = random::<KEY_LEN>();
        let ciphertext = seal(&data_key, plaintext, &aad.value());
        let kek_id = loaded.primary.clone();
        let wrapped_key = match loaded.keys.get(&kek_id) {
            Some(kek) => seal(&kek.key, data_key.as_ref(), &aad.data_key(&kek_id)),
            None => Vec::new(), // unreachable: the primary is always loaded
        };
        Sealed {
            kek_id,
            wrapped_key,
            ciphertext,
        }
    }

    fn unwrap_key(
        &self,
        aad: &VersionAad<'_>,
        kek_id: &str,
        wrapped_key: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, OpenError> {
        if !self.holds(kek_id) {
            // Perhaps a rotation added it to the file since we read it.
            self.refresh_if_changed();
        }
        let loaded = self.loaded.read().clone();
        let kek = loaded
            .keys
            .get(kek_id)
            .ok_or_else(|| OpenError::MissingKey(kek_id.to_owned()))?;
        let raw = open(&kek.key, wrapped_key, &aad.data_key(kek_id))?;
        if raw.len() != KEY_LEN {
            return Err(OpenError::Corrupt);
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&raw);
        Ok(key)
    }

    /// Opens a sealed value.
    pub fn open(
        &self,
        aad: &VersionAad<'_>,
        kek_id: &str,
        wrapped_key: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let data_key = self.unwrap_key(aad, kek_id, wrapped_key)?;
        open(&data_key, ciphertext, &aad.value())
    }

    /// Re-wraps a data key from `kek_id` to `target` (which must be held); the value is untouched.
    pub fn rewrap(
        &self,
        aad: &VersionAad<'_>,
        kek_id: &str,
        wrapped_key: &[u8],
        target: &str,
    ) -> Result<Vec<u8>, OpenError> {
        let data_key = self.unwrap_key(aad, kek_id, wrapped_key)?;
        let loaded = self.loaded.read().clone();
        let kek = loaded
            .keys
            .get(target)
            .ok_or_else(|| OpenError::MissingKey(target.to_owned()))?;
        Ok(seal(&kek.key, data_key.as_ref(), &aad.data_key(target)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(dir: &Path, text: &str) -> Keyring {
        let path = dir.join("keys");
        write_key_file(&path, text).expect("write");
        Keyring::load(KeyringConfig {
            file: Some(path),
            primary: None,
            data_dir: dir.to_owned(),
        })
        .expect("load")
    }

    fn aad(secret: &str) -> VersionAad<'_> {
        VersionAad {
            tenant: "acme",
            secret,
            secret_uid: "u1",
            number: 1,
        }
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let dir = tempfile::tempdir().expect("dir");
        let (_, a) = new_key_entry("a");
        let ring = keyring(dir.path(), &a);
        let sealed = ring.seal(&aad("db"), b"hunter2");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        let opened = ring
            .open(
                &aad("db"),
                &sealed.kek_id,
                &sealed.wrapped_key,
                &sealed.ciphertext,
            )
            .expect("opens");
        assert_eq!(opened.as_slice(), b"hunter2");
        // The same bytes presented as another secret's do not open.
        assert_eq!(
            ring.open(
                &aad("other"),
                &sealed.kek_id,
                &sealed.wrapped_key,
                &sealed.ciphertext
            ),
            Err(OpenError::Corrupt)
        );
        let mut flipped = sealed.ciphertext.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            ring.open(&aad("db"), &sealed.kek_id, &sealed.wrapped_key, &flipped),
            Err(OpenError::Corrupt)
        );
        assert_eq!(
            ring.open(&aad("db"), "nope", &sealed.wrapped_key, &sealed.ciphertext),
            Err(OpenError::MissingKey("nope".into()))
        );
    }

    #[test]
    fn rewrap_moves_a_data_key_to_another_key() {
        let dir = tempfile::tempdir().expect("dir");
        let (a_id, a) = new_key_entry("a");
        let (b_id, b) = new_key_entry("b");
        let ring = keyring(dir.path(), &format!("{}\n{}\n", a.as_str(), b.as_str()));
        assert_eq!(ring.primary_id(), a_id);
        let sealed = ring.seal(&aad("db"), b"v");
        let rewrapped = ring
            .rewrap(&aad("db"), &a_id, &sealed.wrapped_key, &b_id)
            .expect("rewrap");
        let only_b = keyring(dir.path(), &b);
        assert_eq!(
            only_b
                .open(&aad("db"), &b_id, &rewrapped, &sealed.ciphertext)
                .expect("opens")
                .as_slice(),
            b"v"
        );
    }

    #[test]
    fn bad_key_files_are_refused_without_quoting_keys() {
        let dir = tempfile::tempdir().expect("dir");
        for text in [
            "",
            "# only a comment\n",
            "k1:c2hvcnQ=\n",
            "k1 no-colon\n",
            "bad id:AAAA\n",
            "k1:!!!notbase64\n",
        ] {
            let path = dir.path().join("bad");
            write_key_file(&path, text).expect("write");
            let err = Keyring::load(KeyringConfig {
                file: Some(path),
                primary: None,
                data_dir: dir.path().to_owned(),
            })
            .expect_err(text);
            assert!(!err.to_string().contains("c2hvcnQ"), "{err}");
        }
        let (_, a) = new_key_entry("a");
        let err = Keyring::load(KeyringConfig {
            file: Some({
                let p = dir.path().join("ok");
                write_key_file(&p, &a).expect("write");
                p
            }),
            primary: Some("missing".into()),
            data_dir: dir.path().to_owned(),
        })
        .expect_err("unknown primary");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_development_key_file_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().expect("dir");
        let config = KeyringConfig {
            file: None,
            primary: None,
            data_dir: dir.path().to_owned(),
        };
        let first = Keyring::load(config.clone()).expect("generates");
        let second = Keyring::load(config).expect("loads");
        assert_eq!(first.primary_id(), second.primary_id());
        assert_eq!(first.keys()[0].source, KeySource::Generated);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(GENERATED_KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn dates_are_civil() {
        let d = chrono_like_date();
        assert_eq!(d.len(), 8);
        assert!(d.starts_with("20"), "{d}");
    }
}
