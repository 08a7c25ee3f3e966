//! The layout of the manager's state directory, shared by the manager (which writes
//! it) and `enginectl` (which reads it), and the tail of a strategy's log (read by
//! `enginectl logs` and the dashboard's detail panel).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
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

/// The last `lines` lines of `file` (reading backwards in blocks, so a large file
/// costs only what is printed), and the file's length.
pub fn last_lines(file: &mut File, lines: usize) -> std::io::Result<(Vec<u8>, u64)> {
    const BLOCK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    if lines == 0 {
        return Ok((Vec::new(), len));
    }
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let newlines = buf.iter().filter(|b| **b == b'\n').count();
        // A final line without '\n' counts as a line too; one more '\n' marks its start.
        let needed = if buf.last().is_some_and(|b| *b == b'\n') || buf.is_empty() {
            lines + 1
        } else {
            lines
        };
        if newlines >= needed || start == 0 {
            break;
        }
        let from = start.saturating_sub(BLOCK);
        let mut block = vec![0; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
        start = from;
    }
    // Keep the last `lines` lines.
    let body_end = if buf.last() == Some(&b'\n') {
        buf.len() - 1
    } else {
        buf.len()
    };
    let mut seen = 0;
    let mut cut = 0;
    for (i, b) in buf[..body_end].iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                cut = i + 1;
                break;
            }
        }
    }
    Ok((buf.split_off(cut), len))
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

    fn tail_of(content: &str, lines: usize) -> String {
        let path = std::env::temp_dir().join(format!("log-tail-{}", Uuid::new_v4().simple()));
        std::fs::write(&path, content).unwrap();
        let mut file = File::open(&path).unwrap();
        let (tail, len) = last_lines(&mut file, lines).unwrap();
        assert_eq!(len, content.len() as u64);
        std::fs::remove_file(&path).unwrap();
        String::from_utf8(tail).unwrap()
    }

    #[test]
    fn last_lines_of_a_file() {
        assert_eq!(tail_of("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_of("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail_of("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_of("a\nb\nc\n", 0), "");
        assert_eq!(tail_of("", 3), "");
        // Across block boundaries.
        let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail_of(&big, 3), "line 19997\nline 19998\nline 19999\n");
        let all = tail_of(&big, 100_000);
        assert_eq!(all, big);
    }
}
