//! The blocking edition's connection pool: r2d2 over a manager that connects with the URL's
//! TLS settings and keeps PostgreSQL's reason in its errors.

use std::cell::Cell;
use std::time::{Duration, Instant};

use r2d2::PooledConnection;

use crate::connect::{Target, Tls, first_connection};
use crate::error::{Error, Result, from_r2d2, with_sources};

/// The connection pool type the engine uses (and accepts).
pub type Pool = r2d2::Pool<ConnectionManager>;

/// An r2d2 connection manager for [`Pool`]: connects with a `postgres::Config` and the TLS
/// settings of a URL (`sslmode`, `sslrootcert`; TLS needs the `rustls` feature).
///
/// ```no_run
/// use structured_cooperation::{Client, ConnectionManager, r2d2};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = ConnectionManager::from_url("postgres://postgres@127.0.0.1/postgres")?;
/// let pool = r2d2::Pool::builder().max_size(4).build(manager)?;
/// let client = Client::from_pool(pool, "scoop")?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ConnectionManager {
    config: postgres::Config,
    tls: Tls,
}

impl ConnectionManager {
    /// A manager for `url` (a `postgres://` URL or a `key=value` string), honouring its
    /// `sslmode` (`disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`) and
    /// `sslrootcert` as libpq does.
    pub fn from_url(url: &str) -> Result<ConnectionManager> {
        let target = Target::parse(url)?;
        let config = target
            .url
            .parse()
            .map_err(|e| Error::Config(format!("invalid database url: {e}")))?;
        Ok(ConnectionManager {
            config,
            tls: target.tls,
        })
    }

    /// A manager for `config`, without TLS.
    pub fn new(config: postgres::Config) -> ConnectionManager {
        ConnectionManager {
            config,
            tls: Tls::Plain,
        }
    }

    fn connect_now(&self) -> std::result::Result<postgres::Client, postgres::Error> {
        match &self.tls {
            Tls::Plain => self.config.connect(postgres::NoTls),
            #[cfg(feature = "rustls")]
            Tls::Rustls(tls) => self.config.connect(tls.clone()),
        }
    }
}

/// Why the pool could not open a connection, with PostgreSQL's own reason (r2d2 keeps only
/// the text of the last one, so the text must carry it).
#[derive(Debug)]
pub struct ConnectError(postgres::Error);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&with_sources(&self.0))
    }
}

impl std::error::Error for ConnectError {}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = postgres::Client;
    type Error = ConnectError;

    fn connect(&self) -> std::result::Result<postgres::Client, ConnectError> {
        self.connect_now().map_err(ConnectError)
    }

    fn is_valid(&self, conn: &mut postgres::Client) -> std::result::Result<(), ConnectError> {
        if TESTED_BY_CALLER.get() {
            return Ok(());
        }
        conn.simple_query("").map(drop).map_err(ConnectError)
    }

    fn has_broken(&self, conn: &mut postgres::Client) -> bool {
        conn.is_closed()
    }
}

thread_local! {
    /// Set while [`checked_out`] takes a connection from the pool: it tests the connection
    /// itself, and only when it has sat unused for a while, so the pool's test on checkout
    /// (a round trip) is skipped for it. Every other checkout (the application's own, through
    /// `Client::pool`) is tested as r2d2 is configured to.
    static TESTED_BY_CALLER: Cell<bool> = const { Cell::new(false) };
}

/// How long after the library last took a connection it may take it again untested: long
/// enough for one operation (a launch takes well under a millisecond), so back-to-back
/// operations save the test's round trip (about a seventh of a launch), and short enough
/// that a connection which sat idle in the pool (where a server restart, an idle timeout or
/// a terminated backend would find it) is tested and, if the server closed it, replaced.
/// A connection killed within this window fails the one operation that gets it, with a
/// transient error, and is then dropped from the pool (as one killed mid-operation does).
const TRUSTED_IDLE: Duration = Duration::from_millis(5);

/// When the library last took the connection (kept in its r2d2 extensions).
struct LastTaken(Instant);

/// Resets [`TESTED_BY_CALLER`] even if the pool panics.
struct CallerTests;

impl CallerTests {
    fn set() -> CallerTests {
        TESTED_BY_CALLER.set(true);
        CallerTests
    }
}

impl Drop for CallerTests {
    fn drop(&mut self) {
        TESTED_BY_CALLER.set(false);
    }
}

/// A connection from `pool` for the library's own operations, waiting at most `wait` (the
/// pool's connection timeout if `None`). It is tested with a round trip only if the library
/// has not taken it in the last [`TRUSTED_IDLE`] (or never has); one that fails the test is
/// closed, so the pool drops it, and another is taken.
pub(crate) fn checked_out(
    pool: &Pool,
    wait: Option<Duration>,
) -> Result<PooledConnection<ConnectionManager>> {
    // Each failed test closes a connection for good, so this ends; the bound only guards
    // against a manager whose `has_broken` keeps a closed connection.
    let mut attempts = pool.max_size() + 1;
    loop {
        let mut conn = {
            let _tests = CallerTests::set();
            match wait {
                Some(wait) => pool.get_timeout(wait),
                None => pool.get(),
            }
            .map_err(from_r2d2)?
        };
        let now = Instant::now();
        let recent = PooledConnection::extensions(&conn)
            .get::<LastTaken>()
            .is_some_and(|t| now.duration_since(t.0) < TRUSTED_IDLE);
        let tested = if recent {
            Ok(())
        } else {
            conn.simple_query("").map(drop)
        };
        match tested {
            Ok(()) => {
                PooledConnection::extensions_mut(&mut conn).insert(LastTaken(now));
                return Ok(conn);
            }
            Err(e) if attempts <= 1 => return Err(e.into()),
            Err(e) => {
                log::debug!("a pooled connection failed its test ({e}); taking another");
                attempts -= 1;
            }
        }
    }
}

/// Builds the pool for `url`. The first connection is made here: a transient failure (the
/// server starting, too many clients) is retried until `connect_timeout`, anything else (a
/// wrong password, an unknown role or database, a refused connection) fails at once.
pub(crate) fn build_pool(url: &str, size: u32, connect_timeout: Duration) -> Result<Pool> {
    let mut manager = ConnectionManager::from_url(url)?;
    if manager.config.get_connect_timeout().is_none() {
        manager.config.connect_timeout(connect_timeout);
    }
    let first = first_connection(connect_timeout, || manager.connect_now())?;
    drop(first);
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(1))
        .connection_timeout(connect_timeout)
        .build(manager)
        .map_err(|e| Error::Connect(e.to_string()))
}
