//! How a failure reaches stderr: one line, `error: ` and the whole chain of causes,
//! and the exit code that goes with it.

use std::io::Write;
use std::process::ExitCode;

/// Exit code for a failure that is not the strategy's fault (e.g. no signal handler).
pub(super) const EXIT_FAILURE: u8 = 1;

/// Print `error: {message}: {cause}: …` as one line on stderr and return `code`.
pub(super) fn print_error(err: &dyn std::error::Error, code: i32) -> ExitCode {
    let line = one_line(&error_chain(err));
    let _ = writeln!(std::io::stderr(), "error: {line}");
    ExitCode::from(code as u8)
}

/// The error and its causes, `: `-separated.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `text` on one line (a strategy's halt reason may span several).
pub(super) fn one_line(text: &str) -> String {
    text.lines().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_is_one_line() {
        let err = Outer(std::io::Error::other("inner\nsecond line"));
        assert_eq!(error_chain(&err), "outer: inner\nsecond line");
        assert_eq!(one_line(&error_chain(&err)), "outer: inner second line");
    }
}
