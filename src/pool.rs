//! The blocking edition's connection pool: r2d2 over a manager that connects with the URL's
//! TLS settings and keeps PostgreSQL's reason in its errors.

use std::time::Duration;

use crate::connect::{Target, Tls, first_connection};
use crate::error::{Error, Result, with_sources};

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
        conn.simple_query("").map(drop).map_err(ConnectError)
    }

    fn has_broken(&self, conn: &mut postgres::Client) -> bool {
        conn.is_closed()
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
