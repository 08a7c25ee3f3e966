//! Words a hint prints for pasting into a POSIX shell: a strategy name is quoted
//! when the shell needs it (`enginectl start 'nc with space'`).

use std::borrow::Cow;

/// `word` as one shell argument: as it is when that is safe, quoted otherwise.
pub fn shell_quote(word: &str) -> Cow<'_, str> {
    // shlex refuses only a NUL byte, which no PostgreSQL text holds; quote it anyway.
    shlex::try_quote(word)
        .unwrap_or_else(|_| Cow::Owned(format!("'{}'", word.replace('\'', r"'\''"))))
}

/// A strategy name as the last arguments of an `enginectl` command line: quoted, and
/// after `--` when it starts with `-` (so it is not taken for a flag).
pub fn name_arg(name: &str) -> String {
    let quoted = shell_quote(name);
    if name.starts_with('-') {
        format!("-- {quoted}")
    } else {
        quoted.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_as_they_are() {
        assert_eq!(shell_quote("demo-sma-btc"), "demo-sma-btc");
        assert_eq!(name_arg("btc_1.v2"), "btc_1.v2");
    }

    #[test]
    fn names_the_shell_would_split_or_expand_are_quoted() {
        for name in [
            "nc with space",
            "it's",
            "$HOME",
            "a;rm -rf x",
            "*",
            "tab\there",
            "back`tick`",
            "",
            "\"dq\"",
            "é ü",
        ] {
            let quoted = shell_quote(name);
            assert_eq!(
                shlex::split(&quoted),
                Some(vec![name.to_string()]),
                "{name:?} quoted as {quoted}"
            );
        }
        assert_eq!(shell_quote("nc with space"), "'nc with space'");
    }

    #[test]
    fn a_leading_dash_goes_after_double_dash() {
        assert_eq!(name_arg("-x"), "-- -x");
        assert_eq!(name_arg("-a b"), "-- '-a b'");
    }
}
