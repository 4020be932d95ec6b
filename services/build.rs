//! `sqlx::migrate!` embeds the migration folders at compile time; this makes cargo rebuild when
//! a migration is added or changed (sqlx's documented recipe).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
