//! The flagship demo: an order whose first step emits to inventory, payment and shipping
//! handlers, and whose second step runs only once all three have finished. Then a second order
//! whose payment is declined: the order fails, asks the handlers that did their part to undo
//! it, and ends rolled back, with a failure that reads like a backtrace across services.
//!
//! Run it with `scripts/demo` (which provides a PostgreSQL), or with
//! `DATABASE_URL=postgres://... cargo run --example order_saga`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use structured_cooperation::{Runtime, Saga, StepContext, StepError, StepResult, render_tree};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
    amount_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderRef {
    order: u32,
    amount_cents: u64,
}

/// Prints each step as it runs, with the time since launch.
#[derive(Clone)]
struct Timeline(Arc<Mutex<Instant>>);

impl Timeline {
    fn say(&self, handler: &str, step: &str, what: &str) {
        let ms = self.0.lock().map(|t| t.elapsed().as_millis()).unwrap_or(0);
        println!("[{ms:>4} ms] {handler:<11} {step:<24} {what}");
    }

    fn restart(&self) {
        if let Ok(mut start) = self.0.lock() {
            *start = Instant::now();
        }
    }
}

/// Card payments above this are declined.
const CARD_LIMIT_CENTS: u64 = 50_000;

fn sagas(t: &Timeline) -> Result<[(&'static str, Saga); 4], Box<dyn std::error::Error>> {
    let order = {
        let (t1, t2) = (t.clone(), t.clone());
        Saga::builder("order-saga")
            .step_named(
                "place",
                move |ctx: &mut StepContext<'_>, order: &Order| -> StepResult {
                    t1.say(
                        "order-saga",
                        "place",
                        "emits to inventory, payments and shipping",
                    );
                    let r = OrderRef {
                        order: order.id,
                        amount_cents: order.amount_cents,
                    };
                    ctx.emit("inventory", &r)?;
                    ctx.emit("payments", &r)?;
                    ctx.emit("shipping", &r)?;
                    Ok(())
                },
            )
            .step_named("confirm", move |_ctx, order: &Order| -> StepResult {
                t2.say(
                    "order-saga",
                    "confirm",
                    &format!(
                        "<- only now: every handler of every message from \"place\" finished \
                         (order {})",
                        order.id
                    ),
                );
                Ok(())
            })
            .build()?
    };
    let inventory = {
        let (t1, t2) = (t.clone(), t.clone());
        Saga::builder("inventory")
            .step_named("reserve", move |_ctx, r: &OrderRef| -> StepResult {
                t1.say(
                    "inventory",
                    "reserve",
                    &format!("reserves stock for order {}", r.order),
                );
                Ok(())
            })
            .rollback(move |_ctx, r: &OrderRef, _cause| -> StepResult {
                t2.say(
                    "inventory",
                    "(compensate) reserve",
                    &format!("releases the stock of order {}", r.order),
                );
                Ok(())
            })
            .build()?
    };
    let payment = {
        let (t1, t2) = (t.clone(), t.clone());
        Saga::builder("payment")
            .step_named("charge", move |_ctx, r: &OrderRef| -> StepResult {
                if r.amount_cents > CARD_LIMIT_CENTS {
                    t1.say("payment", "charge", "the card is declined");
                    return Err(StepError::with_kind(
                        "payments::CardDeclined",
                        format!("{} cents is over the card's limit", r.amount_cents),
                    ));
                }
                t1.say(
                    "payment",
                    "charge",
                    &format!("charges {} cents", r.amount_cents),
                );
                Ok(())
            })
            .step_named("receipt", move |_ctx, _r: &OrderRef| -> StepResult {
                t2.say("payment", "receipt", "sends the receipt");
                Ok(())
            })
            .build()?
    };
    let shipping = {
        let (t1, t2, t3) = (t.clone(), t.clone(), t.clone());
        Saga::builder("shipping")
            .step_named("book-courier", move |_ctx, _r: &OrderRef| -> StepResult {
                t1.say(
                    "shipping",
                    "book-courier",
                    "talks to a slow courier API (300 ms)...",
                );
                std::thread::sleep(Duration::from_millis(300));
                Ok(())
            })
            .rollback(move |_ctx, _r: &OrderRef, cause| -> StepResult {
                t2.say(
                    "shipping",
                    "(compensate) book-courier",
                    &format!(
                        "cancels the courier, because: {}",
                        cause.causes()[0].message()
                    ),
                );
                Ok(())
            })
            .step_named("print-label", move |_ctx, _r: &OrderRef| -> StepResult {
                t3.say("shipping", "print-label", "prints the label");
                Ok(())
            })
            .build()?
    };
    Ok([
        ("orders", order),
        ("inventory", inventory),
        ("payments", payment),
        ("shipping", shipping),
    ])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let timeline = Timeline(Arc::new(Mutex::new(Instant::now())));
    let mut builder = Runtime::builder(url).schema("order_demo").workers(4);
    for (topic, saga) in sagas(&timeline)? {
        builder = builder.subscribe(topic, saga);
    }
    let runtime = builder.start()?;

    for order in [
        Order {
            id: 42,
            item: "a very structured chair".to_owned(),
            amount_cents: 12_900,
        },
        Order {
            id: 43,
            item: "a golden throne".to_owned(),
            amount_cents: 990_000,
        },
    ] {
        println!(
            "\n== launching order {} ({}, {} cents) on topic \"orders\"\n",
            order.id, order.item, order.amount_cents
        );
        timeline.restart();
        let root = runtime.launch("orders", &order)?;
        let outcome = runtime.wait_for(root, Duration::from_secs(30))?;
        let top = &outcome.runs()[0];
        println!("\n-- the tree of root {root}: {}\n", top.status);
        print!("{}", render_tree(&runtime.client().tree(root)?));
        if let Some(failure) = &top.failure {
            println!("\n-- why it rolled back (a failure across services)\n\n{failure}");
        }
        println!("\n-- its history (Scoop's vocabulary)\n");
        for (i, event) in runtime.history(root)?.iter().enumerate() {
            println!("  {:>3}  {event}", i + 1);
        }
    }
    println!(
        "\nIn order 42, SUSPENDED(confirm)@order-saga comes after COMMITTED(print-label)@shipping:\n\
         the order's second step waited for the slowest child. In order 43 the payment failed,\n\
         so \"confirm\" never ran; the order waited for all three children to finish, then asked\n\
         the ones that had committed (inventory, shipping) to compensate."
    );
    runtime.shutdown()?;
    Ok(())
}
