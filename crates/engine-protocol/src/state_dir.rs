//! The layout of the manager's state directory, shared by the manager (which writes
//! it) and `enginectl` (which reads it).

use uuid::Uuid;

/// A file name for a strategy's log: its name with anything odd replaced.
pub fn log_file_name(name: &str, id: Uuid) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    if safe.is_empty() {
        format!("{id}.log")
    } else {
        format!("{safe}.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_are_safe() {
        let id = Uuid::nil();
        assert_eq!(log_file_name("demo-sma_btc.1", id), "demo-sma_btc.1.log");
        assert_eq!(log_file_name("../etc/passwd", id), "_etc_passwd.log");
        assert_eq!(log_file_name("a b", id), "a_b.log");
    }
}
