//! Following a run's outbox (`{runs_dir}/{run_id}.out`): the [`RunOutput`] lines its
//! process appends, read from where the last read stopped. A line is taken only once
//! it is complete (ends with a newline), so a line being written is read next time.

use engine_protocol::runs::RunOutput;
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The reading side of one outbox.
pub struct Outbox {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    /// Bytes read so far (complete lines and the partial one).
    offset: u64,
    /// The start of a line not complete yet.
    partial: Vec<u8>,
    buf: Vec<u8>,
}

/// A line that is not a [`RunOutput`] (logged and skipped).
#[derive(Debug)]
pub struct BadLine {
    pub line: String,
    pub error: serde_json::Error,
}

impl Outbox {
    /// Follow `path` from its start (it may not exist yet).
    pub fn new(path: &Path) -> Outbox {
        Outbox {
            path: path.to_path_buf(),
            file: None,
            offset: 0,
            partial: Vec::new(),
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// The complete lines written since the last read. A file that does not exist
    /// yet reads as empty.
    pub async fn read_new(&mut self) -> io::Result<Vec<Result<RunOutput, BadLine>>> {
        if self.file.is_none() {
            match tokio::fs::File::open(&self.path).await {
                Ok(mut file) => {
                    file.seek(io::SeekFrom::Start(self.offset)).await?;
                    self.file = Some(file);
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(err) => return Err(err),
            }
        }
        let file = self.file.as_mut().expect("opened above");
        self.buf.clear();
        let n = file.read_to_end(&mut self.buf).await?;
        self.offset += n as u64;
        Ok(self.split_lines())
    }

    fn split_lines(&mut self) -> Vec<Result<RunOutput, BadLine>> {
        let mut out = Vec::new();
        let mut rest: &[u8] = &self.buf;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(nl);
            rest = &tail[1..];
            let line: std::borrow::Cow<[u8]> = if self.partial.is_empty() {
                head.into()
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(head);
                whole.into()
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            out.push(serde_json::from_slice(&line).map_err(|error| BadLine {
                line: String::from_utf8_lossy(&line).chars().take(200).collect(),
                error,
            }));
        }
        self.partial.extend_from_slice(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn lines_are_read_once_each_and_only_when_complete() {
        let dir = std::env::temp_dir().join(format!("outbox-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.out");
        let mut outbox = Outbox::new(&path);
        assert!(outbox.read_new().await.unwrap().is_empty(), "no file yet");
        let mut file = std::fs::File::create(&path).unwrap();
        write!(
            file,
            "{{\"type\":\"started\",\"pid\":7,\"total_items\":2}}\n{{\"type\":\"stage_"
        )
        .unwrap();
        let lines = outbox.read_new().await.unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0].as_ref().unwrap(),
            &RunOutput::Started {
                pid: 7,
                total_items: 2
            }
        );
        write!(file, "completed\",\"stage\":\"loading\"}}\n\nnot json\n").unwrap();
        let lines = outbox.read_new().await.unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].as_ref().unwrap(),
            &RunOutput::StageCompleted {
                stage: "loading".into()
            }
        );
        assert_eq!(lines[1].as_ref().unwrap_err().line, "not json");
        assert!(outbox.read_new().await.unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
