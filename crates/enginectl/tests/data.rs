//! `enginectl data generate`, `data import` and `data` against a real PostgreSQL:
//! the real binary, a fresh database per test.

#![allow(clippy::too_many_lines)] // a test reads best as one story

use engine_protocol::runs::bars_file::Bar;
use engine_store::manager;
use engine_store::market;
use sqlx::postgres::{PgConnectOptions, PgPool};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Db {
    pool: PgPool,
    url: String,
    options: PgConnectOptions,
    name: String,
}

impl Db {
    async fn create() -> Db {
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let name = format!("data_test_{}", uuid::Uuid::new_v4().simple());
        let options = manager::connect_options(&admin).unwrap().database(&name);
        manager::create_database(&options, &name).await.unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options.clone())
            .await
            .unwrap();
        manager::migrate(&pool).await.unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&name);
        Db {
            pool,
            url: url.to_string(),
            options,
            name,
        }
    }

    async fn drop(self) {
        self.pool.close().await;
        manager::drop_database(&self.options, &self.name)
            .await
            .unwrap();
    }

    /// Run `enginectl args…` against this database.
    fn ctl(&self, args: &[&str]) -> Output {
        let output = Command::new(env!("CARGO_BIN_EXE_enginectl"))
            .args(args)
            .env("DATABASE_URL", &self.url)
            .output()
            .expect("run enginectl");
        Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn bars(&self, symbol: &str, interval: &str) -> Vec<Bar> {
        market::bars(&self.pool, symbol, interval).await.unwrap()
    }

    async fn count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM market_bars")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

#[derive(Debug)]
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    #[track_caller]
    fn ok(self) -> Output {
        assert_eq!(self.code, 0, "enginectl failed: {self:#?}");
        self
    }

    #[track_caller]
    fn failed(self) -> Output {
        assert_eq!(self.code, 1, "enginectl should have failed: {self:#?}");
        self
    }
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("data-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const GENERATE: [&str; 12] = [
    "data",
    "generate",
    "--symbols",
    "20",
    "--span",
    "400days",
    "--interval",
    "1d",
    "--end",
    "2025-06-30",
    "--seed",
    "7",
];

#[tokio::test]
async fn generate_is_deterministic_and_realistic() {
    let db = Db::create().await;
    let out = db.ctl(&GENERATE).ok();
    assert!(
        out.stdout
            .starts_with("generated 8,000 bars: 20 symbols × 400 1d bars"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("bars/s"), "{out:#?}");
    let symbols: Vec<(String, Option<String>, Option<String>, bool)> =
        sqlx::query_as("SELECT symbol, name, sector, active FROM securities ORDER BY symbol")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(symbols.len(), 20);
    assert!(symbols
        .iter()
        .all(|(_, n, s, a)| n.is_some() && s.is_some() && *a));
    let sectors: HashSet<_> = symbols.iter().map(|s| s.2.clone()).collect();
    assert!(sectors.len() >= 4, "sectors: {sectors:?}");

    let mut first_run = Vec::new();
    let mut bursts = 0;
    for (symbol, ..) in &symbols {
        let bars = db.bars(symbol, "1d").await;
        assert_eq!(bars.len(), 400, "{symbol}");
        assert_eq!(bars[399].ts.to_rfc3339(), "2025-06-30T00:00:00+00:00");
        for (i, b) in bars.iter().enumerate() {
            assert!(
                b.low > 0.0 && b.low <= b.open.min(b.close),
                "{symbol} {b:?}"
            );
            assert!(b.high >= b.open.max(b.close), "{symbol} {b:?}");
            if i >= 20 {
                let mean = bars[i - 20..i].iter().map(|b| b.volume).sum::<f64>() / 20.0;
                bursts += usize::from(b.volume > 3.0 * mean);
            }
        }
        first_run.push(bars);
    }
    // 2 % of bars start a burst of 3–8×: about 150 in 7,600; noise takes some away.
    assert!(bursts > 40, "volume bursts: {bursts}");

    // The same flags again, on one connection in one transaction instead of two:
    // the same bars, replacing the stored ones.
    let mut one_job = GENERATE.to_vec();
    one_job.extend(["--jobs", "1"]);
    let out = db.ctl(&one_job).ok();
    assert!(
        out.stdout.contains("replacing 8,000 stored bars"),
        "{out:#?}"
    );
    assert_eq!(db.count().await, 8_000);
    for ((symbol, ..), before) in symbols.iter().zip(&first_run) {
        assert_eq!(&db.bars(symbol, "1d").await, before, "{symbol}");
    }
    // Another seed: other symbols and other prices.
    let mut other = GENERATE;
    other[11] = "8";
    db.ctl(&other).ok();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM securities")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(count > 20, "seed 8 names other tickers");

    let status = db.ctl(&["data"]).ok();
    assert!(status.stdout.contains("securities: "), "{status:#?}");
    assert!(status.stdout.contains("1d"), "{status:#?}");
    let json = db.ctl(&["data", "status", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["intervals"][0]["interval"], "1d");
    assert_eq!(v["intervals"][0]["bars"], i64::from(count as i32) * 400);
    db.drop().await;
}

#[tokio::test]
async fn explicit_tickers_and_minute_bars() {
    let db = Db::create().await;
    db.ctl(&[
        "data",
        "generate",
        "--tickers",
        "DEMO",
        "--span",
        "1day",
        "--interval",
        "1m",
        "--end",
        "2025-06-30T12:00:00Z",
    ])
    .ok();
    let bars = db.bars("DEMO", "1m").await;
    assert_eq!(bars.len(), 1440);
    assert_eq!(bars[1439].ts.to_rfc3339(), "2025-06-30T12:00:00+00:00");
    let out = db.ctl(&["data", "generate", "--symbols", "0"]).failed();
    assert!(
        out.stderr.contains("--symbols 0 generates nothing"),
        "{out:#?}"
    );
    db.drop().await;
}

#[tokio::test]
async fn import_reads_each_header_style() {
    let db = Db::create().await;
    let dir = scratch();
    let yahoo = write(
        &dir,
        "aapl.csv",
        "Date,Open,High,Low,Close,Adj Close,Volume\n\
         2024-01-02,187.15,188.44,183.89,185.64,184.94,82488700\n\
         2024-01-03,184.22,185.88,183.43,184.25,183.55,58414500\n\
         2024-01-05,181.99,182.76,180.17,181.18,180.50,62379700\n",
    );
    let unix = write(
        &dir,
        "btc.csv",
        "timestamp,open,high,low,close,volume\n\
         1704067200,42000,42100,41900,42050,12.5\n\
         1704070800,42050,42300,42000,42200,8\n",
    );
    let rfc = write(
        &dir,
        "eth-minutes.csv",
        "\u{feff}\"datetime\",\"open\",\"high\",\"low\",\"close\"\r\n\
         2024-01-01T00:02:00Z,2300,2301,2299,2300.5\r\n\
         2024-01-01T00:01:00Z,2299,2300,2298,2300\r\n\
         2024-01-01T00:00:00Z,2298,2299,2297,2299\r\n\r\n",
    );
    let out = db.ctl(&["data", "import", &yahoo, &unix]).ok();
    assert!(out.stdout.contains("AAPL 1d: 3 bars from"), "{out:#?}");
    assert!(out.stdout.contains("BTC 1h: 2 bars from"), "{out:#?}");
    assert!(
        out.stdout.contains("imported 5 bars from 2 of 2 files"),
        "{out:#?}"
    );
    db.ctl(&["data", "import", &rfc, "--symbol", "ETH-USD"])
        .ok();

    let aapl = db.bars("AAPL", "1d").await;
    assert_eq!(aapl.len(), 3);
    assert_eq!(aapl[2].ts.to_rfc3339(), "2024-01-05T00:00:00+00:00");
    assert_eq!(
        (aapl[0].close, aapl[0].volume),
        (185.64, 82_488_700.0),
        "the traded close, not the adjusted one"
    );
    assert_eq!(db.bars("BTC", "1h").await[1].close, 42200.0);
    let eth = db.bars("ETH-USD", "1m").await;
    assert_eq!(eth.len(), 3, "newest-first files load too");
    assert_eq!((eth[0].close, eth[0].volume), (2299.0, 0.0));
    let known: Vec<String> = sqlx::query_scalar("SELECT symbol FROM securities ORDER BY symbol")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(known, ["AAPL", "BTC", "ETH-USD"]);
    // The interval given: rows may be further apart than it, never closer.
    let out = db
        .ctl(&["data", "import", &yahoo, "--interval", "1w"])
        .failed();
    assert!(
        out.stderr.contains("closer than the interval 1w"),
        "{out:#?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop().await;
}

#[tokio::test]
async fn a_bad_line_loads_nothing_of_its_file_and_says_where() {
    let db = Db::create().await;
    let dir = scratch();
    let head = "date,open,high,low,close,volume\n";
    let good_rows = "2024-01-02,10,11,9,10.5,100\n2024-01-03,10.5,12,10,11,120\n";
    let cases = [
        (
            "null",
            "2024-01-04,null,2,1,1,1\n",
            "line 4, column open: 'null' is not a number",
        ),
        (
            "badtime",
            "2024-02-30,1,2,1,1,1\n",
            "line 4, column date: '2024-02-30' is not a time; write a date (2024-01-31)",
        ),
        (
            "short",
            "2024-01-04,1,2,1\n",
            "line 4: 4 fields, but the header has 6",
        ),
        (
            "negative",
            "2024-01-04,1,2,-1,1,1\n",
            "line 4, column low: low -1 is not a price; prices are above 0",
        ),
        (
            "lowabove",
            "2024-01-04,10,12,10.5,11,1\n",
            "line 4, column low: low 10.5 is above the open 10",
        ),
        (
            "highbelow",
            "2024-01-04,10,10.5,9,11,1\n",
            "line 4, column high: high 10.5 is below the close 11",
        ),
        (
            "negvolume",
            "2024-01-04,10,12,9,11,-3\n",
            "line 4, column volume: volume -3 is negative",
        ),
        (
            "repeat",
            "2024-01-03,10,12,9,11,3\n",
            "line 4, column date: 2024-01-03T00:00:00+00:00 repeats or goes back",
        ),
    ];
    for (name, bad, wanted) in cases {
        let file = write(
            &dir,
            &format!("{name}.csv"),
            &format!("{head}{good_rows}{bad}"),
        );
        let out = db.ctl(&["data", "import", &file]).failed();
        let expected = format!("error: {file}, {wanted}");
        assert!(
            out.stderr.contains(&expected),
            "{expected:?} not in {out:#?}"
        );
        assert!(out.stderr.contains("nothing of"), "{out:#?}");
        assert_eq!(db.count().await, 0, "{name}: nothing loaded");
    }
    let header = write(
        &dir,
        "header.csv",
        "day,open,high,low,close\n2024-01-02,1,1,1,1\n",
    );
    let out = db.ctl(&["data", "import", &header]).failed();
    assert!(
        out.stderr
            .contains(&format!("{header}, line 1: the header has no time column")),
        "{out:#?}"
    );
    let empty = write(&dir, "empty.csv", "");
    let out = db.ctl(&["data", "import", &empty]).failed();
    assert!(out.stderr.contains("the file is empty"), "{out:#?}");
    let missing = dir.join("missing.csv").to_string_lossy().into_owned();
    let out = db.ctl(&["data", "import", &missing]).failed();
    assert!(out.stderr.contains("cannot open"), "{out:#?}");

    // A bad file among good ones: the good ones load, the command fails.
    let good = write(&dir, "good.csv", &format!("{head}{good_rows}"));
    let bad = dir.join("null.csv").to_string_lossy().into_owned();
    let out = db.ctl(&["data", "import", &bad, &good]).failed();
    assert!(
        out.stdout.contains("imported 2 bars from 1 of 2 files"),
        "{out:#?}"
    );
    assert_eq!(db.bars("GOOD", "1d").await.len(), 2);
    assert_eq!(db.count().await, 2);
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop().await;
}

#[tokio::test]
async fn a_reimport_replaces_the_files_span() {
    let db = Db::create().await;
    let dir = scratch();
    let head = "date,open,high,low,close,volume\n";
    let first = write(
        &dir,
        "v1.csv",
        &format!(
            "{head}2024-01-01,1,2,1,1.5,10\n2024-01-02,1.5,2,1,1.8,10\n2024-01-03,1.8,2,1,1.9,10\n"
        ),
    );
    db.ctl(&["data", "import", &first, "--symbol", "XYZ"]).ok();
    // The same file again: the same three bars, no duplicates, no error.
    let out = db.ctl(&["data", "import", &first, "--symbol", "XYZ"]).ok();
    assert!(out.stdout.contains("replacing 3 stored bars"), "{out:#?}");
    assert_eq!(db.count().await, 3);
    // A corrected file over days 2..=4: day 1 stays, days 2 and 3 take the new
    // values, day 4 is added.
    let second = write(
        &dir,
        "v2.csv",
        &format!("{head}2024-01-02,1.5,2,1,1.7,20\n2024-01-03,1.7,2,1,1.6,20\n2024-01-04,1.6,2,1,1.65,20\n"),
    );
    let out = db.ctl(&["data", "import", &second, "--symbol", "XYZ"]).ok();
    assert!(out.stdout.contains("XYZ 1d: 3 bars"), "{out:#?}");
    assert!(out.stdout.contains("replacing 2 stored bars"), "{out:#?}");
    let closes: Vec<f64> = db.bars("XYZ", "1d").await.iter().map(|b| b.close).collect();
    assert_eq!(closes, [1.5, 1.7, 1.6, 1.65]);
    // Other intervals of the symbol are untouched by a daily import.
    let minutes = write(
        &dir,
        "m.csv",
        "timestamp,open,high,low,close\n1704067200,1,1,1,1\n1704067260,1,1,1,1\n",
    );
    db.ctl(&["data", "import", &minutes, "--symbol", "XYZ"])
        .ok();
    db.ctl(&["data", "import", &second, "--symbol", "XYZ"]).ok();
    assert_eq!(db.bars("XYZ", "1m").await.len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop().await;
}
