//! Whether the server can give a runtime the connections it keeps, checked at start so that
//! too many workers fail with a clear error instead of starving everyone.

use crate::error::{Error, Result};
use crate::proto::Limits;

/// Whether the server can give a runtime the connections it keeps busy: one per worker
/// connection, one for the listener and one for its client's launches and reads. An error
/// naming the limit when it never can, a warning when it cannot now (others hold the rest).
pub(crate) fn check_connection_limits(limits: &Limits, workers: usize) -> Result<Option<String>> {
    let needed = i64::try_from(workers).unwrap_or(i64::MAX).saturating_add(2);
    let what = format!(
        "this runtime keeps {needed} connections ({workers} for workers, one for the listener, \
         one for launches and reads)"
    );
    let usable = i64::from(limits.max_connections)
        - if limits.superuser {
            0
        } else {
            i64::from(limits.reserved)
        };
    if needed > usable {
        return Err(Error::Config(format!(
            "{what} but the server allows {usable} (max_connections = {}, {} reserved): \
             lower workers or raise max_connections",
            limits.max_connections, limits.reserved
        )));
    }
    for (limit, whose) in [
        (limits.role_limit, "the role's CONNECTION LIMIT"),
        (limits.database_limit, "the database's CONNECTION LIMIT"),
    ] {
        if !limits.superuser && limit >= 0 && needed > i64::from(limit) {
            return Err(Error::Config(format!(
                "{what} but {whose} is {limit}: lower workers or raise the limit"
            )));
        }
    }
    // The connection that asked is one of ours already.
    let free = usable - i64::from(limits.in_use) + 1;
    Ok((needed > free).then(|| {
        format!(
            "{what} but only {free} of the server's {usable} are free now; workers without a \
             connection will fail and retry until others close theirs"
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: i32, in_use: i32) -> Limits {
        Limits {
            max_connections,
            reserved: 3,
            superuser: false,
            role_limit: -1,
            database_limit: -1,
            in_use,
        }
    }

    #[test]
    fn more_workers_than_the_server_allows_is_an_error() {
        let e = check_connection_limits(&limits(200, 1), 300).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("keeps 302 connections (300 for workers"),
            "{text}"
        );
        assert!(
            text.contains("allows 197 (max_connections = 200, 3 reserved)"),
            "{text}"
        );
        // A superuser may use the reserved slots.
        let root = Limits {
            superuser: true,
            ..limits(200, 1)
        };
        assert!(check_connection_limits(&root, 198).unwrap().is_none());
        assert!(check_connection_limits(&root, 199).is_err());
    }

    #[test]
    fn role_and_database_limits_count_too() {
        let role = Limits {
            role_limit: 3,
            ..limits(100, 1)
        };
        let e = check_connection_limits(&role, 2).unwrap_err();
        assert!(
            e.to_string().contains("the role's CONNECTION LIMIT is 3"),
            "{e}"
        );
        assert!(check_connection_limits(&role, 1).unwrap().is_none());
        let database = Limits {
            database_limit: 2,
            ..limits(100, 1)
        };
        assert!(check_connection_limits(&database, 1).is_err());
    }

    #[test]
    fn too_few_free_connections_now_is_a_warning() {
        // 97 usable, 90 in use (ours included): 8 free.
        assert!(
            check_connection_limits(&limits(100, 90), 6)
                .unwrap()
                .is_none()
        );
        let warning = check_connection_limits(&limits(100, 90), 7).unwrap();
        assert!(warning.is_some_and(|w| w.contains("only 8 of the server's 97")));
    }
}
