//! The typed layer: topics that fix their payload type, names of return values that fix the
//! value's type, handlers that bind name, topic and saga, and actions (handlers that return a
//! value to their parent). Everything here is sugar over the untyped, string-named API, which
//! stays available: a `&str` works wherever a [`Topic`] or [`ReturnName`] does.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::RunId;
use crate::saga::SagaBuilder;

/// A topic whose messages carry a `P`. Emitting anything else on it does not compile.
///
/// ```
/// use structured_cooperation::Topic;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Order { id: u64 }
///
/// const ORDERS: Topic<Order> = Topic::new("orders");
/// assert_eq!(ORDERS.name(), "orders");
///
/// fn place(ctx: &mut structured_cooperation::StepContext<'_>) -> structured_cooperation::Result<()> {
///     ctx.emit(ORDERS, &Order { id: 7 })?;
///     ctx.emit("orders", &serde_json::json!({ "id": 7 }))?; // untyped: anything goes
///     Ok(())
/// }
/// ```
///
/// Emitting something else on a typed topic does not compile:
///
/// ```compile_fail
/// use structured_cooperation::{StepContext, Topic};
///
/// #[derive(serde::Serialize)]
/// struct Order { id: u64 }
/// const ORDERS: Topic<Order> = Topic::new("orders");
///
/// fn place(ctx: &mut StepContext<'_>) -> structured_cooperation::Result<()> {
///     ctx.emit(ORDERS, &"not an order")?;
///     Ok(())
/// }
/// ```
pub struct Topic<P: ?Sized> {
    name: &'static str,
    _payload: PhantomData<fn(&P)>,
}

impl<P: ?Sized> Topic<P> {
    /// The topic called `name`. Names follow the topic naming rules (checked on use).
    pub const fn new(name: &'static str) -> Topic<P> {
        Topic {
            name,
            _payload: PhantomData,
        }
    }

    /// The topic's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<P: ?Sized> Clone for Topic<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P: ?Sized> Copy for Topic<P> {}

impl<P: ?Sized> fmt::Debug for Topic<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?}: {})", self.name, std::any::type_name::<P>())
    }
}

/// Something that names a topic for a payload of type `P`: a [`Topic<P>`], or a plain string
/// (which accepts any payload).
pub trait AsTopic<P: ?Sized> {
    /// The topic's name.
    fn topic_name(&self) -> &str;
}

impl<P: ?Sized> AsTopic<P> for &str {
    fn topic_name(&self) -> &str {
        self
    }
}

impl<P: ?Sized> AsTopic<P> for &&str {
    fn topic_name(&self) -> &str {
        self
    }
}

impl<P: ?Sized> AsTopic<P> for String {
    fn topic_name(&self) -> &str {
        self
    }
}

impl<P: ?Sized> AsTopic<P> for &String {
    fn topic_name(&self) -> &str {
        self
    }
}

impl<P: ?Sized> AsTopic<P> for Topic<P> {
    fn topic_name(&self) -> &str {
        self.name
    }
}

impl<P: ?Sized> AsTopic<P> for &Topic<P> {
    fn topic_name(&self) -> &str {
        self.name
    }
}

/// The name of a value a run returns to its parent, fixing the value's type `T`.
///
/// ```
/// use structured_cooperation::ReturnName;
///
/// const PRICE: ReturnName<u64> = ReturnName::new("price");
/// assert_eq!(PRICE.name(), "price");
/// ```
pub struct ReturnName<T: ?Sized> {
    name: &'static str,
    _value: PhantomData<fn(&T)>,
}

impl<T: ?Sized> ReturnName<T> {
    /// The return value called `name`.
    pub const fn new(name: &'static str) -> ReturnName<T> {
        ReturnName {
            name,
            _value: PhantomData,
        }
    }

    /// The value's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T: ?Sized> Clone for ReturnName<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for ReturnName<T> {}

impl<T: ?Sized> fmt::Debug for ReturnName<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ReturnName({:?}: {})",
            self.name,
            std::any::type_name::<T>()
        )
    }
}

/// Something that names a return value of type `T`: a [`ReturnName<T>`], or a plain string
/// (which accepts any type).
pub trait AsReturnName<T: ?Sized> {
    /// The value's name.
    fn return_name(&self) -> &str;
}

impl<T: ?Sized> AsReturnName<T> for &str {
    fn return_name(&self) -> &str {
        self
    }
}

impl<T: ?Sized> AsReturnName<T> for &&str {
    fn return_name(&self) -> &str {
        self
    }
}

impl<T: ?Sized> AsReturnName<T> for String {
    fn return_name(&self) -> &str {
        self
    }
}

impl<T: ?Sized> AsReturnName<T> for &String {
    fn return_name(&self) -> &str {
        self
    }
}

impl<T: ?Sized> AsReturnName<T> for ReturnName<T> {
    fn return_name(&self) -> &str {
        self.name
    }
}

impl<T: ?Sized> AsReturnName<T> for &ReturnName<T> {
    fn return_name(&self) -> &str {
        self.name
    }
}

/// A value one child run returned, as read by its parent with
/// [`StepContext::child_values`](crate::StepContext::child_values).
#[derive(Clone, Debug, PartialEq)]
pub struct ChildValue<T> {
    /// The child run that stored it.
    pub run: RunId,
    /// The child's handler.
    pub handler: String,
    /// The child run's status when the value was read: values stay readable after their run
    /// rolled back, so a parent can tell them apart.
    pub status: crate::core::RunStatus,
    /// The value.
    pub value: T,
}

/// The payload of an action's messages: the caller's input, and where the action puts its
/// output of type `O` (see [`Action`] and
/// [`StepContext::request`](crate::StepContext::request)).
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "I: Serialize", deserialize = "I: Deserialize<'de>"))]
pub struct Request<I, O> {
    /// The name the output is returned under; the caller chose it.
    #[serde(rename = "returnTo")]
    pub return_to: String,
    /// The caller's input.
    pub input: I,
    #[serde(skip)]
    _output: PhantomData<fn() -> O>,
}

impl<I, O> Request<I, O> {
    /// A request for `input`, to be answered under `return_to`.
    pub fn new(return_to: impl Into<String>, input: I) -> Request<I, O> {
        Request {
            return_to: return_to.into(),
            input,
            _output: PhantomData,
        }
    }
}

impl<I: fmt::Debug, O> fmt::Debug for Request<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("return_to", &self.return_to)
            .field("input", &self.input)
            .finish()
    }
}

/// A handler as a type: its name, the topic it listens to (which fixes its payload type) and
/// its saga, subscribed in one call with
/// [`RuntimeBuilder::handler`](crate::RuntimeBuilder::handler).
///
/// ```
/// use structured_cooperation::{Handler, SagaBuilder, StepContext, StepResult, Topic};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Order { id: u64 }
///
/// const ORDERS: Topic<Order> = Topic::new("orders");
///
/// struct OrderSaga;
/// impl Handler for OrderSaga {
///     type Payload = Order;
///     const NAME: &'static str = "order-saga";
///     const TOPIC: Topic<Order> = ORDERS;
///     fn saga(&self, saga: SagaBuilder<Order>) -> SagaBuilder<Order> {
///         saga.step(|_ctx: &mut StepContext<'_>, order: &Order| -> StepResult {
///             println!("placing order {}", order.id);
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The payload type of [`TOPIC`](Self::TOPIC).
    type Payload: Serialize + DeserializeOwned + 'static;
    /// The handler's name.
    const NAME: &'static str;
    /// The topic it listens to.
    const TOPIC: Topic<Self::Payload>;
    /// Adds the steps to `saga`, a builder already named [`NAME`](Self::NAME).
    fn saga(&self, saga: SagaBuilder<Self::Payload>) -> SagaBuilder<Self::Payload>;
}

/// An action: a handler whose purpose is to compute an [`Output`](Self::Output) for the run
/// that asked for it. The caller emits with
/// [`StepContext::request`](crate::StepContext::request), the action answers with
/// [`StepContext::respond`](crate::StepContext::respond), and the caller's next step reads the
/// answer with [`StepContext::child_values`](crate::StepContext::child_values) (or
/// [`child_value`](crate::StepContext::child_value)). Subscribe it with
/// [`RuntimeBuilder::action`](crate::RuntimeBuilder::action).
pub trait Action: Send + Sync + 'static {
    /// What the caller sends.
    type Input: Serialize + DeserializeOwned + 'static;
    /// What the action returns.
    type Output: Serialize + DeserializeOwned + 'static;
    /// The action's handler name.
    const NAME: &'static str;
    /// The topic it listens to.
    const TOPIC: Topic<Request<Self::Input, Self::Output>>;
    /// Adds the steps to `saga`, a builder already named [`NAME`](Self::NAME); one of them
    /// should [`respond`](crate::StepContext::respond).
    fn saga(
        &self,
        saga: SagaBuilder<Request<Self::Input, Self::Output>>,
    ) -> SagaBuilder<Request<Self::Input, Self::Output>>;
}
