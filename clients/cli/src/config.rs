//! Where platformctl finds the server, the token and the tenant: flags, then the environment
//! (`PLATFORM_ADDR`, `PLATFORM_TOKEN`, `PLATFORM_TENANT`), then the file `platformctl login`
//! writes (`$PLATFORM_CONFIG`, else `$XDG_CONFIG_HOME/platformctl/config.toml`, else
//! `~/.config/platformctl/config.toml`), readable by its owner only because it holds a token.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::CliError;

/// The address used when nothing names one.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FileConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PLATFORM_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("platformctl").join("config.toml"))
}

pub fn load() -> Result<FileConfig, CliError> {
    let Some(path) = path() else {
        return Ok(FileConfig::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            CliError::usage(format!("cannot read {}: {}", path.display(), e.message()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(CliError::usage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the file with mode 0600 (created that way, so the token is never readable by others).
pub fn save(config: &FileConfig) -> Result<PathBuf, CliError> {
    let path = path().ok_or_else(|| {
        CliError::usage("no place for the config file: set PLATFORM_CONFIG or HOME")
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::usage(format!("cannot create {}: {e}", dir.display())))?;
    }
    let text = toml::to_string(config)
        .map_err(|e| CliError::usage(format!("cannot write the config: {e}")))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let write = |options: &std::fs::OpenOptions| -> std::io::Result<()> {
        use std::io::Write;
        let mut file = options.open(&path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(text.as_bytes())
    };
    write(&options)
        .map_err(|e| CliError::usage(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// The connection settings in force for one command.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: String,
    pub token: Option<String>,
    pub tenant: Option<String>,
}

impl Settings {
    /// Flags (already merged with the environment by clap) over the file.
    pub fn resolve(
        addr: Option<String>,
        token: Option<String>,
        tenant: Option<String>,
    ) -> Result<Settings, CliError> {
        let file = load()?;
        Ok(Settings {
            addr: addr
                .or(file.addr)
                .unwrap_or_else(|| DEFAULT_ADDR.to_owned()),
            token: token.or(file.token).filter(|t| !t.is_empty()),
            tenant: tenant.or(file.tenant).filter(|t| !t.is_empty()),
        })
    }

    /// `tenants/{tenant}`, or a usage error saying how to choose one.
    pub fn tenant_name(&self) -> Result<String, CliError> {
        match &self.tenant {
            Some(t) if t.starts_with("tenants/") => Ok(t.clone()),
            Some(t) => Ok(format!("tenants/{t}")),
            None => Err(CliError::usage(
                "no tenant: pass --tenant, set PLATFORM_TENANT, or run `platformctl login --tenant …`",
            )),
        }
    }
}
