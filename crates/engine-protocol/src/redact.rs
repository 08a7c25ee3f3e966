//! Credentials never reach a log line: URLs are printed with their password hidden.

/// `url` with any password (and a user-only secret) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            } else if !parsed.username().is_empty() {
                // A user name alone may be the secret (`redis://token@host`).
                let _ = parsed.set_username("***");
            }
            parsed.to_string()
        }
        // Not a URL we can parse: show only the scheme, never the rest.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***"),
            None => "***".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_passwords() {
        assert_eq!(
            redact_url("postgres://user:s3cret@db:5432/x"),
            "postgres://user:***@db:5432/x"
        );
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://t0ken@127.0.0.1:6379"),
            "redis://***@127.0.0.1:6379"
        );
        assert_eq!(redact_url("redis://host/0?x=a@b"), "redis://host/0?x=a@b");
        assert_eq!(redact_url("postgres://u:p@[bad"), "postgres://***");
        assert_eq!(redact_url("not a url with secret"), "***");
    }
}
