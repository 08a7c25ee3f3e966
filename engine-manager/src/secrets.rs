//! Where the manager finds the secrets a config refers to (`{"secret": "NAME"}`):
//! `--secrets-file` (`NAME = VALUE` lines; refused unless only its owner may read
//! it, checked at start-up and at every read), else its own environment,
//! `ENGINE_SECRET_<NAME>`. The file is read again at each spawn (or check) whose
//! config holds a reference, so an edited file counts from the next start without a
//! manager restart. A config without references never touches the file.
//!
//! **Invariant:** a resolved config goes only to an executor (stdin, the control
//! link, a `--validate` stdin); what is stored, published, logged or shown keeps
//! the reference.

use engine_protocol::secrets::{self, ReferenceError, Resolved};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a config's secrets could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "the secrets file {path} has mode {mode:04o}, which lets its group or others read it; make it private with `chmod 600 {path}`",
        path = path.display()
    )]
    OpenToOthers { path: PathBuf, mode: u32 },
    #[error("cannot read the secrets file {} (--secrets-file / ENGINE_SECRETS_FILE)", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secrets file {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("the secrets file {}: {problem}", path.display())]
    Malformed { path: PathBuf, problem: String },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

/// The manager's sources of secrets.
#[derive(Debug, Clone)]
pub struct Secrets {
    file: Option<PathBuf>,
}

impl Secrets {
    /// The sources of `--secrets-file` (if any) and the environment, the file
    /// checked once now: a file others may read, or one that cannot be read or
    /// parsed, stops the start-up.
    pub async fn open(file: Option<PathBuf>) -> Result<Secrets, SecretsError> {
        if let Some(path) = &file {
            read_file(path).await?;
        }
        Ok(Secrets { file })
    }

    /// `config` with its references replaced by their secrets (the file first, then
    /// the environment); the config as it is when it has none.
    pub async fn resolve(&self, config: &Value) -> Result<Resolved, SecretsError> {
        let from_file = match (&self.file, secrets::has_references(config)) {
            (Some(path), true) => read_file(path).await?,
            _ => Vec::new(),
        };
        let looked = |name: &str| self.looked(name);
        let mut lookup = |name: &str| {
            from_file
                .iter()
                .find(|(known, _)| known == name)
                .map(|(_, value)| value.clone())
                .or_else(|| std::env::var(secrets::env_var(name)).ok())
        };
        Ok(secrets::resolve(config, &looked, &mut lookup)?)
    }

    /// Where `name` was looked for, in words.
    fn looked(&self, name: &str) -> String {
        let var = secrets::env_var(name);
        match &self.file {
            Some(path) => format!(
                "the secrets file {} nor the manager's environment variable {var}",
                path.display()
            ),
            None => format!("the manager's environment variable {var} (no --secrets-file is set)"),
        }
    }
}

/// The file's secrets, after its mode is checked.
async fn read_file(path: &Path) -> Result<Vec<(String, String)>, SecretsError> {
    let read = |source| SecretsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = tokio::fs::metadata(path).await.map_err(read)?;
    if !meta.is_file() {
        return Err(SecretsError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretsError::OpenToOthers {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = tokio::fs::read_to_string(path).await.map_err(read)?;
    secrets::parse_secrets_file(&text).map_err(|problem| SecretsError::Malformed {
        path: path.to_path_buf(),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A file in a directory of its own (removed when the guard drops).
    struct TempFile(PathBuf);
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().expect("a parent"));
        }
    }

    fn file_with(mode: u32, text: &str) -> (TempFile, PathBuf) {
        let dir = std::env::temp_dir().join(format!("engine-secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (TempFile(path.clone()), path)
    }

    #[tokio::test]
    async fn a_file_others_may_read_is_refused_naming_the_fix() {
        let (_dir, path) = file_with(0o644, "a = 1\n");
        let err = Secrets::open(Some(path.clone())).await.unwrap_err();
        let shown = path.display();
        assert_eq!(
            err.to_string(),
            format!("the secrets file {shown} has mode 0644, which lets its group or others read it; make it private with `chmod 600 {shown}`")
        );
        let (_dir, path) = file_with(0o640, "a = 1\n");
        assert!(Secrets::open(Some(path)).await.is_err());
    }

    #[tokio::test]
    async fn the_file_is_read_again_and_wins_over_the_environment() {
        let (_dir, path) = file_with(0o600, "probe_one = from-file\n");
        let secrets = Secrets::open(Some(path.clone())).await.unwrap();
        let config = json!({"api_key": {"secret": "probe_one"}, "n": 1});
        let resolved = secrets.resolve(&config).await.unwrap();
        assert_eq!(resolved.config, json!({"api_key": "from-file", "n": 1}));
        // Edited: the next resolution sees the new value.
        std::fs::write(&path, "probe_one = edited\n").unwrap();
        let resolved = secrets.resolve(&config).await.unwrap();
        assert_eq!(resolved.config["api_key"], "edited");
        // Unknown: the words name the reference, the file and the variable.
        let err = secrets
            .resolve(&json!({"x": {"secret": "probe_missing"}}))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "unknown secret reference 'probe_missing' at config.x: not found in the secrets file {} nor the manager's environment variable ENGINE_SECRET_PROBE_MISSING",
                path.display()
            )
        );
        // A config without references never reads the file (even one turned bad).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(secrets.resolve(&json!({"n": 1})).await.is_ok());
        assert!(matches!(
            secrets.resolve(&config).await,
            Err(SecretsError::OpenToOthers { mode: 0o644, .. })
        ));
    }
}
