//! `enginectl logs NAME [-f] [-n N]`: the strategy's executor log,
//! `{state-dir}/logs/<name>.log` (stdout and stderr of every run, appended), read on
//! this host. With `-f` it follows the file across rotations (a file that shrank
//! was rotated: it is read again from its start).

use super::{store, Finished, Target};
use anyhow::{bail, Context};
use engine_protocol::state_dir::{last_lines, log_file_name};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often `-f` looks for new bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The log file of strategy `name`. The name is checked against the database;
/// without a database the file is looked up by name alone (logs matter most when
/// things are broken).
pub async fn log_path(target: &Target, name: &str) -> anyhow::Result<PathBuf> {
    let id = match target.pool().await {
        Ok(pool) => {
            let strategy = store::resolve_one(&pool, name).await;
            pool.close().await;
            strategy?.id
        }
        Err(err) => {
            eprintln!("note: {err:#}; looking for the log by name only");
            Uuid::nil()
        }
    };
    Ok(target.logs_dir().join(log_file_name(name, id)))
}

/// A log being followed: where we are in it.
struct Follower {
    path: PathBuf,
    file: File,
    position: u64,
}

impl Follower {
    /// What was appended since the last call (after a rotation: the new content).
    fn poll(&mut self) -> anyhow::Result<Vec<u8>> {
        let len = match std::fs::metadata(&self.path) {
            Ok(meta) => meta.len(),
            // Between a rotation's copy and a new spawn the file may briefly vanish.
            Err(_) => return Ok(Vec::new()),
        };
        if len < self.position {
            // Rotated (copied and truncated): what is there now is new.
            self.position = 0;
            self.file = open(&self.path)?;
        }
        let mut fresh = Vec::new();
        if len > self.position {
            self.file.seek(SeekFrom::Start(self.position))?;
            (&mut self.file)
                .take(len - self.position)
                .read_to_end(&mut fresh)?;
            self.position += fresh.len() as u64;
        }
        Ok(fresh)
    }
}

fn write_out(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

/// `enginectl logs`.
pub async fn logs(
    target: &Target,
    name: &str,
    follow: bool,
    lines: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<Finished> {
    let path = log_path(target, name).await?;
    // File I/O runs on the blocking pool, never on the async threads.
    let (tail, mut follower) = tokio::task::spawn_blocking(move || {
        let mut file = open(&path)?;
        let (tail, position) = last_lines(&mut file, lines)
            .with_context(|| format!("cannot read {}", path.display()))?;
        anyhow::Ok((
            tail,
            Follower {
                path,
                file,
                position,
            },
        ))
    })
    .await??;
    write_out(&tail)?;
    if !follow {
        return Ok(Finished::Ok);
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Finished::Ok),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        let (fresh, back) = tokio::task::spawn_blocking(move || {
            let fresh = follower.poll();
            (fresh, follower)
        })
        .await?;
        follower = back;
        write_out(&fresh?)?;
    }
}

fn open(path: &Path) -> anyhow::Result<File> {
    match File::open(path) {
        Ok(file) => Ok(file),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "no log at {}: the strategy has not been started on this host yet, or --state-dir / \
             ENGINE_STATE_DIR is not the manager's state directory",
            path.display()
        ),
        Err(err) => Err(anyhow::Error::new(err).context(format!("cannot open {}", path.display()))),
    }
}
