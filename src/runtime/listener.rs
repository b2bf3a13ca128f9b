//! The runtime's one `LISTEN` connection.
//!
//! It turns notifications (payload: a handler name) into hints for the dispatcher. When the
//! connection dies it reconnects with backoff and asks for a sweep, because notifications sent
//! while it was down are lost. Nothing depends on it for correctness, only for latency.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use postgres::fallible_iterator::FallibleIterator;

use super::common::{Event, bump};
use super::{Shared, exec};
use crate::core::schedule::Backoff;
use crate::error::{Error, Result};
use crate::proto::{Listen, Unlisten};

/// How often the blocked listener checks whether it should stop. The wait itself sends
/// nothing to the database.
const STOP_CHECK: Duration = Duration::from_millis(200);

pub(crate) fn run(shared: Arc<Shared>, stop: Receiver<()>, ready: Sender<Result<()>>) {
    let mut ready = Some(ready);
    let mut failures = 0u32;
    loop {
        if should_stop(&stop) {
            return;
        }
        let mut conn = match connect(&shared) {
            Ok(conn) => conn,
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e));
                    return;
                }
                failures += 1;
                log::warn!("listener: could not reconnect: {e}");
                // Wait for the backoff, or for a stop request, whichever comes first.
                match stop.recv_timeout(Backoff::default().delay(failures, 0.5)) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => return,
                }
            }
        };
        failures = 0;
        match ready.take() {
            Some(ready) => {
                let _ = ready.send(Ok(()));
            }
            None => {
                bump(&shared.registry.stats.listener_reconnects);
                log::warn!("listener: reconnected; sweeping for work announced meanwhile");
                let _ = shared.events.send(Event::SweepRequested);
            }
        }
        match listen(&shared, &mut conn, &stop) {
            Ok(()) => {
                // Stopping: leave the pooled connection as we found it.
                let _ = exec::run(&mut *conn, shared.client.sql(), None, &Unlisten);
                return;
            }
            Err(e) => log::warn!("listener: connection lost: {e}"),
        }
    }
}

type Conn = r2d2::PooledConnection<crate::pool::ConnectionManager>;

fn connect(shared: &Shared) -> Result<Conn> {
    let mut conn = shared.client.conn()?;
    // Named `sc-listener:<schema>`, so operators (and tests) find it in pg_stat_activity.
    exec::run(&mut *conn, shared.client.sql(), None, &Listen)?;
    Ok(conn)
}

fn should_stop(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(TryRecvError::Empty))
}

/// Forwards notifications until asked to stop (`Ok`) or the connection fails (`Err`).
fn listen(shared: &Shared, conn: &mut Conn, stop: &Receiver<()>) -> Result<()> {
    loop {
        if should_stop(stop) {
            return Ok(());
        }
        {
            let mut notifications = conn.notifications();
            let mut iter = notifications.timeout_iter(STOP_CHECK);
            while let Some(n) = iter.next()? {
                shared.hint_names(std::iter::once(n.payload()));
            }
        }
        if conn.is_closed() {
            return Err(Error::Connect(
                "the listener's connection was closed".to_owned(),
            ));
        }
    }
}
