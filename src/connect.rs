//! Connecting, for both editions: the URL's TLS settings (`sslmode`, `sslrootcert`, as libpq
//! reads them), the connector they call for, and which connection failures are worth waiting
//! out (a server starting up, too many clients) and which are not (a wrong password, an
//! unknown database, a refused connection), so that the latter fail at once with PostgreSQL's
//! own reason.

use std::time::{Duration, Instant};

use crate::error::{Error, Result, with_sources};

/// A database URL (or `key=value` string) taken apart: what the driver parses, and the TLS
/// connector it must use.
#[derive(Clone)]
pub(crate) struct Target {
    /// The URL without the settings the driver does not know, `sslmode` rewritten to its
    /// `disable` / `prefer` / `require`.
    pub(crate) url: String,
    pub(crate) tls: Tls,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("Target").field("tls", &self.tls).finish()
    }
}

/// The TLS connector a connection uses.
#[derive(Clone)]
pub(crate) enum Tls {
    /// No TLS (`sslmode=disable`, or `prefer` without the `rustls` feature).
    Plain,
    /// rustls, verifying the server as `sslmode` and `sslrootcert` say.
    #[cfg(feature = "rustls")]
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tls::Plain => f.write_str("Plain"),
            #[cfg(feature = "rustls")]
            Tls::Rustls(_) => f.write_str("Rustls"),
        }
    }
}

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            // `allow` tries without TLS first; trying with it first is the safer reading.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "invalid database url: unknown sslmode {other:?} (expected disable, allow, \
                     prefer, require, verify-ca or verify-full)"
                )));
            }
        })
    }

    /// What the driver is told: it knows only whether TLS is off, tried or required.
    fn driver(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// Settings libpq knows that the driver does not, and that this crate does not support.
const UNSUPPORTED: &[&str] = &["sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir"];

impl Target {
    /// Takes `url` apart (a `postgres://` URL or a `key=value` string).
    pub(crate) fn parse(url: &str) -> Result<Target> {
        let mut mode = None;
        let mut root_cert = None;
        let mut take = |key: &str, value: &str| -> Result<bool> {
            match key {
                "sslmode" => mode = Some(SslMode::parse(value)?),
                "sslrootcert" => root_cert = Some(value.to_owned()),
                k if UNSUPPORTED.contains(&k) => {
                    return Err(Error::Config(format!(
                        "invalid database url: {k} is not supported (client certificates are \
                         not); use a password, or a pool built by hand"
                    )));
                }
                _ => return Ok(false),
            }
            Ok(true)
        };
        let (mut rest, is_url) =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                (strip_url_params(url, &mut take)?, true)
            } else {
                (strip_key_values(url, &mut take)?, false)
            };
        let mode = mode.unwrap_or(SslMode::Prefer);
        let tls = connector(mode, root_cert.as_deref())?;
        if mode != SslMode::Prefer {
            let setting = format!("sslmode={}", mode.driver());
            if is_url {
                rest.push(if rest.contains('?') { '&' } else { '?' });
            } else if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(&setting);
        }
        Ok(Target { url: rest, tls })
    }
}

/// Removes the query parameters `take` consumes from a URL.
fn strip_url_params(
    url: &str,
    take: &mut impl FnMut(&str, &str) -> Result<bool>,
) -> Result<String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(url.to_owned());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !take(&percent_decode(key)?, &percent_decode(value)?)? {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::Config(format!("invalid database url: bad escape in {s:?}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::Config(format!("invalid database url: {s:?} is not utf-8")))
}

/// Removes the settings `take` consumes from a `key=value` string (values optionally in
/// single quotes, with backslash escapes), keeping the others as written.
fn strip_key_values(
    conninfo: &str,
    take: &mut impl FnMut(&str, &str) -> Result<bool>,
) -> Result<String> {
    let mut kept: Vec<&str> = Vec::new();
    let mut rest = conninfo.trim_start();
    while !rest.is_empty() {
        let start = rest;
        let eq = rest.find('=').ok_or_else(|| {
            Error::Config(format!(
                "invalid database url: expected key=value at {:?}",
                rest.split_whitespace().next().unwrap_or(rest)
            ))
        })?;
        let key = rest[..eq].trim();
        rest = rest[eq + 1..].trim_start();
        let mut value = String::new();
        if let Some(quoted) = rest.strip_prefix('\'') {
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '\'' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| {
                Error::Config("invalid database url: unterminated quoted value".to_owned())
            })?;
            rest = &quoted[end..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value.push_str(&rest[..end]);
            rest = &rest[end..];
        }
        let pair = start[..start.len() - rest.len()].trim();
        if !take(key, &value)? {
            kept.push(pair);
        }
        rest = rest.trim_start();
    }
    Ok(kept.join(" "))
}

#[cfg(not(feature = "rustls"))]
fn connector(mode: SslMode, _root_cert: Option<&str>) -> Result<Tls> {
    match mode {
        SslMode::Disable | SslMode::Prefer => Ok(Tls::Plain),
        _ => Err(Error::Config(
            "the database url asks for TLS (sslmode=require or verify-*), which needs the \
             crate's `rustls` feature"
                .to_owned(),
        )),
    }
}

#[cfg(feature = "rustls")]
fn connector(mode: SslMode, root_cert: Option<&str>) -> Result<Tls> {
    use crate::tls::{Verify, make_connector};
    let verify = match (mode, root_cert) {
        (SslMode::Disable, _) => return Ok(Tls::Plain),
        // As libpq: without a root certificate, `prefer` and `require` encrypt without
        // verifying; with one, they verify the chain like `verify-ca`.
        (SslMode::Prefer | SslMode::Require, None) => Verify::Nothing,
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, roots) => Verify::Chain(roots),
        (SslMode::VerifyFull, roots) => Verify::ChainAndName(roots),
    };
    Ok(Tls::Rustls(make_connector(verify)?))
}

/// Whether a failed connection attempt may succeed if tried again soon: the server is
/// starting or shutting down, has too many clients or too little memory, or the network
/// hiccuped. A wrong password, an unknown role or database, a refused connection or a TLS
/// failure will not change by waiting.
pub(crate) fn is_transient_connect(e: &postgres::Error) -> bool {
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(code, "57P01" | "57P02" | "57P03");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                TimedOut | ConnectionReset | ConnectionAborted | Interrupted | UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

/// How a first connection is retried (both editions): transient failures again after a
/// pause (50 ms doubling to 1 s) while the connect timeout allows, anything else never.
pub(crate) struct FirstConnection {
    start: Instant,
    timeout: Duration,
    pause: Duration,
}

impl FirstConnection {
    pub(crate) fn new(timeout: Duration) -> FirstConnection {
        FirstConnection {
            start: Instant::now(),
            timeout,
            pause: Duration::from_millis(50),
        }
    }

    /// After a failed attempt: how long to pause before the next one, or the error to fail
    /// with (PostgreSQL's, or the network's, own reason).
    pub(crate) fn after(&mut self, e: &postgres::Error) -> Result<Duration> {
        let pause = self.pause;
        if is_transient_connect(e) && self.start.elapsed() + pause < self.timeout {
            log::warn!("connecting to postgres: {}; trying again", with_sources(e));
            self.pause = (pause * 2).min(Duration::from_secs(1));
            Ok(pause)
        } else {
            Err(Error::Connect(with_sources(e)))
        }
    }
}

/// Connects once with `connect`, retrying as [`FirstConnection`] says.
pub(crate) fn first_connection<C>(
    timeout: Duration,
    mut connect: impl FnMut() -> std::result::Result<C, postgres::Error>,
) -> Result<C> {
    let mut retry = FirstConnection::new(timeout);
    loop {
        match connect() {
            Ok(c) => return Ok(c),
            Err(e) => std::thread::sleep(retry.after(&e)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> String {
        Target::parse(url).unwrap().url
    }

    #[test]
    fn settings_the_driver_does_not_know_are_taken_out() {
        assert_eq!(parsed("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            parsed("postgres://u@h/db?sslmode=disable&application_name=x"),
            "postgres://u@h/db?application_name=x&sslmode=disable"
        );
        assert_eq!(parsed("host=h user=u"), "host=h user=u");
        assert_eq!(
            parsed("host=h sslmode=disable user='a b\\'c'"),
            "host=h user='a b\\'c' sslmode=disable"
        );
        // prefer is the driver's default too: nothing to add.
        assert_eq!(parsed("host=h sslmode=prefer"), "host=h");
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let e = Target::parse("postgres://h/db?sslmode=sometimes").unwrap_err();
        assert!(
            e.to_string().contains("unknown sslmode \"sometimes\""),
            "{e}"
        );
        let e = Target::parse("host=h sslcert=/c.pem").unwrap_err();
        assert!(e.to_string().contains("sslcert is not supported"), "{e}");
        let e = Target::parse("host=h user='x").unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
        let e = Target::parse("postgres://h/db?sslrootcert=%zz").unwrap_err();
        assert!(e.to_string().contains("bad escape"), "{e}");
    }

    #[cfg(not(feature = "rustls"))]
    #[test]
    fn required_tls_without_the_feature_is_refused_clearly() {
        let e = Target::parse("postgres://h/db?sslmode=require").unwrap_err();
        assert!(e.to_string().contains("`rustls` feature"), "{e}");
    }

    #[cfg(feature = "rustls")]
    #[test]
    fn required_tls_uses_rustls_and_tells_the_driver() {
        let t = Target::parse("postgres://h/db?sslmode=verify-full").unwrap();
        assert!(matches!(t.tls, Tls::Rustls(_)));
        assert_eq!(t.url, "postgres://h/db?sslmode=require");
        let e = Target::parse("host=h sslmode=verify-ca sslrootcert=/nonexistent.pem").unwrap_err();
        assert!(e.to_string().contains("/nonexistent.pem"), "{e}");
    }
}
