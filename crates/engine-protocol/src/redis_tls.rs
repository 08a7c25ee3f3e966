//! A Redis URL's TLS: `rediss://` verifies the server's certificate (against the
//! webpki roots the client is built with); `rediss://…#insecure` skips that check,
//! and is accepted only from a process started with `--tls-insecure`. Release builds
//! cannot skip it at all (the Redis client's `tls-rustls-insecure` feature is enabled
//! only for the workspace's tests), and the manager says so at start-up.

use crate::redact::redact_url;

/// A Redis URL this process must not use as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Redis URL {url} ends in #insecure, which skips the check of the server's certificate; drop #insecure and give Redis a certificate the client's roots trust, or start with --tls-insecure (ENGINE_TLS_INSECURE=true) to accept it"
)]
pub struct InsecureRedisUrl {
    pub url: String,
}

/// Whether `url` asks to skip certificate verification (`rediss://…#insecure`).
pub fn skips_verification(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.scheme() == "rediss" && u.fragment() == Some("insecure"))
}

/// Refuse a `#insecure` URL unless `allow_unverified` (`--tls-insecure`).
pub fn check_redis_url(url: &str, allow_unverified: bool) -> Result<(), InsecureRedisUrl> {
    if skips_verification(url) && !allow_unverified {
        return Err(InsecureRedisUrl {
            url: redact_url(url),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_fragment_needs_the_flag() {
        let url = "rediss://:pw@redis.example.com:6380/0#insecure";
        let refused = check_redis_url(url, false).unwrap_err();
        assert!(!refused.to_string().contains("pw@"), "{refused}");
        assert!(refused.to_string().contains("--tls-insecure"), "{refused}");
        assert_eq!(check_redis_url(url, true), Ok(()));
        for fine in [
            "rediss://redis.example.com:6380/0",
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:6379/0#insecure",
        ] {
            assert_eq!(check_redis_url(fine, false), Ok(()), "{fine}");
        }
    }
}
