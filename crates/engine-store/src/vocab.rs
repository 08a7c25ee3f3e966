//! The words the database stores, as types: a strategy's observed [`Status`] and its
//! [`DesiredState`], an operator's [`CommandWord`], a command row's [`CommandStatus`].
//!
//! Each maps to a `TEXT` column with `sqlx::Type` (the same lowercase words as the
//! columns' CHECK constraints and the contract), so a row read with a word outside the
//! vocabulary is an error, never a silent default.
//!
//! `strategy_commands.command` has no CHECK constraint: operators may insert any word,
//! and an unknown one ends its row `failed` with a message. Rows read from that column
//! therefore keep the text as written; [`CommandWord`] is what is inserted, and what
//! [`crate::commands::parse_command`] turns a valid word into.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

pub use engine_protocol::Status;

/// A word outside its vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {vocabulary} '{word}'; expected one of {expected}")]
pub struct UnknownWord {
    /// What kind of word it should have been ("command", "desired state", ...).
    pub vocabulary: &'static str,
    pub word: String,
    /// The words that would be right, comma-separated.
    pub expected: String,
}

/// Defines `ALL`, `as_str`, `Display` and `FromStr` for a vocabulary enum.
macro_rules! vocabulary {
    ($ty:ident, $what:literal, [$($variant:ident => $word:literal),+ $(,)?]) => {
        impl $ty {
            /// Every word, in the order the contract lists them.
            pub const ALL: [$ty; [$($word),+].len()] = [$($ty::$variant),+];

            /// The word as the database stores it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word),+
                }
            }

            /// Every word, comma-separated, in the order of [`Self::ALL`].
            pub fn list() -> String {
                Self::ALL.map(Self::as_str).join(", ")
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                Self::ALL
                    .into_iter()
                    .find(|w| w.as_str() == s)
                    .ok_or_else(|| UnknownWord {
                        vocabulary: $what,
                        word: s.to_string(),
                        expected: Self::list(),
                    })
            }
        }
    };
}

/// What operators last asked for (`strategy_configs.desired_state`), as set by a
/// command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    Paused,
    Stopped,
}

vocabulary!(DesiredState, "desired state", [
    Running => "running",
    Paused => "paused",
    Stopped => "stopped",
]);

/// An operator's command word (`strategy_commands.command`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum CommandWord {
    Start,
    Stop,
    Restart,
    Update,
    Pause,
    Resume,
    /// Cancel one run (`{"run_id": …}`) or every queued and running run of the
    /// strategy (CONTRACT.md §4).
    Cancel,
    /// One execution of an interval strategy now (CONTRACT.md §5).
    Trigger,
    /// Global, `{"node": …}`: the node hands its strategies to others and takes no
    /// new ones (CONTRACT.md §7).
    Drain,
    /// Global, `{"node": …}`: the node takes new strategies again.
    Undrain,
    /// `{"node": …}`: stop the strategy on its node, start it on that one.
    Move,
}

vocabulary!(CommandWord, "command", [
    Start => "start",
    Stop => "stop",
    Restart => "restart",
    Update => "update",
    Pause => "pause",
    Resume => "resume",
    Cancel => "cancel",
    Trigger => "trigger",
    Drain => "drain",
    Undrain => "undrain",
    Move => "move",
]);

impl CommandWord {
    /// Whether a row with no `strategy_id` (a global command, the kill switch) may
    /// carry it: pause, resume and stop, and the cluster's drain and undrain.
    pub fn may_be_global(self) -> bool {
        matches!(
            self,
            CommandWord::Stop
                | CommandWord::Pause
                | CommandWord::Resume
                | CommandWord::Drain
                | CommandWord::Undrain
        )
    }

    /// Whether it is only ever global: drain and undrain name a node, not a strategy.
    pub fn only_global(self) -> bool {
        matches!(self, CommandWord::Drain | CommandWord::Undrain)
    }
}

/// Where a command row is in its life (`strategy_commands.status`):
/// `pending` → `processing` → `executed` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum CommandStatus {
    Pending,
    Processing,
    Executed,
    Failed,
}

vocabulary!(CommandStatus, "command status", [
    Pending => "pending",
    Processing => "processing",
    Executed => "executed",
    Failed => "failed",
]);

impl CommandStatus {
    /// Executed or failed: the row will not change again.
    pub fn is_finished(self) -> bool {
        matches!(self, CommandStatus::Executed | CommandStatus::Failed)
    }
}

/// What a schedule does when a run is due while its last run is unfinished
/// (`strategy_schedules.overlap`, CONTRACT.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Overlap {
    /// Make no run; count it in `skipped_overlap` (the default).
    Skip,
    /// Make the run; it waits in the queue behind the last one.
    Queue,
    /// Cancel the unfinished runs (a `cancel` command each), then make the run.
    CancelPrevious,
}

vocabulary!(Overlap, "overlap", [
    Skip => "skip",
    Queue => "queue",
    CancelPrevious => "cancel_previous",
]);

/// What a schedule does with the due times that passed while no manager served it
/// (`strategy_schedules.catch_up`, CONTRACT.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum CatchUp {
    /// One run for all of them (the default); the others count as `missed`.
    One,
    /// No run; each counts as `missed`.
    None,
}

vocabulary!(CatchUp, "catch_up", [
    One => "one",
    None => "none",
]);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::TestDb;
    use sqlx::PgPool;

    /// Encode `word` as a query parameter, decode it back from the database.
    async fn round_trip<T>(pool: &PgPool, word: T) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres>
            + sqlx::Encode<'static, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + Send
            + Unpin
            + 'static,
    {
        sqlx::query_scalar("SELECT $1::text")
            .bind(word)
            .fetch_one(pool)
            .await
            .expect("round trip")
    }

    /// What the database returns for `SELECT 'word'` read as `T`.
    async fn read<T>(pool: &PgPool, word: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        sqlx::query_scalar("SELECT $1::text")
            .bind(word)
            .fetch_one(pool)
            .await
    }

    #[test]
    fn words_parse_and_print_as_the_contract_spells_them() {
        for w in CommandWord::ALL {
            assert_eq!(w.to_string().parse::<CommandWord>(), Ok(w));
            assert_eq!(serde_json::to_value(w).unwrap(), w.as_str());
        }
        for w in DesiredState::ALL {
            assert_eq!(w.as_str().parse::<DesiredState>(), Ok(w));
            assert_eq!(serde_json::to_value(w).unwrap(), w.as_str());
        }
        for w in CommandStatus::ALL {
            assert_eq!(w.as_str().parse::<CommandStatus>(), Ok(w));
            assert_eq!(serde_json::to_value(w).unwrap(), w.as_str());
        }
        for w in Overlap::ALL {
            assert_eq!(w.as_str().parse::<Overlap>(), Ok(w));
            assert_eq!(serde_json::to_value(w).unwrap(), w.as_str());
        }
        for w in CatchUp::ALL {
            assert_eq!(w.as_str().parse::<CatchUp>(), Ok(w));
        }
        assert_eq!(
            "never".parse::<Overlap>().unwrap_err().to_string(),
            "unknown overlap 'never'; expected one of skip, queue, cancel_previous"
        );
        assert_eq!(
            CommandWord::list(),
            "start, stop, restart, update, pause, resume, cancel, trigger, drain, undrain, move"
        );
        assert_eq!(
            "Stop".parse::<CommandWord>().unwrap_err().to_string(),
            "unknown command 'Stop'; expected one of start, stop, restart, update, pause, resume, cancel, trigger, drain, undrain, move"
        );
        assert!("".parse::<DesiredState>().is_err());
        assert!("done".parse::<CommandStatus>().is_err());
    }

    #[test]
    fn live_and_up_statuses() {
        let live: Vec<Status> = Status::ALL.into_iter().filter(|s| s.is_live()).collect();
        assert_eq!(live, [Status::Running, Status::Paused]);
        let up: Vec<Status> = Status::ALL.into_iter().filter(|s| s.is_up()).collect();
        assert_eq!(
            up,
            [
                Status::Starting,
                Status::Running,
                Status::Paused,
                Status::Stopping
            ]
        );
        let finished: Vec<_> = CommandStatus::ALL
            .into_iter()
            .filter(|s| s.is_finished())
            .collect();
        assert_eq!(finished, [CommandStatus::Executed, CommandStatus::Failed]);
    }

    #[tokio::test]
    async fn every_word_round_trips_through_the_database() {
        let db = TestDb::create().await;
        for w in Status::ALL {
            assert_eq!(round_trip(&db.pool, w).await, w);
            assert_eq!(read::<Status>(&db.pool, w.as_str()).await.unwrap(), w);
        }
        for w in DesiredState::ALL {
            assert_eq!(round_trip(&db.pool, w).await, w);
        }
        for w in CommandWord::ALL {
            assert_eq!(round_trip(&db.pool, w).await, w);
        }
        for w in CommandStatus::ALL {
            assert_eq!(round_trip(&db.pool, w).await, w);
        }
        db.drop().await;
    }

    #[tokio::test]
    async fn an_unknown_word_read_is_an_error() {
        let db = TestDb::create().await;
        assert!(read::<Status>(&db.pool, "runing").await.is_err());
        assert!(read::<Status>(&db.pool, "Running").await.is_err());
        assert!(read::<DesiredState>(&db.pool, "").await.is_err());
        assert!(read::<DesiredState>(&db.pool, "started").await.is_err());
        assert!(read::<CommandWord>(&db.pool, "strat").await.is_err());
        assert!(read::<CommandStatus>(&db.pool, "done").await.is_err());
        db.drop().await;
    }

    #[tokio::test]
    async fn the_columns_check_constraints_hold_the_same_words() {
        let db = TestDb::create().await;
        // Every word of each vocabulary is accepted by its column...
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO strategy_configs (name, strategy_type) VALUES ('v', 't') RETURNING id",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        for s in Status::ALL {
            set(&db.pool, "status", id, s.as_str()).await.unwrap();
        }
        for d in DesiredState::ALL {
            set(&db.pool, "desired_state", id, d.as_str())
                .await
                .unwrap();
        }
        // ... and nothing else is.
        assert!(set(&db.pool, "status", id, "done").await.is_err());
        assert!(set(&db.pool, "desired_state", id, "starting")
            .await
            .is_err());
        let cmd = crate::commands::insert_command_row(
            &db.pool,
            Some(id),
            CommandWord::Start,
            &serde_json::json!({}),
            None,
        )
        .await
        .unwrap();
        for s in CommandStatus::ALL {
            sqlx::query("UPDATE strategy_commands SET status = $2 WHERE id = $1")
                .bind(cmd.id)
                .bind(s)
                .execute(&db.pool)
                .await
                .unwrap();
        }
        db.drop().await;
    }

    #[tokio::test]
    async fn rows_carry_typed_words_and_refuse_unknown_ones() {
        let db = TestDb::create().await;
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO strategy_configs (name, strategy_type) VALUES ('r', 't') RETURNING id",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let row = crate::manager::load_strategy(&db.pool, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (row.status, row.desired_state),
            (Status::Stopped, DesiredState::Stopped)
        );
        crate::manager::write_desired(&db.pool, id, DesiredState::Paused, false, None)
            .await
            .unwrap();
        let record = crate::operator::strategy(&db.pool, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.desired_state, DesiredState::Paused);
        let cmd = crate::commands::insert_command_row(
            &db.pool,
            Some(id),
            CommandWord::Pause,
            &serde_json::json!({}),
            None,
        )
        .await
        .unwrap();
        let progress = crate::operator::command_progress(&db.pool, &[cmd.id])
            .await
            .unwrap();
        assert_eq!(progress[0].status, CommandStatus::Pending);
        // strategy_events has no CHECK on its status columns: a word the manager
        // never writes is refused when read, not shown as something else.
        sqlx::query(
            "INSERT INTO strategy_events (strategy_id, new_status, node) VALUES ($1, 'runing', 'n')",
        )
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
        assert!(crate::operator::history(&db.pool, &record, 10)
            .await
            .is_err());
        assert!(crate::api::recent_events(&db.pool, id, 10).await.is_err());
        db.drop().await;
    }

    async fn set(
        pool: &PgPool,
        column: &str,
        id: uuid::Uuid,
        word: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "UPDATE strategy_configs SET {column} = $2 WHERE id = $1"
        ))
        .bind(id)
        .bind(word)
        .execute(pool)
        .await
        .map(|_| ())
    }
}
