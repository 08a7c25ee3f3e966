//! `enginectl audit [--strategy NAME] [--since WHEN] [-n N] [--json]`: who asked for
//! what, from `engine_audit` (every command, run and strategy edit or deletion,
//! written by triggers; it outlives command retention and deleted strategies).

use super::history::who;
use super::table::{self, Align, Table};
use super::{Finished, Target};
use anyhow::anyhow;
use chrono::{DateTime, Utc};
use engine_store::audit::{self as store, AuditFilter, AuditRecord};

/// `--since`: an RFC 3339 time, or a duration back from now (`90m`, `2d`).
pub fn parse_since(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let back = humantime::parse_duration(text).map_err(|_| {
        anyhow!("--since '{text}' is neither a time (2026-12-01T09:00:00Z) nor a duration back from now (90m, 2d)")
    })?;
    let back = chrono::Duration::from_std(back)
        .map_err(|_| anyhow!("--since '{text}' is too far back"))?;
    Ok(now - back)
}

/// The rows as a table: TIME, WHO, STRATEGY, WHAT.
pub fn render(rows: &[AuditRecord]) -> String {
    let mut t = Table::new(&[
        ("TIME (UTC)", Align::Left),
        ("WHO", Align::Left),
        ("ROLE", Align::Left),
        ("STRATEGY", Align::Left),
        ("WHAT", Align::Left),
    ]);
    for row in rows {
        let what = format!("{} {}", row.object, row.what);
        t.push(vec![
            table::timestamp(row.at),
            who(&row.who, row.on_behalf_of.as_deref())
                .trim_start_matches("by ")
                .to_string(),
            row.role.clone().unwrap_or_else(|| "-".into()),
            row.strategy_name.clone().unwrap_or_else(|| "-".into()),
            table::shorten(&what, 100),
        ]);
    }
    t.render()
}

pub async fn audit(
    target: &Target,
    strategy: Option<String>,
    since: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<Finished> {
    let since = since.map(|s| parse_since(s, Utc::now())).transpose()?;
    let pool = target.pool().await?;
    let filter = AuditFilter {
        strategy,
        since,
        limit: i64::try_from(limit).unwrap_or(i64::MAX),
    };
    let mut rows = store::audit(&pool, &filter)
        .await
        .map_err(|e| engine_store::operator::query_error(e, "read engine_audit"))?;
    // The triggers copy the rows as they are: a secret stored in clear is masked here.
    for row in &mut rows {
        row.before = row.before.as_ref().map(engine_protocol::secrets::mask);
        row.after = row.after.as_ref().map(engine_protocol::secrets::mask);
    }
    pool.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("nothing recorded in engine_audit for this filter");
    } else {
        print!("{}", render(&rows));
    }
    Ok(Finished::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_or_a_duration_back() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_since("2026-12-01T09:00:00Z", now).unwrap(),
            now - chrono::Duration::hours(1)
        );
        assert_eq!(
            parse_since("90m", now).unwrap(),
            now - chrono::Duration::minutes(90)
        );
        let err = parse_since("yesterday", now).unwrap_err().to_string();
        assert!(err.contains("neither a time"), "{err}");
    }
}
