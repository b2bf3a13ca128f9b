//! The tokio runtime's `LISTEN` connection: a connection of its own (a pooled one never
//! delivers notifications, its driver discards them), whose messages a task forwards as
//! hints. When it dies it reconnects with backoff and asks for a sweep, as the blocking
//! listener does; nothing depends on it for correctness, only for latency.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;

use super::client::Endpoint;
use super::exec;
use super::runtime::Shared;
use crate::connect::Tls;
use crate::core::schedule::Backoff;
use crate::error::Result;
use crate::proto::{Listen, Unlisten};
use crate::runtime::common::{Event, bump};

pub(crate) async fn run(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<()>>,
) {
    let mut ready = Some(ready);
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let (client, mut notifications, driver) = match connect(&shared, &endpoint).await {
            Ok(connected) => connected,
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e));
                    return;
                }
                failures += 1;
                log::warn!("listener: could not reconnect: {e}");
                let pause = Backoff::default().delay(failures, 0.5);
                ::tokio::select! {
                    () = ::tokio::time::sleep(pause) => continue,
                    _ = stop.changed() => return,
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
        loop {
            ::tokio::select! {
                payload = notifications.recv() => match payload {
                    Some(handler) => shared.hint_names(std::iter::once(handler.as_str())),
                    None => {
                        log::warn!("listener: connection lost");
                        break;
                    }
                },
                _ = stop.changed() => {
                    let _ = exec::run(&client, shared.client.sql(), None, &Unlisten).await;
                    driver.abort();
                    return;
                }
            }
        }
        driver.abort();
    }
}

type Connected = (
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<String>,
    ::tokio::task::JoinHandle<()>,
);

/// Opens the connection, starts the task that drives it (before `LISTEN`, which completes
/// only while the connection is polled) and subscribes.
async fn connect(shared: &Shared, endpoint: &Endpoint) -> Result<Connected> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (client, driver) = match &endpoint.tls {
        Tls::Plain => {
            let (client, connection) = endpoint.config.connect(tokio_postgres::NoTls).await?;
            (client, drive(connection, tx))
        }
        #[cfg(feature = "rustls")]
        Tls::Rustls(tls) => {
            let (client, connection) = endpoint.config.connect(tls.clone()).await?;
            (client, drive(connection, tx))
        }
    };
    // Named `sc-listener:<schema>`, so operators (and tests) find it in pg_stat_activity.
    if let Err(e) = exec::run(&client, shared.client.sql(), None, &Listen).await {
        driver.abort();
        return Err(e);
    }
    Ok((client, rx, driver))
}

/// The task that polls `connection`, forwarding notifications' payloads to `tx`.
fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tx: mpsc::UnboundedSender<String>,
) -> ::tokio::task::JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ::tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("listener: {e}");
                    return;
                }
            }
        }
    })
}
