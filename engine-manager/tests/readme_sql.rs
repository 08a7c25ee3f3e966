//! Every ```sql block of README.md runs, in order, against a migrated database that
//! holds the demo's strategies as `ops/demo.sh` leaves them (registered by the
//! demo's own SQL, and running). A block that must fail says so inside it with a
//! line `-- expect error: TEXT`, and then it must fail with a message containing TEXT.
//! So the documentation cannot drift from the schema.

mod common;

use common::TestEngine;
use std::path::Path;

fn workspace_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The ```sql blocks of a Markdown text, each with the line it starts on.
fn sql_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (number, line) in markdown.lines().enumerate() {
        match current.as_mut() {
            None if line.trim_start() == "```sql" => current = Some((number + 1, String::new())),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```sql block in README.md");
    blocks
}

/// The SQL `ops/demo.sh` runs to register the demo strategies (its `db <<'SQL'` heredoc).
fn demo_registration_sql() -> String {
    let script = workspace_file("ops/demo.sh");
    let start = script
        .find("register_demo_strategies() {")
        .expect("ops/demo.sh has register_demo_strategies");
    let body = &script[start..];
    let from = body
        .find("<<'SQL'\n")
        .expect("a heredoc in register_demo_strategies")
        + 8;
    let to = body[from..].find("\nSQL\n").expect("the heredoc's end") + from;
    body[from..to].to_string()
}

fn expected_error(block: &str) -> Option<&str> {
    block
        .lines()
        .find_map(|line| line.trim().strip_prefix("-- expect error:"))
        .map(str::trim)
}

#[test]
fn sql_blocks_are_found() {
    let blocks = sql_blocks("x\n```sql\nSELECT 1;\n```\n```sh\nls\n```\n```sql\n-- expect error: boom\nSELECT x;\n```\n");
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0], (2, "SELECT 1;\n".to_string()));
    assert_eq!(expected_error(&blocks[1].1), Some("boom"));
}

#[tokio::test]
async fn every_sql_block_of_the_readme_runs() {
    let engine = TestEngine::new().await;
    sqlx::raw_sql(&demo_registration_sql())
        .execute(&engine.pool)
        .await
        .expect("the demo's registration SQL runs");
    // As the demo leaves them: running (the manager would have started them).
    sqlx::query("UPDATE strategy_configs SET status = 'running', desired_state = 'running'")
        .execute(&engine.pool)
        .await
        .unwrap();

    let readme = workspace_file("README.md");
    let blocks = sql_blocks(&readme);
    assert!(
        blocks.len() >= 5,
        "README.md has only {} sql blocks",
        blocks.len()
    );
    let mut failures = Vec::new();
    for (line, block) in &blocks {
        let outcome = sqlx::raw_sql(block).execute(&engine.pool).await;
        match (expected_error(block), outcome) {
            (None, Ok(_)) => {}
            (None, Err(e)) => failures.push(format!("README.md:{line}: {e}\n{block}")),
            (Some(want), Ok(_)) => failures.push(format!(
                "README.md:{line}: expected an error containing {want:?}, but it ran\n{block}"
            )),
            (Some(want), Err(e)) => {
                let message = match &e {
                    sqlx::Error::Database(db) => db.message().to_string(),
                    other => other.to_string(),
                };
                if !message.contains(want) {
                    failures.push(format!(
                        "README.md:{line}: expected an error containing {want:?}, got {message:?}\n{block}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // What the command blocks inserted really is there, by name.
    let stops: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM strategy_commands c JOIN strategy_configs s ON s.id = c.strategy_id \
         WHERE s.name = 'demo-sma-btc' AND c.command = 'stop'",
    )
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert!(stops >= 2, "the README's stops for demo-sma-btc: {stops}");
    engine.finish().await;
}
