//! The environment every executor process starts with (a strategy's, a run's, a
//! `--validate`): an allow-list of what the runtime needs, never the starter's own
//! settings or secrets (the database URL, HTTP tokens, the tokens file's path;
//! CONTRACT.md §8). Starters clear the environment, pass on [`inherited`], and add
//! on purpose what that process is given (the Redis URL and prefix of a strategy).

use std::ffi::{OsStr, OsString};

/// Variables passed on by exact name: the program search path, the user's home and
/// name, temporary files, the host name (`node`), the time zone, Rust's logging and
/// backtraces, colour, and the TLS trust store a `rediss://` client reads.
pub const PASSED_NAMES: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "TMPDIR",
    "HOSTNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TZDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    "NO_COLOR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Variables passed on by prefix: the locale's categories (`LC_ALL`, `LC_TIME`, …).
pub const PASSED_PREFIXES: &[&str] = &["LC_"];

/// Whether a variable of this name may reach an executor from its starter.
pub fn is_passed(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    PASSED_NAMES.contains(&name) || PASSED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// This process's variables that an executor may see (see [`PASSED_NAMES`]).
pub fn inherited() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(name, _)| is_passed(name))
        .collect()
}

/// The user an executor process runs as (`engine-manager --executor-user`): its
/// uid and primary group (supplementary groups are dropped: the standard library's
/// spawn calls `setgroups(0)` before `setuid`), and the `HOME`, `USER` and `LOGNAME`
/// it sees instead of its starter's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: std::path::PathBuf,
}

impl RunAs {
    /// The variables that name the user, replacing the starter's.
    pub fn env(&self) -> [(&'static str, OsString); 3] {
        [
            ("HOME", self.home.clone().into_os_string()),
            ("USER", OsString::from(&self.name)),
            ("LOGNAME", OsString::from(&self.name)),
        ]
    }
}

/// The allow-list environment of a process run as `run_as` (its own `HOME`,
/// `USER`, `LOGNAME`), or as its starter (`None`: [`inherited`]).
pub fn inherited_as(run_as: Option<&RunAs>) -> Vec<(OsString, OsString)> {
    let mut vars = inherited();
    if let Some(user) = run_as {
        vars.retain(|(name, _)| !matches!(name.to_str(), Some("HOME" | "USER" | "LOGNAME")));
        vars.extend(user.env().map(|(k, v)| (OsString::from(k), v)));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_settings_stay_behind_and_the_runtime_passes() {
        for name in [
            "PATH", "HOME", "LANG", "LC_ALL", "LC_TIME", "TZ", "RUST_LOG",
        ] {
            assert!(is_passed(OsStr::new(name)), "{name} should pass");
        }
        for name in [
            "DATABASE_URL",
            "ENGINE_HTTP_TOKEN",
            "ENGINE_HTTP_READ_TOKEN",
            "ENGINE_HTTP_TOKENS_FILE",
            "REDIS_URL",
            "AWS_SECRET_ACCESS_KEY",
            "PGPASSWORD",
            "LD_PRELOAD",
            "lc_all",
            "PATHX",
        ] {
            assert!(!is_passed(OsStr::new(name)), "{name} should stay behind");
        }
    }

    #[test]
    fn a_process_run_as_another_user_sees_its_home_and_name() {
        let user = RunAs {
            name: "nobody".to_string(),
            uid: 65534,
            gid: 65534,
            home: "/nonexistent".into(),
        };
        let vars = inherited_as(Some(&user));
        let get = |key: &str| {
            let found: Vec<_> = vars.iter().filter(|(k, _)| k == key).collect();
            assert!(found.len() <= 1, "{key} appears twice");
            found.first().map(|(_, v)| v.clone())
        };
        assert_eq!(get("HOME"), Some(OsString::from("/nonexistent")));
        assert_eq!(get("USER"), Some(OsString::from("nobody")));
        assert_eq!(get("LOGNAME"), Some(OsString::from("nobody")));
        assert_eq!(inherited_as(None), inherited());
    }
}
