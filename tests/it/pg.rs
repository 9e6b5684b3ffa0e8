//! PostgreSQL for the tests: `SESSIOND_TEST_DATABASE_URL` names a server (and a database to
//! connect to for administration, e.g. `postgres://postgres@127.0.0.1:55432/postgres`); each
//! test gets a database of its own, created with a random name and dropped afterwards. Without
//! the variable, PostgreSQL tests print a notice and pass without running (`.ci/run` sets it).

use sqlx::{Connection, Executor, PgConnection};

pub const TEST_DATABASE_URL: &str = "SESSIOND_TEST_DATABASE_URL";

/// A fresh, empty database, dropped (with any connection still open to it) when this is.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

/// A fresh database, or `None` (after printing why) when no server is configured.
pub async fn fresh_database(test: &str) -> Option<TestDatabase> {
    let Ok(admin_url) = std::env::var(TEST_DATABASE_URL) else {
        eprintln!("skipping the PostgreSQL part of {test}: {TEST_DATABASE_URL} is not set");
        return None;
    };
    let name = format!("sessiond_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("{TEST_DATABASE_URL} does not connect: {e}"));
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let url = with_database(&admin_url, &name);
    Some(TestDatabase {
        admin_url,
        name,
        url,
    })
}

impl TestDatabase {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs one statement on the administration connection (e.g. `ALTER DATABASE`).
    pub async fn execute_admin(&self, sql: &str) {
        let mut admin = PgConnection::connect(&self.admin_url).await.unwrap();
        admin.execute(sql).await.unwrap();
    }
}

/// `url` with its database (the path) replaced by `name`, the query string kept.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (authority, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    format!("{scheme}://{authority}/{name}{query}")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside a test's runtime, which cannot be blocked on: a thread of its own
        // with a runtime of its own does the dropping.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let mut admin = PgConnection::connect(&admin_url).await?;
                    admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await
                        .map(|_| ())
                })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

#[test]
fn the_database_name_is_replaced_and_the_rest_kept() {
    assert_eq!(
        with_database(
            "postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable",
            "x"
        ),
        "postgres://u:p@127.0.0.1:5432/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgresql://127.0.0.1", "x"),
        "postgresql://127.0.0.1/x"
    );
}
