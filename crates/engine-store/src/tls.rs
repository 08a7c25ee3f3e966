//! How a connection to PostgreSQL is protected: certificates are verified by default.
//!
//! sqlx's default `sslmode` is `prefer`: TLS when the server offers it, with no check
//! of its certificate, so anyone on the path can pose as the server and read the
//! passwords and commands that go by. The rule applied to every database URL the
//! engine's tools open (the manager and `enginectl`, through
//! [`crate::manager::connect_options`]):
//!
//! - A URL (or `PGSSLMODE`) that names no `sslmode` gets `verify-full` for a host
//!   reached over the network, and keeps `prefer` for a loopback address
//!   (`localhost`, `127.0.0.0/8`, `::1`) or a Unix socket. Traffic that never leaves
//!   the machine cannot be read on a wire, and a local server seldom has a
//!   certificate: asking for one there would only break the usual set-up.
//! - `sslmode=verify-ca` and `verify-full` are kept as they are.
//! - An explicit `disable`, `allow`, `prefer` or `require` to a host over the network
//!   is refused, unless the process was started with `--tls-insecure`
//!   ([`allow_unverified`]), which its binary says loudly.

use sqlx::postgres::PgSslMode;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

static UNVERIFIED_ALLOWED: AtomicBool = AtomicBool::new(false);

/// Accept an unverified `sslmode` to a remote host for the rest of this process
/// (`--tls-insecure`, set once by a binary at start-up; the binary logs a warning).
pub fn allow_unverified(allowed: bool) {
    UNVERIFIED_ALLOWED.store(allowed, Ordering::Relaxed);
}

/// Whether [`allow_unverified`] was set.
pub fn unverified_allowed() -> bool {
    UNVERIFIED_ALLOWED.load(Ordering::Relaxed)
}

/// An `sslmode` this process must not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "sslmode={mode} to {host} does not verify the server's certificate, so anyone on the path could pose as the database and read what is sent; use sslmode=verify-full (add sslrootcert=/path/to/ca.pem for a private CA), or start with --tls-insecure (ENGINE_TLS_INSECURE=true) to accept it"
)]
pub struct UnverifiedTls {
    pub mode: String,
    pub host: String,
}

/// The `sslmode` to use for `host` when the URL (or `PGSSLMODE`) asked for
/// `explicit`; `allow_unverified` is `--tls-insecure`.
pub fn decide_ssl_mode(
    host: &str,
    explicit: Option<PgSslMode>,
    allow_unverified: bool,
) -> Result<PgSslMode, UnverifiedTls> {
    let local = is_local_host(host);
    match explicit {
        None if local => Ok(PgSslMode::Prefer),
        None => Ok(PgSslMode::VerifyFull),
        Some(mode @ (PgSslMode::VerifyCa | PgSslMode::VerifyFull)) => Ok(mode),
        Some(mode) if local || allow_unverified => Ok(mode),
        Some(mode) => Err(UnverifiedTls {
            mode: mode_word(mode).to_string(),
            host: host.to_string(),
        }),
    }
}

/// The `sslmode` word of `mode`.
pub fn mode_word(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// A Unix socket (a path, or no host at all: libpq's default socket), a loopback
/// name or a loopback address.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim();
    if host.is_empty() || host.starts_with('/') {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = bare.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What a PostgreSQL URL says about its host and `sslmode`, as libpq and sqlx read
/// it: the last `host`/`hostaddr` query parameter, else the URL's host, else
/// `PGHOSTADDR`/`PGHOST`; the last `sslmode`/`ssl-mode`, else `PGSSLMODE`. The mode
/// is `None` when nothing names one, `Err` with the word when it is not a mode.
pub fn url_host_and_mode(url: &str) -> (String, Option<Result<PgSslMode, String>>) {
    let parsed = url::Url::parse(url).ok();
    let mut host = parsed
        .as_ref()
        .and_then(|u| u.host_str())
        .map(|h| {
            url::form_urlencoded::parse(format!("h={h}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .filter(|h| !h.is_empty());
    let mut mode = None;
    for (key, value) in parsed.iter().flat_map(|u| u.query_pairs()) {
        match &*key {
            "host" | "hostaddr" => host = Some(value.into_owned()),
            "sslmode" | "ssl-mode" => mode = Some(value.into_owned()),
            _ => {}
        }
    }
    let host = host
        .or_else(|| std::env::var("PGHOSTADDR").ok())
        .or_else(|| std::env::var("PGHOST").ok())
        .unwrap_or_default();
    let mode = mode.or_else(|| std::env::var("PGSSLMODE").ok());
    let mode = mode.map(|word| word.parse::<PgSslMode>().map_err(|_| word));
    (host, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PgSslMode::*;

    /// `PgSslMode` has no `PartialEq`: compare its word.
    fn word(mode: Option<Result<PgSslMode, String>>) -> Option<Result<String, String>> {
        mode.map(|m| m.map(|m| mode_word(m).to_string()))
    }

    #[test]
    fn remote_hosts_are_verified_by_default_and_local_ones_keep_prefer() {
        for local in [
            "localhost",
            "127.0.0.1",
            "127.3.0.1",
            "::1",
            "[::1]",
            "/var/run/postgresql",
            "",
        ] {
            assert_eq!(
                decide_ssl_mode(local, None, false).map(mode_word),
                Ok(mode_word(Prefer)),
                "{local}"
            );
        }
        for remote in [
            "db.example.com",
            "10.0.0.5",
            "2001:db8::1",
            "localhost.evil.com",
        ] {
            assert_eq!(
                decide_ssl_mode(remote, None, false).map(mode_word),
                Ok(mode_word(VerifyFull)),
                "{remote}"
            );
        }
    }

    #[test]
    fn unverified_modes_to_a_remote_host_need_the_flag() {
        for mode in [Disable, Allow, Prefer, Require] {
            let refused = decide_ssl_mode("db.example.com", Some(mode), false).unwrap_err();
            assert_eq!(refused.mode, mode_word(mode));
            assert!(refused.to_string().contains("--tls-insecure"), "{refused}");
            assert!(refused.to_string().contains("verify-full"), "{refused}");
            assert_eq!(
                decide_ssl_mode("db.example.com", Some(mode), true).map(mode_word),
                Ok(mode_word(mode))
            );
            assert_eq!(
                decide_ssl_mode("127.0.0.1", Some(mode), false).map(mode_word),
                Ok(mode_word(mode))
            );
        }
        for mode in [VerifyCa, VerifyFull] {
            assert_eq!(
                decide_ssl_mode("db.example.com", Some(mode), false).map(mode_word),
                Ok(mode_word(mode))
            );
        }
    }

    #[test]
    fn the_url_names_the_host_and_mode_libpq_would_use() {
        let (host, mode) =
            url_host_and_mode("postgres://u:p@db.example.com:5432/x?sslmode=require");
        assert_eq!(host, "db.example.com");
        assert_eq!(word(mode), Some(Ok("require".to_string())));
        let (host, _) = url_host_and_mode("postgres://u@%2Fvar%2Frun%2Fpostgresql/x");
        assert_eq!(host, "/var/run/postgresql");
        let (host, _) = url_host_and_mode("postgres:///x?host=/tmp");
        assert_eq!(host, "/tmp");
        let (host, mode) = url_host_and_mode("postgres://u@[::1]:5432/x?ssl-mode=verify-ca");
        assert!(is_local_host(&host), "{host}");
        assert_eq!(word(mode), Some(Ok("verify-ca".to_string())));
        let (_, mode) = url_host_and_mode("postgres://h/x?sslmode=maybe");
        assert_eq!(word(mode), Some(Err("maybe".to_string())));
    }
}
