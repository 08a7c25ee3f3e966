//! `--executor-user NAME`: every executor (a strategy's, a run's, a `--validate`)
//! runs as that user and its primary group, with no supplementary groups, so strategy
//! code cannot read what only the manager's user may (its secrets and tokens files,
//! its logs, the state of other tools).
//!
//! No `pre_exec` (the workspace forbids `unsafe`): the standard library's spawn does
//! the drop itself when a uid is set (`setgroups(0)`, `setgid`, `setuid` in the child
//! before `exec`). What the executor still needs is made reachable here, at start-up:
//! the executor binary (checked: every directory on its path searchable by the user,
//! the file executable by it), the control socket (group-owned by the user's group,
//! mode 0660), the state and runs directories (searchable, not listable), and each
//! run's bars file and outbox ([`hand_over`]). Executor logs are opened by the
//! manager and handed over as file descriptors, so the logs directory stays the
//! manager's alone (0700). Limits (cgroups, rlimits) are placed by the manager on
//! the pid, which needs no right of the executor's.

use engine_protocol::executor_env::RunAs;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why `--executor-user` cannot be used as given.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorUserError {
    #[error("--executor-user {name}: no such user on this host (check `getent passwd {name}`)")]
    Unknown { name: String },
    #[error("--executor-user {name}: cannot look the user up")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("--executor-user {name} needs the manager to run as root (or with CAP_SETUID and CAP_SETGID) to start processes as another user; it runs as uid {uid}: start it as root, or drop --executor-user / ENGINE_EXECUTOR_USER")]
    NotPrivileged { name: String, uid: u32 },
    #[error("--executor-user {name} cannot {what} {}: {reason}", path.display())]
    Unreachable {
        name: String,
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot prepare {} for --executor-user {name}", path.display())]
    Prepare {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Look `name` up, check that this process may become it, that it can run
/// `executor` and reach `state_dir`, and make the state, logs and runs directories
/// what it needs (see the module's notes).
pub fn prepare(
    name: &str,
    executor: &Path,
    state_dir: &Path,
    logs_dir: &Path,
    runs_dir: &Path,
) -> Result<RunAs, ExecutorUserError> {
    let user = lookup(name)?;
    let euid = rustix::process::geteuid().as_raw();
    if euid != 0 && !engine_protocol::procfs::may_set_ids() {
        return Err(ExecutorUserError::NotPrivileged {
            name: name.to_string(),
            uid: euid,
        });
    }
    if user.uid == 0 {
        return Ok(user);
    }
    let unreachable = |what, path: &Path, reason: String| ExecutorUserError::Unreachable {
        name: name.to_string(),
        what,
        path: path.to_path_buf(),
        reason,
    };
    searchable_path(&user, executor).map_err(|r| unreachable("run", executor, r))?;
    let meta = fs::metadata(executor).map_err(|e| unreachable("run", executor, e.to_string()))?;
    if !granted(&meta, &user, 0o1) {
        return Err(unreachable(
            "run",
            executor,
            format!(
                "the file (mode {:04o}) is not executable by it; chmod o+x it",
                meta.mode() & 0o7777
            ),
        ));
    }
    let prepare_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExecutorUserError::Prepare {
            name: name.to_string(),
            path,
            source,
        }
    };
    for dir in [state_dir, logs_dir, runs_dir] {
        fs::create_dir_all(dir).map_err(prepare_err(dir))?;
    }
    // Searchable by the user (the control socket is in it), not listable.
    add_search(state_dir).map_err(prepare_err(state_dir))?;
    searchable_path(&user, &state_dir.join("control.sock"))
        .map_err(|r| unreachable("reach the control socket in", state_dir, r))?;
    set_mode(runs_dir, 0o711).map_err(prepare_err(runs_dir))?;
    set_mode(logs_dir, 0o700).map_err(prepare_err(logs_dir))?;
    Ok(user)
}

/// The user `name`: uid, primary group and home.
fn lookup(name: &str) -> Result<RunAs, ExecutorUserError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        }),
        Ok(None) => Err(ExecutorUserError::Unknown {
            name: name.to_string(),
        }),
        Err(source) => Err(ExecutorUserError::Lookup {
            name: name.to_string(),
            source,
        }),
    }
}

/// Whether `user` could read `path` (every directory above it searchable, the file
/// readable by it): the manager warns when its own private files are.
pub fn can_read(user: &RunAs, path: &Path) -> bool {
    searchable_path(user, path).is_ok()
        && fs::metadata(path).is_ok_and(|meta| granted(&meta, user, 0o4))
}

/// Give `path` (the control socket) to the user's group, read-write for the group
/// only: the user's executors may connect, nobody else but the manager.
pub fn share_socket(path: &Path, user: &RunAs) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, None, Some(user.gid))?;
    set_mode(path, 0o660)
}

/// Make `path` (a run's bars file or outbox) the user's, mode 0600: its process
/// reads and writes it; the manager, as root, still does.
pub fn hand_over(path: &Path, user: &RunAs) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))?;
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Add search (`x`) for group and others to `dir`, keeping the rest of its mode.
fn add_search(dir: &Path) -> std::io::Result<()> {
    let mode = fs::metadata(dir)?.mode() & 0o7777;
    if mode & 0o011 != 0o011 {
        set_mode(dir, mode | 0o011)?;
    }
    Ok(())
}

/// Whether `user` (its uid and primary group alone: supplementary groups are
/// dropped) has every bit of `want` (`0o4` read, `0o2` write, `0o1` execute/search)
/// on a file with `meta`.
fn granted(meta: &fs::Metadata, user: &RunAs, want: u32) -> bool {
    if user.uid == 0 {
        return true;
    }
    let mode = meta.mode();
    let bits = if meta.uid() == user.uid {
        mode >> 6
    } else if meta.gid() == user.gid {
        mode >> 3
    } else {
        mode
    };
    bits & want == want
}

/// `Ok` when `user` may search every directory above `path` (the directories that
/// exist); else the first that it may not, in words.
fn searchable_path(user: &RunAs, path: &Path) -> Result<(), String> {
    let absolute = std::path::absolute(path).map_err(|e| e.to_string())?;
    for dir in absolute.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        if !granted(&meta, user, 0o1) {
            return Err(format!(
                "the directory {} (mode {:04o}, owner uid {}) is not searchable by it; chmod o+x it or choose a path under directories it may enter",
                dir.display(),
                meta.mode() & 0o7777,
                meta.uid()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> RunAs {
        RunAs {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            home: "/nonexistent".into(),
        }
    }

    #[test]
    fn a_private_directory_on_the_way_is_named() {
        let base = std::env::temp_dir().join(format!("exec-user-{}", uuid::Uuid::new_v4()));
        let private = base.join("private");
        fs::create_dir_all(private.join("state")).unwrap();
        set_mode(&base, 0o755).unwrap();
        set_mode(&private, 0o700).unwrap();
        let err = searchable_path(&nobody(), &private.join("state/control.sock")).unwrap_err();
        assert!(err.contains(&private.display().to_string()), "{err}");
        assert!(err.contains("0700"), "{err}");
        set_mode(&private, 0o711).unwrap();
        assert_eq!(
            searchable_path(&nobody(), &private.join("state/control.sock")),
            Ok(())
        );
        let tokens = private.join("tokens");
        fs::write(&tokens, "alice operate 00").unwrap();
        set_mode(&tokens, 0o644).unwrap();
        assert!(can_read(&nobody(), &tokens));
        set_mode(&tokens, 0o600).unwrap();
        assert!(!can_read(&nobody(), &tokens));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn an_unknown_user_is_refused_by_name() {
        let err = lookup("no-such-user-here").unwrap_err();
        assert!(err.to_string().contains("no such user"), "{err}");
        let found = lookup("nobody").expect("nobody exists on this host");
        assert_eq!(found.uid, 65534);
    }
}
