//! The tokio edition, beside the blocking one on the same schema: an async order saga (on a
//! tokio runtime) reserves stock in its own transaction and asks a payment service for a
//! charge; the payment service is a blocking runtime (as an existing synchronous service
//! would be). The order's second step runs only once the payment handler has finished,
//! whichever runtime it ran on; a declined payment rolls the order back and compensates.
//!
//! Run it with `scripts/demo` (which provides a PostgreSQL), or with
//! `DATABASE_URL=postgres://... cargo run --features tokio --example tokio_order`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use structured_cooperation::tokio::{Runtime as TokioRuntime, Saga as TokioSaga};
use structured_cooperation::{Runtime, Saga, StepContext, StepError, StepResult, render_tree};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: i64,
    amount_cents: i64,
}

const SCHEMA: &str = "tokio_order_demo";

fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The order service, async: each step borrows its context and payload in the future.
fn order_saga() -> TokioSaga {
    TokioSaga::builder("order")
        .step_named("reserve", |ctx, order: &Order| {
            Box::pin(async move {
                // Business writes in the step's own transaction, through tokio-postgres.
                let reserve = ctx
                    .prepare_cached(&format!(
                        "INSERT INTO {SCHEMA}.reservations (order_id) VALUES ($1)"
                    ))
                    .await?;
                ctx.tx().await.execute(&reserve, &[&order.id]).await?;
                println!(
                    "  [tokio]    order {}: stock reserved, asking for payment",
                    order.id
                );
                ctx.emit("payments", order)?;
                StepResult::Ok(())
            })
        })
        .rollback(|ctx, order: &Order, cause| {
            Box::pin(async move {
                println!(
                    "  [tokio]    order {}: releasing the stock ({})",
                    order.id,
                    cause.message()
                );
                let release = format!("DELETE FROM {SCHEMA}.reservations WHERE order_id = $1");
                ctx.tx().await.execute(&release, &[&order.id]).await?;
                StepResult::Ok(())
            })
        })
        .step_named("confirm", |_ctx, order: &Order| {
            Box::pin(async move {
                println!("  [tokio]    order {}: paid, confirmed", order.id);
                StepResult::Ok(())
            })
        })
        .build()
        .expect("a valid saga")
}

/// The payment service, blocking: an existing synchronous service on the same schema.
fn payment_saga() -> Saga {
    Saga::builder("payment")
        .step(|_ctx: &mut StepContext<'_>, order: &Order| -> StepResult {
            if order.amount_cents > 10_000 {
                println!("  [blocking] payment for order {}: declined", order.id);
                return Err(StepError::with_kind(
                    "payments::Declined",
                    format!("{} cents is over the card's limit", order.amount_cents),
                ));
            }
            println!("  [blocking] payment for order {}: charged", order.id);
            Ok(())
        })
        .build()
        .expect("a valid saga")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let mut admin = postgres::Client::connect(&url(), postgres::NoTls)?;
    admin.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}; \
         CREATE TABLE {SCHEMA}.reservations (order_id bigint PRIMARY KEY)"
    ))?;
    // The blocking service starts outside the tokio runtime: blocking calls must not run on
    // threads that drive async tasks.
    let payments = Runtime::builder(url())
        .schema(SCHEMA)
        .subscribe("payments", payment_saga())
        .start()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let orders = TokioRuntime::builder(url())
            .schema(SCHEMA)
            .subscribe("orders", order_saga())
            .start()
            .await?;
        for order in [
            Order {
                id: 1,
                amount_cents: 4_200,
            },
            Order {
                id: 2,
                amount_cents: 99_000,
            },
        ] {
            println!("order {} for {} cents:", order.id, order.amount_cents);
            let root = orders.launch("orders", &order).await?;
            let outcome = orders.wait_for(root, Duration::from_secs(30)).await?;
            let run = &outcome.runs()[0];
            println!("  => {}", run.status);
            if let Some(failure) = &run.failure {
                print!("{}", indent(&failure.to_string()));
            }
            print!(
                "{}",
                indent(&render_tree(&orders.client().tree(root).await?))
            );
        }
        orders.shutdown().await?;
        Ok::<_, structured_cooperation::Error>(())
    })?;
    payments.shutdown()?;
    let left: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {SCHEMA}.reservations"), &[])?
        .get(0);
    println!("reservations left: {left} (order 1's; order 2's was released)");
    admin.batch_execute(&format!("DROP SCHEMA {SCHEMA} CASCADE"))?;
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("     {l}\n")).collect()
}
