//! A fresh, migrated database per test, dropped at the end (`DATABASE_URL` names the
//! server, default the local one).

use crate::manager;
use sqlx::postgres::{PgConnectOptions, PgPool};

pub struct TestDb {
    pub pool: PgPool,
    options: PgConnectOptions,
    name: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let name = format!("store_test_{}", uuid::Uuid::new_v4().simple());
        let options = manager::connect_options(&admin)
            .expect("DATABASE_URL")
            .database(&name);
        manager::create_database(&options, &name)
            .await
            .expect("create the test database");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options.clone())
            .await
            .expect("connect to the test database");
        manager::migrate(&pool).await.expect("migrate");
        TestDb {
            pool,
            options,
            name,
        }
    }

    pub async fn drop(self) {
        self.pool.close().await;
        manager::drop_database(&self.options, &self.name)
            .await
            .expect("drop the test database");
    }
}
