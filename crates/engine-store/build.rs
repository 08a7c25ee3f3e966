//! `sqlx::migrate!` embeds the migrations at compile time; without this, cargo does
//! not rebuild the crate when only a migration file changes (sqlx's documented fix).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
