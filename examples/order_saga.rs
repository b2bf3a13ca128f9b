//! The flagship demo: an order whose first step emits to inventory, payment and shipping
//! handlers, and whose second step runs only once all three have finished.
//!
//! Run it with `scripts/demo` (which provides a PostgreSQL), or with
//! `DATABASE_URL=postgres://... cargo run --example order_saga`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use structured_cooperation::{Runtime, Saga, StepContext, StepResult, render_tree};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
    amount_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderRef {
    order: u32,
}

/// Prints each step as it runs, with the time since launch.
#[derive(Clone)]
struct Timeline(Arc<Mutex<Instant>>);

impl Timeline {
    fn say(&self, handler: &str, step: &str, what: &str) {
        let ms = self.0.lock().map(|t| t.elapsed().as_millis()).unwrap_or(0);
        println!("[{ms:>4} ms] {handler:<11} step {step:<14} {what}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let timeline = Timeline(Arc::new(Mutex::new(Instant::now())));

    let order = {
        let (t1, t2) = (timeline.clone(), timeline.clone());
        Saga::builder("order-saga")
            .step_named(
                "place",
                move |ctx: &mut StepContext<'_>, order: &Order| -> StepResult {
                    t1.say(
                        "order-saga",
                        "place",
                        "emits to inventory, payments and shipping",
                    );
                    let r = OrderRef { order: order.id };
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
                         (order {} for {} cents)",
                        order.id, order.amount_cents
                    ),
                );
                Ok(())
            })
            .build()?
    };
    let inventory = {
        let t = timeline.clone();
        Saga::builder("inventory")
            .step_named("reserve", move |_ctx, r: &OrderRef| -> StepResult {
                t.say(
                    "inventory",
                    "reserve",
                    &format!("reserves stock for order {}", r.order),
                );
                Ok(())
            })
            .build()?
    };
    let payment = {
        let (t1, t2) = (timeline.clone(), timeline.clone());
        Saga::builder("payment")
            .step_named("charge", move |_ctx, r: &OrderRef| -> StepResult {
                t1.say("payment", "charge", &format!("charges order {}", r.order));
                Ok(())
            })
            .step_named("receipt", move |_ctx, _r: &OrderRef| -> StepResult {
                t2.say("payment", "receipt", "sends the receipt");
                Ok(())
            })
            .build()?
    };
    let shipping = {
        let (t1, t2) = (timeline.clone(), timeline.clone());
        Saga::builder("shipping")
            .step_named("book-courier", move |_ctx, _r: &OrderRef| -> StepResult {
                t1.say(
                    "shipping",
                    "book-courier",
                    "talks to a slow courier API (400 ms)...",
                );
                std::thread::sleep(Duration::from_millis(400));
                Ok(())
            })
            .step_named("print-label", move |_ctx, _r: &OrderRef| -> StepResult {
                t2.say("shipping", "print-label", "prints the label");
                Ok(())
            })
            .build()?
    };

    let runtime = Runtime::builder(url)
        .schema("order_demo")
        .workers(4)
        .subscribe("orders", order)
        .subscribe("inventory", inventory)
        .subscribe("payments", payment)
        .subscribe("shipping", shipping)
        .start()?;

    let order = Order {
        id: 42,
        item: "a very structured chair".to_owned(),
        amount_cents: 12_900,
    };
    println!(
        "== launching order {} ({}) on topic \"orders\"\n",
        order.id, order.item
    );
    if let Ok(mut start) = timeline.0.lock() {
        *start = Instant::now();
    }
    let root = runtime.launch("orders", &order)?;
    let outcome = runtime.wait_for(root, Duration::from_secs(30))?;

    println!(
        "\n== the tree of root {root}: {}\n",
        if outcome.is_committed() {
            "committed"
        } else {
            "not committed"
        }
    );
    print!("{}", render_tree(&runtime.client().tree(root)?));
    println!("\n== its history (the same vocabulary as Scoop's golden traces)\n");
    for (i, event) in runtime.history(root)?.iter().enumerate() {
        println!("  {:>3}  {event}", i + 1);
    }
    println!(
        "\nNote how SUSPENDED(confirm)@order-saga comes after COMMITTED(print-label)@shipping:\n\
         the order's second step waited for the slowest child."
    );
    runtime.shutdown()?;
    Ok(())
}
