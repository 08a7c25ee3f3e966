//! Size-based rotation of the executors' log files (`{state_dir}/logs/<name>.log`),
//! done by the manager on every health tick with the copytruncate method.
//!
//! An executor holds its log open (the manager opened it `O_APPEND` at spawn and the
//! executor keeps the descriptor, so the log survives a manager restart). Renaming
//! the file would leave the executor writing to the renamed one, so instead the live
//! file is copied to `<name>.log.1` (after shifting `.1` → `.2` … and dropping the
//! oldest beyond the cap) and then truncated in place. Because every writer uses
//! `O_APPEND`, its next write lands at the new end of the file, not at its old
//! offset (no sparse hole). Lines written between the copy and the truncation —
//! a window of microseconds — can be lost; that is the price of copytruncate.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// When a log is rotated and how many old copies stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Rotate once the live file is larger than this many bytes; 0 turns rotation off.
    pub max_size: u64,
    /// Rotated copies kept (`.1` newest … `.keep` oldest); 0 truncates without a copy.
    pub keep: u32,
}

impl RotationPolicy {
    pub fn is_enabled(&self) -> bool {
        self.max_size > 0
    }
}

/// What one pass over a directory did.
#[derive(Debug, Default)]
pub struct RotationReport {
    /// Logs that were rotated, with their size before the rotation.
    pub rotated: Vec<(PathBuf, u64)>,
    /// Logs that could not be rotated, and why.
    pub failed: Vec<(PathBuf, io::Error)>,
}

/// `path` with `.{n}` appended: `demo.log` → `demo.log.3`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotate every `*.log` file directly in `dir` that is over the limit. A missing
/// directory is not an error (nothing has been logged yet).
pub fn rotate_dir(dir: &Path, policy: RotationPolicy) -> RotationReport {
    let mut report = RotationReport::default();
    if !policy.is_enabled() {
        return report;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return report,
        Err(err) => {
            report.failed.push((dir.to_path_buf(), err));
            return report;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_log = path.extension().is_some_and(|ext| ext == "log");
        if !is_log || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match rotate_if_larger(&path, policy) {
            Ok(Some(size)) => report.rotated.push((path, size)),
            Ok(None) => {}
            Err(err) => report.failed.push((path, err)),
        }
    }
    report
}

/// Rotate `path` if it is larger than `policy.max_size`; returns its size before
/// the rotation when it was rotated.
pub fn rotate_if_larger(path: &Path, policy: RotationPolicy) -> io::Result<Option<u64>> {
    if !policy.is_enabled() {
        return Ok(None);
    }
    let size = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    if size <= policy.max_size {
        return Ok(None);
    }
    copy_truncate(path, policy.keep)?;
    Ok(Some(size))
}

/// Shift the old copies, copy the live file to `.1`, then truncate it in place.
pub fn copy_truncate(path: &Path, keep: u32) -> io::Result<()> {
    let mut live = OpenOptions::new().read(true).write(true).open(path)?;
    if keep > 0 {
        remove_if_exists(&rotated_path(path, keep))?;
        for n in (1..keep).rev() {
            let from = rotated_path(path, n);
            if from.exists() {
                fs::rename(&from, rotated_path(path, n + 1))?;
            }
        }
        // Copy into a temporary name and rename, so `.1` is never half-written.
        let mut tmp = path.as_os_str().to_os_string();
        tmp.push(".rotating");
        let tmp = PathBuf::from(tmp);
        let result =
            copy_to_end(&mut live, &tmp).and_then(|()| fs::rename(&tmp, rotated_path(path, 1)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
    }
    live.set_len(0)?;
    Ok(())
}

/// Copy `live` from its start to its end into a new file at `to` (reading until
/// end of file, so what the writer appends while copying is included).
fn copy_to_end(live: &mut File, to: &Path) -> io::Result<()> {
    let mut out = File::create(to)?;
    live.seek(SeekFrom::Start(0))?;
    io::copy(live, &mut out)?;
    out.flush()?;
    out.sync_data()?;
    Ok(())
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Parse a size: a number of bytes, optionally with a unit: `B`, `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000),
/// case-insensitive, with or without a space: `10MiB`, `500k`, `1.5 GB`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let bad = || {
        format!(
            "invalid size '{text}': expected a number of bytes with an optional unit, \
             e.g. 10MiB, 500k, 1048576 (units: B, K/KiB, M/MiB, G/GiB, KB, MB, GB)"
        )
    };
    let number: f64 = number.replace('_', "").parse().map_err(|_| bad())?;
    let factor: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Bytes in the largest binary unit that keeps the number at least 1: `10.0 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let dir = std::env::temp_dir().join(format!("rotation-{}", Uuid::new_v4().simple()));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn appender(path: &Path) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    fn text(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("10M"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("500k"), Ok(500 * 1024));
        assert_eq!(parse_size("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_size(" 2kb "), Ok(2_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("64B"), Ok(64));
        for bad in ["", "MiB", "ten", "10XB", "-5", "1e999"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("e.g. 10MiB"), "{bad}: {err}");
        }
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(10 * 1024 * 1024), "10.0 MiB");
    }

    #[test]
    fn small_logs_are_left_alone() {
        let dir = TempDir::new();
        let path = dir.0.join("a.log");
        fs::write(&path, "short\n").unwrap();
        let policy = RotationPolicy {
            max_size: 100,
            keep: 3,
        };
        assert_eq!(rotate_if_larger(&path, policy).unwrap(), None);
        assert_eq!(text(&path), "short\n");
        assert!(!rotated_path(&path, 1).exists());
        // Off: never rotated, however large.
        let off = RotationPolicy {
            max_size: 0,
            keep: 3,
        };
        fs::write(&path, "x".repeat(1000)).unwrap();
        assert_eq!(rotate_if_larger(&path, off).unwrap(), None);
        assert!(rotate_dir(&dir.0, off).rotated.is_empty());
        // A missing file or directory is nothing to do.
        assert_eq!(
            rotate_if_larger(&dir.0.join("none.log"), policy).unwrap(),
            None
        );
        let report = rotate_dir(&dir.0.join("missing"), policy);
        assert!(report.rotated.is_empty() && report.failed.is_empty());
    }

    #[test]
    fn rotation_shifts_copies_and_caps_them() {
        let dir = TempDir::new();
        let path = dir.0.join("s.log");
        let policy = RotationPolicy {
            max_size: 10,
            keep: 2,
        };
        for round in 1..=4 {
            fs::write(&path, format!("round {round} line\n")).unwrap();
            let size = rotate_if_larger(&path, policy).unwrap();
            assert_eq!(size, Some(format!("round {round} line\n").len() as u64));
            assert_eq!(fs::metadata(&path).unwrap().len(), 0, "live file truncated");
        }
        assert_eq!(text(&rotated_path(&path, 1)), "round 4 line\n");
        assert_eq!(text(&rotated_path(&path, 2)), "round 3 line\n");
        assert!(!rotated_path(&path, 3).exists(), "capped at keep = 2");
        // No temporary file is left behind.
        let names: Vec<String> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn keep_zero_truncates_without_copies() {
        let dir = TempDir::new();
        let path = dir.0.join("z.log");
        fs::write(&path, "x".repeat(50)).unwrap();
        let policy = RotationPolicy {
            max_size: 10,
            keep: 0,
        };
        assert_eq!(rotate_if_larger(&path, policy).unwrap(), Some(50));
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        assert!(!rotated_path(&path, 1).exists());
    }

    #[test]
    fn an_append_writer_keeps_writing_at_the_new_end() {
        let dir = TempDir::new();
        let path = dir.0.join("w.log");
        // Like an executor: one O_APPEND descriptor held across the rotation.
        let mut writer = appender(&path);
        writeln!(writer, "{}", "before ".repeat(20)).unwrap();
        let report = rotate_dir(
            &dir.0,
            RotationPolicy {
                max_size: 64,
                keep: 5,
            },
        );
        assert_eq!(report.rotated.len(), 1, "{report:?}");
        assert!(report.failed.is_empty());
        writeln!(writer, "after").unwrap();
        // No hole of zeros where the old content was: the write went to offset 0.
        assert_eq!(text(&path), "after\n");
        assert!(text(&rotated_path(&path, 1)).starts_with("before before"));
    }

    #[test]
    fn only_live_logs_in_the_directory_are_rotated() {
        let dir = TempDir::new();
        let big = "y".repeat(100);
        fs::write(dir.0.join("a.log"), &big).unwrap();
        fs::write(dir.0.join("a.log.1"), &big).unwrap();
        fs::write(dir.0.join("notes.txt"), &big).unwrap();
        fs::write(dir.0.join("b.log"), "small").unwrap();
        let report = rotate_dir(
            &dir.0,
            RotationPolicy {
                max_size: 50,
                keep: 3,
            },
        );
        let rotated: Vec<_> = report.rotated.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(rotated, vec![dir.0.join("a.log")]);
        assert_eq!(text(&dir.0.join("a.log.2")), big, "the old .1 moved to .2");
        assert_eq!(text(&dir.0.join("notes.txt")), big);
        assert_eq!(text(&dir.0.join("b.log")), "small");
    }

    /// Regression: after a rotation the live log is shorter than the offset recorded
    /// at spawn; the tail must still show this run's last lines.
    #[test]
    fn a_rotated_log_still_gives_a_correct_tail() {
        let dir = TempDir::new();
        let path = dir.0.join("t.log");
        fs::write(&path, "earlier run\n".repeat(20)).unwrap();
        let mut writer = appender(&path);
        let offset = fs::metadata(&path).unwrap().len();
        writeln!(writer, "this run: one").unwrap();
        rotate_if_larger(
            &path,
            RotationPolicy {
                max_size: 10,
                keep: 1,
            },
        )
        .unwrap()
        .expect("rotated");
        writeln!(writer, "this run: two").unwrap();
        writeln!(writer, "this run: three").unwrap();
        assert_eq!(
            crate::process::log_tail(&path, offset, 2),
            "this run: two | this run: three"
        );
    }
}
