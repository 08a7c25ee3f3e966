//! Who may read and who may command over HTTP: the tokens (`--http-token` and
//! `--http-read-token`, and the named ones of `--http-tokens-file`), each with a scope,
//! held as SHA-256 digests and compared in constant time; and the start-up rule that a
//! non-loopback address needs an operate token.
//!
//! The tokens file: one token a line, `NAME SCOPE SHA256HEX` (scope `read` or
//! `operate`; the digest of the token's bytes as `printf %s "$TOKEN" | sha256sum`
//! prints it); blank lines and lines starting with `#` are skipped.

use crate::config::ManagerConfig;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use subtle::ConstantTimeEq;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every `GET`.
    Read,
    /// Every `GET` and every command (`POST`).
    Operate,
}

/// One token: its name (the flag's, or the file's) and its digest.
#[derive(Clone)]
pub struct NamedToken {
    pub name: String,
    pub scope: Scope,
    digest: [u8; 32],
}

/// The tokens the server knows.
#[derive(Clone, Default)]
pub struct HttpAccess {
    tokens: Vec<NamedToken>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read the HTTP tokens file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {problem}; each line is NAME SCOPE SHA256HEX, e.g. `alice operate` and the output of `printf %s \"$TOKEN\" | sha256sum`")]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("--http-addr {addr} is reachable beyond this host, but no operate token is set, so anyone who reaches it could send commands; set --http-token (ENGINE_HTTP_TOKEN) or an `operate` line in --http-tokens-file, or listen on a loopback address such as 127.0.0.1:8080")]
    OpenBeyondLoopback { addr: std::net::SocketAddr },
}

impl HttpAccess {
    /// The tokens of `config`; refuses a bad tokens file, and a non-loopback
    /// `--http-addr` without an operate token.
    pub fn from_config(config: &ManagerConfig) -> Result<HttpAccess, AccessError> {
        let mut access = HttpAccess::default();
        if let Some(token) = &config.http_token {
            access.add("http-token", Scope::Operate, digest(&token.0));
        }
        if let Some(token) = &config.http_read_token {
            access.add("http-read-token", Scope::Read, digest(&token.0));
        }
        if let Some(path) = &config.http_tokens_file {
            let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
                path: path.clone(),
                source,
            })?;
            for (index, line) in text.lines().enumerate() {
                let bad = |problem: String| AccessError::Line {
                    path: path.clone(),
                    line: index + 1,
                    problem,
                };
                if let Some((name, scope, digest)) = parse_line(line).map_err(bad)? {
                    access.add(name, scope, digest);
                }
            }
        }
        if let Some(addr) = config.http_addr.0 {
            if !addr.ip().is_loopback() && !access.commands_guarded_by_operate() {
                return Err(AccessError::OpenBeyondLoopback { addr });
            }
        }
        Ok(access)
    }

    fn add(&mut self, name: &str, scope: Scope, digest: [u8; 32]) {
        self.tokens.push(NamedToken {
            name: name.to_string(),
            scope,
            digest,
        });
    }

    /// Whether reads need a token: some token has the `read` scope.
    pub fn reads_guarded(&self) -> bool {
        self.tokens.iter().any(|t| t.scope == Scope::Read)
    }

    /// Whether commands need a token: any token is configured (a read token alone
    /// makes commands impossible rather than open).
    pub fn commands_guarded(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn commands_guarded_by_operate(&self) -> bool {
        self.tokens.iter().any(|t| t.scope == Scope::Operate)
    }

    /// The token `presented` is, if any. Every token is compared, in constant time,
    /// whichever matches.
    pub fn find(&self, presented: &str) -> Option<&NamedToken> {
        let wanted = digest(presented);
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&wanted)) {
                found = Some(token);
            }
        }
        found
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A line of the tokens file: the name, the scope, the digest.
type TokenLine<'a> = (&'a str, Scope, [u8; 32]);

/// One line of the tokens file: `None` for a blank line or a comment.
fn parse_line(line: &str) -> Result<Option<TokenLine<'_>>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [name, scope, hex] = fields[..] else {
        return Err(format!("{} fields, not 3", fields.len()));
    };
    let scope = match scope {
        "read" => Scope::Read,
        "operate" => Scope::Operate,
        other => return Err(format!("scope '{other}' is neither read nor operate")),
    };
    let digest = decode_hex(hex)
        .ok_or_else(|| format!("'{hex}' is not a SHA-256 digest (64 hex digits)"))?;
    Ok(Some((name, scope, digest)))
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn lines_parse_and_bad_ones_say_why() {
        // printf %s secret | sha256sum
        let hex = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
        let line = format!("alice operate {hex}");
        let (name, scope, digest) = parse_line(&line).unwrap().unwrap();
        assert_eq!((name, scope), ("alice", Scope::Operate));
        assert_eq!(digest, super::digest("secret"));
        assert_eq!(parse_line("  # a comment").unwrap(), None);
        assert_eq!(parse_line("").unwrap(), None);
        assert!(parse_line("bob admin x")
            .unwrap_err()
            .contains("neither read nor operate"));
        assert!(parse_line("bob read abc")
            .unwrap_err()
            .contains("64 hex digits"));
        assert!(parse_line("bob read").unwrap_err().contains("2 fields"));
    }

    #[test]
    fn a_non_loopback_address_needs_an_operate_token() {
        let config = |args: &[&str]| {
            let mut all = vec!["engine-manager"];
            all.extend_from_slice(args);
            ManagerConfig::parse_from(all)
        };
        let err = HttpAccess::from_config(&config(&["--http-addr", "0.0.0.0:8080"]))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("set --http-token"), "{err}");
        let read_only = config(&["--http-addr", "0.0.0.0:8080", "--http-read-token", "r"]);
        assert!(HttpAccess::from_config(&read_only).is_err());
        let operate = config(&["--http-addr", "0.0.0.0:8080", "--http-token", "o"]);
        let access = HttpAccess::from_config(&operate).unwrap();
        assert_eq!(access.find("o").map(|t| t.scope), Some(Scope::Operate));
        assert!(access.find("x").is_none());
        assert!(!access.reads_guarded() && access.commands_guarded());
        assert!(HttpAccess::from_config(&config(&[])).is_ok());
    }
}
