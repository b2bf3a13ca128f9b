//! The typed layer: an order saga asks a pricing *action* for a price, and its next step reads
//! the answer. Topics fix their payload types (emitting the wrong type does not compile),
//! handler and action are types subscribed in one call each, and the customer's tier travels
//! to the pricing action in the cooperation context.
//!
//! Run it with `scripts/demo` (which provides a PostgreSQL), or with
//! `DATABASE_URL=postgres://... cargo run --example pricing`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use structured_cooperation::{
    Action, ContextKey, CooperationContext, Handler, Request, ReturnName, Runtime, SagaBuilder,
    StepContext, StepError, StepResult, Topic,
};

/// What the shop sends.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    sku: String,
    quantity: u32,
}

/// What the pricing action needs.
#[derive(Debug, Serialize, Deserialize)]
struct Quote {
    sku: String,
    quantity: u32,
}

/// What it answers.
#[derive(Debug, Serialize, Deserialize)]
struct Price {
    cents: u64,
    discount_percent: u64,
}

/// The customer's tier, set by whoever launches the order and read deep down the tree.
struct Tier;
impl ContextKey for Tier {
    const NAME: &'static str = "Tier";
    type Value = String;
}

const ORDERS: Topic<Order> = Topic::new("orders");
const PRICING: Topic<Request<Quote, Price>> = Topic::new("pricing");
/// Where the order saga wants its price: the caller names the return value.
const ORDER_PRICE: ReturnName<Price> = ReturnName::new("order-price");

struct PricingAction;

impl Action for PricingAction {
    type Input = Quote;
    type Output = Price;
    const NAME: &'static str = "pricing";
    const TOPIC: Topic<Request<Quote, Price>> = PRICING;

    fn saga(&self, saga: SagaBuilder<Request<Quote, Price>>) -> SagaBuilder<Request<Quote, Price>> {
        saga.step_named(
            "quote",
            |ctx: &mut StepContext<'_>, request: &Request<Quote, Price>| -> StepResult {
                let quote = &request.input;
                let unit = if quote.sku == "chair" { 12_900 } else { 4_500 };
                let gold = ctx.context().get::<Tier>()?.as_deref() == Some("gold");
                let discount_percent = if gold { 10 } else { 0 };
                let cents = unit * u64::from(quote.quantity) * (100 - discount_percent) / 100;
                println!(
                    "  pricing     quote    {} x{} for a {} customer: {cents} cents",
                    quote.sku,
                    quote.quantity,
                    if gold { "gold" } else { "regular" }
                );
                ctx.respond(
                    request,
                    &Price {
                        cents,
                        discount_percent,
                    },
                )?;
                Ok(())
            },
        )
    }
}

struct OrderSaga;

impl Handler for OrderSaga {
    type Payload = Order;
    const NAME: &'static str = "order-saga";
    const TOPIC: Topic<Order> = ORDERS;

    fn saga(&self, saga: SagaBuilder<Order>) -> SagaBuilder<Order> {
        saga.step_named(
            "ask-price",
            |ctx: &mut StepContext<'_>, order: &Order| -> StepResult {
                println!("  order-saga  ask-price  order {}: asks pricing", order.id);
                let quote = Quote {
                    sku: order.sku.clone(),
                    quantity: order.quantity,
                };
                ctx.request(PRICING, ORDER_PRICE, &quote)?;
                Ok(())
            },
        )
        .step_named(
            "charge",
            |ctx: &mut StepContext<'_>, order: &Order| -> StepResult {
                // Runs only after the pricing action finished: its answer is there.
                let price = ctx
                    .child_value(ORDER_PRICE, PricingAction::NAME)?
                    .ok_or_else(|| StepError::msg("pricing returned no price"))?;
                println!(
                    "  order-saga  charge     order {}: charging {} cents ({}% off)",
                    order.id, price.cents, price.discount_percent
                );
                Ok(())
            },
        )
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let runtime = Runtime::builder(url)
        .schema("pricing_demo")
        .handler(OrderSaga)
        .action(PricingAction)
        .start()?;
    for (tier, order) in [
        (
            "regular",
            Order {
                id: 1,
                sku: "chair".to_owned(),
                quantity: 2,
            },
        ),
        (
            "gold",
            Order {
                id: 2,
                sku: "lamp".to_owned(),
                quantity: 3,
            },
        ),
    ] {
        println!("\n== order {} from a {tier} customer", order.id);
        let context = CooperationContext::with::<Tier>(&tier.to_owned())?;
        let root = runtime.launch_with(ORDERS, &order, context)?;
        let outcome = runtime.wait_for(root, Duration::from_secs(30))?;
        println!("  => {}", outcome.runs()[0].status);
    }
    runtime.shutdown()?;
    Ok(())
}
