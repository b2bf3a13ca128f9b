//! The typed layer (topics, handlers, actions) and bad input (oversized JSON).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use structured_cooperation::{
    Action, CooperationContext, Error, Handler, Request, ReturnName, RunStatus, Saga, SagaBuilder,
    StepContext, StepResult, Topic,
};

use crate::util::{ExecLog, TestDb, WAIT};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    sku: String,
    quantity: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Quote {
    sku: String,
    quantity: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Price {
    cents: u64,
}

const ORDERS: Topic<Order> = Topic::new("orders");
const PRICING: Topic<Request<Quote, Price>> = Topic::new("pricing");
const ORDER_PRICE: ReturnName<Price> = ReturnName::new("order-price");

struct PricingAction;
impl Action for PricingAction {
    type Input = Quote;
    type Output = Price;
    const NAME: &'static str = "pricing-action";
    const TOPIC: Topic<Request<Quote, Price>> = PRICING;
    fn saga(&self, saga: SagaBuilder<Request<Quote, Price>>) -> SagaBuilder<Request<Quote, Price>> {
        saga.step(
            |ctx: &mut StepContext<'_>, request: &Request<Quote, Price>| -> StepResult {
                let cents = 250 * u64::from(request.input.quantity);
                ctx.respond(request, &Price { cents })?;
                Ok(())
            },
        )
    }
}

struct OrderSaga {
    log: ExecLog,
}
impl Handler for OrderSaga {
    type Payload = Order;
    const NAME: &'static str = "order-saga";
    const TOPIC: Topic<Order> = ORDERS;
    fn saga(&self, saga: SagaBuilder<Order>) -> SagaBuilder<Order> {
        let log = self.log.clone();
        saga.step(|ctx: &mut StepContext<'_>, order: &Order| -> StepResult {
            let quote = Quote {
                sku: order.sku.clone(),
                quantity: order.quantity,
            };
            ctx.request(PRICING, ORDER_PRICE, &quote)?;
            Ok(())
        })
        .step(
            move |ctx: &mut StepContext<'_>, order: &Order| -> StepResult {
                let price = ctx.child_value(ORDER_PRICE, PricingAction::NAME)?;
                log.push(format!("{} x{}: {price:?}", order.sku, order.quantity));
                Ok(())
            },
        )
    }
}

/// A typed handler asks a typed action for a value and reads the answer; both subscribed in
/// one call each, and launched on a typed topic. (Emitting the wrong payload type on `ORDERS`
/// or `PRICING` does not compile.)
#[test]
fn a_typed_handler_gets_a_value_from_a_typed_action() {
    let db = TestDb::new("typed_action");
    let log = ExecLog::default();
    let runtime = db
        .runtime()
        .handler(OrderSaga { log: log.clone() })
        .action(PricingAction)
        .start()
        .unwrap();
    let order = Order {
        sku: "widget".to_owned(),
        quantity: 4,
    };
    let id = runtime.launch(ORDERS, &order).unwrap();
    assert!(runtime.wait_for(id, WAIT).unwrap().is_committed());
    assert_eq!(log.entries(), ["widget x4: Some(Price { cents: 1000 })"]);
    // The action's message is the documented JSON.
    let tree = runtime.client().tree(id).unwrap();
    assert_eq!(tree[1].handler, "pricing-action");
    assert_eq!(tree[1].topic, "pricing");
}

struct Broken;
impl Handler for Broken {
    type Payload = Value;
    const NAME: &'static str = "broken";
    const TOPIC: Topic<Value> = Topic::new("broken");
    fn saga(&self, saga: SagaBuilder<Value>) -> SagaBuilder<Value> {
        saga
    }
}

#[test]
fn a_typed_handler_whose_saga_does_not_build_fails_start_clearly() {
    let db = TestDb::new("typed_broken");
    let err = db.runtime().handler(Broken).start().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid saga \"broken\": a saga needs at least one step"
    );
}

/// Oversized payloads, contexts and return values are refused with an error naming them,
/// before anything is written; the step can carry on, and nothing else in the run is lost.
#[test]
fn oversized_json_is_refused_clearly_and_nothing_else_is_lost() {
    let db = TestDb::new("typed_oversized");
    let log = ExecLog::default();
    let big = "x".repeat(2000);
    let saga = {
        let (log, big) = (log.clone(), big.clone());
        Saga::builder("root-handler")
            .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
                ctx.context_mut().set_raw("Kept", "1")?;
                let payload = ctx
                    .emit("child-topic", &json!({ "blob": big }))
                    .unwrap_err();
                let mut huge = CooperationContext::new();
                huge.set_raw("Blob", &format!("{big:?}"))?;
                let context = ctx.emit_with("child-topic", &json!({}), huge).unwrap_err();
                let value = ctx.store_value("blob", &big).unwrap_err();
                for err in [payload, context, value] {
                    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
                    log.push(err.to_string());
                }
                ctx.emit("child-topic", &json!({"small": true}))?;
                Ok(())
            })
            .build()
            .unwrap()
    };
    let child = Saga::builder("child-handler")
        .step(|_ctx: &mut StepContext<'_>, _: &Value| -> StepResult { Ok(()) })
        .build()
        .unwrap();
    let runtime = db
        .runtime()
        .max_json_bytes(1024)
        .subscribe("root-topic", saga)
        .subscribe("child-topic", child)
        .start()
        .unwrap();
    let err = runtime
        .launch("root-topic", &json!({ "blob": big }))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the payload for topic \"root-topic\" is 2011 bytes of json, over the limit of 1024"
    );
    let id = runtime.launch("root-topic", &json!({})).unwrap();
    let outcome = runtime.wait_for(id, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::Committed);
    assert_eq!(
        log.entries(),
        [
            "the payload for topic \"child-topic\" is 2011 bytes of json, over the limit of 1024",
            "the context for topic \"child-topic\" is 2011 bytes of json, over the limit of 1024",
            "the return value \"blob\" is 2002 bytes of json, over the limit of 1024",
        ]
    );
    let tree = runtime.client().tree(id).unwrap();
    assert_eq!(tree.len(), 2, "only the small child was emitted");
    assert_eq!(tree[0].context.to_json(), r#"{"Kept":1}"#);
}
