//! Fresh, migrated databases for tests, one per test, on every backend.
//!
//! PostgreSQL and MySQL/MariaDB come from admin URLs in `DATABASE_URL_POSTGRES` and
//! `DATABASE_URL_MYSQL`: each test creates a uniquely named database there and drops it when the
//! [`TestDb`] is dropped (even when the test panics). SQLite uses a file in a temporary directory.
//! Without a URL the server's tests print that they were skipped, unless
//! `REQUIRE_ALL_BACKENDS=1`, which turns a missing server into a failure. [`setup`] is the
//! conformance suites' factory on top of the same databases.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};
use sea_orm_durable::migration::{Migrator, MigratorTrait};
use sea_orm_durable::testkit::{Setup, UnderTest};

/// A backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

impl Backend {
    fn url_var(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some("DATABASE_URL_POSTGRES"),
            Backend::MySql => Some("DATABASE_URL_MYSQL"),
        }
    }

    /// Why a test of this backend is skipped when [`TestDb::create`] gives no database.
    fn skip_reason(self) -> String {
        format!(
            "{} is not set",
            self.url_var().unwrap_or("the database URL")
        )
    }
}

/// Environment of a child process started by [`spawn_child`]: the database URL and backend of
/// the test that started it.
const CHILD_URL: &str = "SOD_CHILD_URL";
const CHILD_BACKEND: &str = "SOD_CHILD_BACKEND";

/// Starts the `#[ignore]`d test `entry` (its full path, e.g. `crash::child_executor`) of this
/// test binary as a child process working on `t`'s database; kill it with `Child::kill`
/// (SIGKILL). Its output is discarded.
pub(crate) fn spawn_child(t: &TestDb, entry: &str) -> anyhow::Result<std::process::Child> {
    let backend = match t.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
        Backend::MySql => "mysql",
    };
    Ok(std::process::Command::new(std::env::current_exe()?)
        .args([entry, "--exact", "--ignored", "--nocapture"])
        .env(CHILD_URL, &t.url)
        .env(CHILD_BACKEND, backend)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?)
}

/// In a child process started by [`spawn_child`]: a pool on the database of the test that
/// started it. Fails when the process was not started that way.
pub(crate) async fn child_db(max_connections: u32) -> anyhow::Result<DatabaseConnection> {
    let url = std::env::var(CHILD_URL).context("not started by spawn_child")?;
    let backend = match std::env::var(CHILD_BACKEND)?.as_str() {
        "sqlite" => Backend::Sqlite,
        "postgres" => Backend::Postgres,
        _ => Backend::MySql,
    };
    Ok(Database::connect(connect_options(backend, &url, max_connections)).await?)
}

/// A database of its own for one test, migrated to the latest schema.
pub(crate) struct TestDb {
    pub(crate) db: DatabaseConnection,
    pub(crate) backend: Backend,
    /// Connection URL of this test's database, for opening more pools or child processes.
    pub(crate) url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Server { admin_url: String, name: String },
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "sod_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 100_000
    )
}

/// Replaces the database name (the URL path) of `url`, keeping credentials and query string.
pub(crate) fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let scheme_end = url.find("://").context("database URL has no scheme")? + 3;
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    Ok(format!("{}/{}{}", &base[..path_start], name, query))
}

/// Connect options with the pool shape the tests use on each backend.
pub(crate) fn connect_options(backend: Backend, url: &str, max_connections: u32) -> ConnectOptions {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    if backend == Backend::Sqlite {
        opts.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10))
        });
    }
    opts
}

impl TestDb {
    /// Creates and migrates a database, or returns `None` when the backend is not configured
    /// (and not required); the caller says that the test was skipped.
    pub(crate) async fn create(backend: Backend) -> anyhow::Result<Option<TestDb>> {
        let name = unique_name();
        let (url, cleanup) = match backend.url_var() {
            None => {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join(format!("{name}.db"));
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    Cleanup::Dir(dir),
                )
            }
            Some(var) => {
                let Ok(admin_url) = std::env::var(var) else {
                    if std::env::var("REQUIRE_ALL_BACKENDS").is_ok_and(|v| v == "1") {
                        bail!("{var} is not set and REQUIRE_ALL_BACKENDS=1");
                    }
                    return Ok(None);
                };
                let admin = Database::connect(connect_options(backend, &admin_url, 1))
                    .await
                    .with_context(|| format!("connecting to {var}"))?;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await?;
                admin.close().await?;
                (
                    with_database(&admin_url, &name)?,
                    Cleanup::Server { admin_url, name },
                )
            }
        };
        let db = Database::connect(connect_options(backend, &url, 8)).await?;
        let test_db = TestDb {
            db,
            backend,
            url,
            cleanup,
        };
        Migrator::up(&test_db.db, None).await?;
        Ok(Some(test_db))
    }

    /// The SeaORM backend of this database.
    #[allow(dead_code)]
    pub(crate) fn db_backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// The admin URL of the server and this test's database name, for a server backend.
    #[allow(dead_code)]
    pub(crate) fn server(&self) -> Option<(&str, &str)> {
        match &self.cleanup {
            Cleanup::Server { admin_url, name } => Some((admin_url, name)),
            Cleanup::Dir(_) => None,
        }
    }

    /// Opens another pool on the same database.
    #[allow(dead_code)]
    pub(crate) async fn connect(&self, max_connections: u32) -> anyhow::Result<DatabaseConnection> {
        Ok(Database::connect(connect_options(self.backend, &self.url, max_connections)).await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Cleanup::Server { admin_url, name } = &self.cleanup else {
            return;
        };
        let (backend, admin_url, name) = (self.backend, admin_url.clone(), name.clone());
        let label = name.clone();
        // Drop runs inside the test's runtime, which cannot block on async work, so the database
        // is dropped from a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let admin = Database::connect(connect_options(backend, &admin_url, 1)).await?;
                if backend == Backend::Postgres {
                    admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await?;
                } else {
                    admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
                        .await?;
                }
                admin.close().await?;
                Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {label}");
        }
    }
}

/// Runs `test` against a fresh database of `backend`, or reports it skipped.
pub(crate) async fn run<F, Fut>(backend: Backend, test: F) -> anyhow::Result<()>
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    match TestDb::create(backend).await? {
        Some(db) => test(db).await,
        None => {
            eprintln!("skipped: {}", backend.skip_reason());
            Ok(())
        }
    }
}

/// A conformance suite's factory: the store `make` builds on a fresh database of `backend`,
/// which lives until the case is done, or the reason the case is skipped.
pub(crate) async fn setup<S>(
    backend: Backend,
    make: impl FnOnce(&TestDb) -> S,
) -> anyhow::Result<Setup<UnderTest<S>>> {
    Ok(match TestDb::create(backend).await? {
        Some(t) => Setup::Ready(UnderTest::with_guard(make(&t), t)),
        None => Setup::Skip(backend.skip_reason()),
    })
}

/// Declares one test per backend for each listed async fn taking a [`TestDb`]:
/// `sqlite::name`, `postgres::name`, `mysql::name`.
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() -> anyhow::Result<()> {
                crate::harness::run(crate::harness::Backend::Sqlite, super::$name).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(durable_no_postgres, ignore = "DATABASE_URL_POSTGRES is not set")]
            async fn $name() -> anyhow::Result<()> {
                crate::harness::run(crate::harness::Backend::Postgres, super::$name).await
            })*
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(durable_no_mysql, ignore = "DATABASE_URL_MYSQL is not set")]
            async fn $name() -> anyhow::Result<()> {
                crate::harness::run(crate::harness::Backend::MySql, super::$name).await
            })*
        }
    };
}
pub(crate) use per_backend;
