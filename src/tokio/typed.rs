//! The typed layer's traits for async sagas: [`crate::Handler`] and [`crate::Action`] with a
//! tokio [`SagaBuilder`](super::SagaBuilder). Topics, return names and requests are shared.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::SagaBuilder;
use crate::typed::{Request, Topic};

/// Like [`crate::Handler`], for a saga whose steps are async.
///
/// ```
/// use structured_cooperation::{StepResult, Topic};
/// use structured_cooperation::tokio::{Handler, SagaBuilder};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Order { id: u64 }
///
/// struct OrderSaga;
/// impl Handler for OrderSaga {
///     type Payload = Order;
///     const NAME: &'static str = "order-saga";
///     const TOPIC: Topic<Order> = Topic::new("orders");
///     fn saga(&self, saga: SagaBuilder<Order>) -> SagaBuilder<Order> {
///         saga.step(|_ctx, order: &Order| Box::pin(async move {
///             println!("placing order {}", order.id);
///             StepResult::Ok(())
///         }))
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The payload type of [`TOPIC`](Self::TOPIC).
    type Payload: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The handler's name.
    const NAME: &'static str;
    /// The topic it listens to.
    const TOPIC: Topic<Self::Payload>;
    /// Adds the steps to `saga`, a builder already named [`NAME`](Self::NAME).
    fn saga(&self, saga: SagaBuilder<Self::Payload>) -> SagaBuilder<Self::Payload>;
}

/// Like [`crate::Action`], for an action whose steps are async.
pub trait Action: Send + Sync + 'static {
    /// What the caller sends.
    type Input: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What the action returns.
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The action's handler name.
    const NAME: &'static str;
    /// The topic it listens to.
    const TOPIC: Topic<Request<Self::Input, Self::Output>>;
    /// Adds the steps to `saga`, a builder already named [`NAME`](Self::NAME); one of them
    /// should respond.
    fn saga(
        &self,
        saga: SagaBuilder<Request<Self::Input, Self::Output>>,
    ) -> SagaBuilder<Request<Self::Input, Self::Output>>;
}
