//! One harness, two runtimes. A scenario written once as `fn scenario<E: Engine>()` runs on
//! the blocking runtime and, with the `tokio` feature, on the tokio runtime ([`both!`]).
//!
//! Step closures are written synchronously against the flavor-generic `StepContext<'_,
//! E::X>` (everything but the transaction and the reads and writes of values is the same for
//! both flavors). On tokio, the harness turns each into an async step that runs it inside
//! `block_in_place`, and [`Engine`]'s I/O helpers (`store_value`, `execute`, ...) await the
//! async context's methods there. The runtime itself (dispatcher, tasks, attempts, executor,
//! listener) is the real tokio one; native async steps are exercised in `interop.rs`.

use std::time::Duration;

use postgres::types::ToSql;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use structured_cooperation::{
    AsReturnName, Blocking, ChildFailures, ChildValue, EmitOptions, Failure, Flavor, HistoryEvent,
    Next, Requested, Result, RetryPolicy, RootId, RunInfo, Runtime, RuntimeStats, SagaBuilder,
    SagaOf, Scope, StepContext, StepResult, TreeOutcome,
};

use crate::util::TestDb;

/// Declares, for each scenario `fn name<E: Engine>()`, a module `name` with a test per
/// runtime: `name::blocking` and `name::tokio`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn blocking() {
                super::$name::<crate::engine::OnBlocking>()
            }

            #[cfg(feature = "tokio")]
            #[test]
            fn tokio() {
                super::$name::<crate::engine::OnTokio>()
            }
        }
    )*};
}
pub(crate) use both;

/// A runtime that a test drives synchronously.
pub trait Served {
    fn launch(&self, topic: &str, payload: &Value) -> Result<RootId>;
    fn launch_with(
        &self,
        topic: &str,
        payload: &Value,
        options: impl Into<EmitOptions>,
    ) -> Result<RootId>;
    fn launch_many(&self, topic: &str, payloads: &[Value]) -> Result<Vec<RootId>>;
    fn wait_for(&self, root: RootId, timeout: Duration) -> Result<TreeOutcome>;
    fn wait_idle(&self, timeout: Duration) -> Result<()>;
    fn history(&self, root: RootId) -> Result<Vec<HistoryEvent>>;
    fn outcome(&self, root: RootId) -> Result<TreeOutcome>;
    fn tree(&self, root: RootId) -> Result<Vec<RunInfo>>;
    fn cancel(&self, scope: impl Into<Scope>, source: &str, reason: &str) -> Result<Requested>;
    fn rollback(&self, scope: impl Into<Scope>, source: &str, reason: &str) -> Result<Requested>;
    fn stats(&self) -> RuntimeStats;
    fn shutdown(self) -> Result<()>;
}

impl Served for Runtime {
    fn launch(&self, topic: &str, payload: &Value) -> Result<RootId> {
        Runtime::launch(self, topic, payload)
    }
    fn launch_with(
        &self,
        topic: &str,
        payload: &Value,
        options: impl Into<EmitOptions>,
    ) -> Result<RootId> {
        Runtime::launch_with(self, topic, payload, options)
    }
    fn launch_many(&self, topic: &str, payloads: &[Value]) -> Result<Vec<RootId>> {
        self.client().launch_many(topic, payloads)
    }
    fn wait_for(&self, root: RootId, timeout: Duration) -> Result<TreeOutcome> {
        Runtime::wait_for(self, root, timeout)
    }
    fn wait_idle(&self, timeout: Duration) -> Result<()> {
        Runtime::wait_idle(self, timeout)
    }
    fn history(&self, root: RootId) -> Result<Vec<HistoryEvent>> {
        Runtime::history(self, root)
    }
    fn outcome(&self, root: RootId) -> Result<TreeOutcome> {
        self.client().outcome(root)
    }
    fn tree(&self, root: RootId) -> Result<Vec<RunInfo>> {
        self.client().tree(root)
    }
    fn cancel(&self, scope: impl Into<Scope>, source: &str, reason: &str) -> Result<Requested> {
        Runtime::cancel(self, scope, source, reason)
    }
    fn rollback(&self, scope: impl Into<Scope>, source: &str, reason: &str) -> Result<Requested> {
        self.client().rollback(scope, source, reason)
    }
    fn stats(&self) -> RuntimeStats {
        Runtime::stats(self)
    }
    fn shutdown(self) -> Result<()> {
        Runtime::shutdown(self)
    }
}

/// A runtime's settings, as tests set them, before it starts.
pub struct Config<E: Engine> {
    url: String,
    schema: String,
    subscriptions: Vec<(String, SagaOf<E::X>, Option<usize>)>,
    workers: Option<usize>,
    safety_net: Option<Duration>,
    backoff: Option<(Duration, Duration)>,
    max_json_bytes: Option<usize>,
    strict_topics: bool,
    steps_per_commit: usize,
    vacuum_after: Option<Option<u64>>,
    older: Vec<(String, SagaOf<E::X>)>,
}

impl<E: Engine> Config<E> {
    pub fn subscribe(mut self, topic: &str, saga: SagaOf<E::X>) -> Self {
        self.subscriptions.push((topic.to_owned(), saga, None));
        self
    }
    pub fn subscribe_with(mut self, topic: &str, saga: SagaOf<E::X>, concurrency: usize) -> Self {
        self.subscriptions
            .push((topic.to_owned(), saga, Some(concurrency)));
        self
    }
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }
    pub fn safety_net_interval(mut self, interval: Duration) -> Self {
        self.safety_net = Some(interval);
        self
    }
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = Some((base, max));
        self
    }
    pub fn strict_topics(mut self) -> Self {
        self.strict_topics = true;
        self
    }
    pub fn steps_per_commit(mut self, k: usize) -> Self {
        self.steps_per_commit = k;
        self
    }
    pub fn max_json_bytes(mut self, limit: usize) -> Self {
        self.max_json_bytes = Some(limit);
        self
    }
    pub fn also_serve(mut self, topic: &str, saga: SagaOf<E::X>) -> Self {
        self.older.push((topic.to_owned(), saga));
        self
    }
    pub fn vacuum_runs_after(mut self, dead: Option<u64>) -> Self {
        self.vacuum_after = Some(dead);
        self
    }
    pub fn start(self) -> Result<E::Runtime> {
        E::start(self)
    }
}

/// Builds a saga of `E`'s flavor from synchronous closures.
pub struct Builder<P, E: Engine> {
    inner: SagaBuilder<P, E::X>,
}

impl<P: DeserializeOwned + Send + Sync + 'static, E: Engine> Builder<P, E> {
    pub fn step<F, O>(self, f: F) -> Self
    where
        F: Fn(&mut StepContext<'_, E::X>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next> + Send + 'static,
    {
        Builder {
            inner: E::step(self.inner, None, f),
        }
    }
    pub fn step_named<F, O>(self, name: &str, f: F) -> Self
    where
        F: Fn(&mut StepContext<'_, E::X>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next> + Send + 'static,
    {
        Builder {
            inner: E::step(self.inner, Some(name.to_owned()), f),
        }
    }
    pub fn rollback<F>(self, f: F) -> Self
    where
        F: Fn(&mut StepContext<'_, E::X>, &P, &Failure) -> StepResult<()> + Send + Sync + 'static,
    {
        Builder {
            inner: E::rollback(self.inner, f),
        }
    }
    pub fn on_child_failures<F>(self, f: F) -> Self
    where
        F: Fn(&mut StepContext<'_, E::X>, &P, &ChildFailures) -> StepResult<Next>
            + Send
            + Sync
            + 'static,
    {
        Builder {
            inner: E::on_child_failures(self.inner, f),
        }
    }
    pub fn try_finally<F, O, G>(self, body: F, finally: G) -> Self
    where
        F: Fn(&mut StepContext<'_, E::X>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next> + Send + 'static,
        G: Fn(&mut StepContext<'_, E::X>, &P) -> StepResult<()> + Send + Sync + 'static,
    {
        Builder {
            inner: E::try_finally(self.inner, body, finally),
        }
    }
    pub fn scheduled_step<A, F, O>(self, at: A, body: F) -> Self
    where
        A: Fn(&P) -> std::time::SystemTime + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_, E::X>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next> + Send + 'static,
    {
        Builder {
            inner: E::scheduled_step(self.inner, at, body),
        }
    }
    pub fn sleep(self, duration: Duration) -> Self {
        Builder {
            inner: self.inner.sleep(duration),
        }
    }
    pub fn sleep_named(self, name: &str, duration: Duration) -> Self {
        Builder {
            inner: self.inner.sleep_named(name, duration),
        }
    }
    pub fn retry(self, policy: RetryPolicy) -> Self {
        Builder {
            inner: self.inner.retry(policy),
        }
    }
    pub fn default_retry(self, policy: RetryPolicy) -> Self {
        Builder {
            inner: self.inner.default_retry(policy),
        }
    }
    pub fn periodic(self, every: Duration, runs: Option<u32>) -> Self {
        Builder {
            inner: self.inner.periodic(every, runs),
        }
    }
    pub fn version(self, version: &str) -> Self {
        Builder {
            inner: self.inner.version(version),
        }
    }
    pub fn build(self) -> Result<SagaOf<E::X>> {
        self.inner.build()
    }
}

/// What a runtime flavor means to the scenarios: how to build its sagas from synchronous
/// closures, how step code reaches the database, and how to start it.
pub trait Engine: Sized + 'static {
    type X: Flavor;
    type Runtime: Served;

    fn new_builder<P: DeserializeOwned + Send + Sync + 'static>(
        name: &str,
    ) -> SagaBuilder<P, Self::X>;
    fn start(config: Config<Self>) -> Result<Self::Runtime>;

    fn step<P, F, O>(
        b: SagaBuilder<P, Self::X>,
        name: Option<String>,
        f: F,
    ) -> SagaBuilder<P, Self::X>
    where
        P: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_, Self::X>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next> + Send + 'static;
    fn rollback<P, F>(b: SagaBuilder<P, Self::X>, f: F) -> SagaBuilder<P, Self::X>
    where
        P: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_, Self::X>, &P, &Failure) -> StepResult<()>
            + Send
            + Sync
            + 'static;
    fn on_child_failures<P, F>(b: SagaBuilder<P, Self::X>, f: F) -> SagaBuilder<P, Self::X>
    where
        P: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_, Self::X>, &P, &ChildFailures) -> StepResult<Next>
            + Send
            + Sync
            + 'static;
    fn try_finally<P, F, O, G>(
        b: SagaBuilder<P, Self::X>,
        body: F,
        finally: G,
    ) -> SagaBuilder<P, Self::X>
    where
        P: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_, Self::X>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next> + Send + 'static,
        G: Fn(&mut StepContext<'_, Self::X>, &P) -> StepResult<()> + Send + Sync + 'static;
    fn scheduled_step<P, A, F, O>(
        b: SagaBuilder<P, Self::X>,
        at: A,
        body: F,
    ) -> SagaBuilder<P, Self::X>
    where
        P: DeserializeOwned + Send + Sync + 'static,
        A: Fn(&P) -> std::time::SystemTime + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_, Self::X>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next> + Send + 'static;

    fn store_value<T: Serialize + ?Sized>(
        ctx: &mut StepContext<'_, Self::X>,
        name: impl AsReturnName<T>,
        value: &T,
    ) -> Result<()>;
    fn child_values<T: DeserializeOwned>(
        ctx: &mut StepContext<'_, Self::X>,
        name: impl AsReturnName<T>,
    ) -> Result<Vec<ChildValue<T>>>;
    fn child_value<T: DeserializeOwned>(
        ctx: &mut StepContext<'_, Self::X>,
        name: impl AsReturnName<T>,
        handler: &str,
    ) -> Result<Option<T>>;
    fn execute(
        ctx: &mut StepContext<'_, Self::X>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<u64, postgres::Error>;
    fn query_one(
        ctx: &mut StepContext<'_, Self::X>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<postgres::Row, postgres::Error>;
    fn should_give_up(
        ctx: &mut StepContext<'_, Self::X>,
    ) -> std::result::Result<bool, postgres::Error>;
    fn give_up_if_necessary(ctx: &mut StepContext<'_, Self::X>) -> StepResult<()>;

    /// A saga builder of this flavor.
    fn saga<P: DeserializeOwned + Send + Sync + 'static>(name: &str) -> Builder<P, Self> {
        Builder {
            inner: Self::new_builder(name),
        }
    }

    /// This flavor's runtime on `db`'s schema.
    fn runtime(db: &TestDb) -> Config<Self> {
        Config {
            url: db.url.clone(),
            schema: db.schema.clone(),
            subscriptions: Vec::new(),
            workers: None,
            safety_net: None,
            backoff: None,
            max_json_bytes: None,
            strict_topics: false,
            steps_per_commit: 1,
            vacuum_after: None,
            older: Vec::new(),
        }
    }
}

/// The blocking runtime.
pub enum OnBlocking {}

impl Engine for OnBlocking {
    type X = Blocking;
    type Runtime = Runtime;

    fn new_builder<P: DeserializeOwned + Send + Sync + 'static>(name: &str) -> SagaBuilder<P> {
        structured_cooperation::Saga::builder(name)
    }

    fn start(config: Config<Self>) -> Result<Runtime> {
        let mut b = Runtime::builder(&config.url)
            .schema(&config.schema)
            .connect_timeout(Duration::from_secs(5));
        if let Some(w) = config.workers {
            b = b.workers(w);
        }
        if let Some(s) = config.safety_net {
            b = b.safety_net_interval(s);
        }
        if let Some((base, max)) = config.backoff {
            b = b.retry_backoff(base, max);
        }
        if let Some(limit) = config.max_json_bytes {
            b = b.max_json_bytes(limit);
        }
        if let Some(dead) = config.vacuum_after {
            b = b.vacuum_runs_after(dead);
        }
        b = b
            .strict_topics(config.strict_topics)
            .steps_per_commit(config.steps_per_commit);
        for (topic, saga, concurrency) in config.subscriptions {
            b = match concurrency {
                Some(c) => b.subscribe_with(topic, saga, c),
                None => b.subscribe(topic, saga),
            };
        }
        for (topic, saga) in config.older {
            b = b.also_serve(topic, saga);
        }
        b.start()
    }

    fn step<P, F, O>(b: SagaBuilder<P>, name: Option<String>, f: F) -> SagaBuilder<P>
    where
        P: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next> + Send + 'static,
    {
        match name {
            Some(name) => b.step_named(name, f),
            None => b.step(f),
        }
    }
    fn rollback<P, F>(b: SagaBuilder<P>, f: F) -> SagaBuilder<P>
    where
        P: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_>, &P, &Failure) -> StepResult<()> + Send + Sync + 'static,
    {
        b.rollback(f)
    }
    fn on_child_failures<P, F>(b: SagaBuilder<P>, f: F) -> SagaBuilder<P>
    where
        P: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_>, &P, &ChildFailures) -> StepResult<Next> + Send + Sync + 'static,
    {
        b.on_child_failures(f)
    }
    fn try_finally<P, F, O, G>(b: SagaBuilder<P>, body: F, finally: G) -> SagaBuilder<P>
    where
        P: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next> + Send + 'static,
        G: Fn(&mut StepContext<'_>, &P) -> StepResult<()> + Send + Sync + 'static,
    {
        b.try_finally(body, finally)
    }
    fn scheduled_step<P, A, F, O>(b: SagaBuilder<P>, at: A, body: F) -> SagaBuilder<P>
    where
        P: DeserializeOwned + Send + Sync + 'static,
        A: Fn(&P) -> std::time::SystemTime + Send + Sync + 'static,
        F: Fn(&mut StepContext<'_>, &P) -> StepResult<O> + Send + Sync + 'static,
        O: Into<Next> + Send + 'static,
    {
        b.scheduled_step(at, body)
    }

    fn store_value<T: Serialize + ?Sized>(
        ctx: &mut StepContext<'_>,
        name: impl AsReturnName<T>,
        value: &T,
    ) -> Result<()> {
        ctx.store_value(name, value)
    }
    fn child_values<T: DeserializeOwned>(
        ctx: &mut StepContext<'_>,
        name: impl AsReturnName<T>,
    ) -> Result<Vec<ChildValue<T>>> {
        ctx.child_values(name)
    }
    fn child_value<T: DeserializeOwned>(
        ctx: &mut StepContext<'_>,
        name: impl AsReturnName<T>,
        handler: &str,
    ) -> Result<Option<T>> {
        ctx.child_value(name, handler)
    }
    fn execute(
        ctx: &mut StepContext<'_>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<u64, postgres::Error> {
        ctx.tx().execute(sql, params)
    }
    fn query_one(
        ctx: &mut StepContext<'_>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<postgres::Row, postgres::Error> {
        ctx.tx().query_one(sql, params)
    }
    fn should_give_up(ctx: &mut StepContext<'_>) -> std::result::Result<bool, postgres::Error> {
        ctx.should_give_up()
    }
    fn give_up_if_necessary(ctx: &mut StepContext<'_>) -> StepResult<()> {
        ctx.give_up_if_necessary()
    }
}

#[cfg(feature = "tokio")]
pub use on_tokio::OnTokio;

#[cfg(feature = "tokio")]
mod on_tokio {
    use std::future::{Future, ready};
    use std::time::Duration;

    use postgres::types::ToSql;
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::Value;
    use structured_cooperation::tokio as sct;
    use structured_cooperation::tokio::Tokio;
    use structured_cooperation::{
        AsReturnName, ChildFailures, ChildValue, EmitOptions, Failure, HistoryEvent, Next,
        Requested, Result, RootId, RunInfo, RuntimeStats, SagaBuilder, Scope, StepContext,
        StepResult, TreeOutcome,
    };

    use super::{Config, Engine, Served};

    /// The tokio runtime, on a multi-thread tokio runtime of its own.
    pub enum OnTokio {}

    /// Runs a synchronous step closure on a tokio worker thread that may block.
    fn blocking<R>(f: impl FnOnce() -> R) -> R {
        tokio::task::block_in_place(f)
    }

    /// Awaits an async context method from synchronous step code (inside `blocking`).
    fn wait<T>(fut: impl Future<Output = T>) -> T {
        tokio::runtime::Handle::current().block_on(fut)
    }

    pub struct TokioServed {
        rt: tokio::runtime::Runtime,
        runtime: Option<sct::Runtime>,
    }

    impl TokioServed {
        fn runtime(&self) -> &sct::Runtime {
            self.runtime.as_ref().expect("running")
        }
    }

    impl Drop for TokioServed {
        fn drop(&mut self) {
            if let Some(runtime) = self.runtime.take() {
                let _ = self.rt.block_on(runtime.shutdown());
            }
        }
    }

    impl Served for TokioServed {
        fn launch(&self, topic: &str, payload: &Value) -> Result<RootId> {
            self.rt.block_on(self.runtime().launch(topic, payload))
        }
        fn launch_with(
            &self,
            topic: &str,
            payload: &Value,
            options: impl Into<EmitOptions>,
        ) -> Result<RootId> {
            self.rt
                .block_on(self.runtime().launch_with(topic, payload, options))
        }
        fn launch_many(&self, topic: &str, payloads: &[Value]) -> Result<Vec<RootId>> {
            self.rt
                .block_on(self.runtime().client().launch_many(topic, payloads))
        }
        fn wait_for(&self, root: RootId, timeout: Duration) -> Result<TreeOutcome> {
            self.rt.block_on(self.runtime().wait_for(root, timeout))
        }
        fn wait_idle(&self, timeout: Duration) -> Result<()> {
            self.rt.block_on(self.runtime().wait_idle(timeout))
        }
        fn history(&self, root: RootId) -> Result<Vec<HistoryEvent>> {
            self.rt.block_on(self.runtime().history(root))
        }
        fn outcome(&self, root: RootId) -> Result<TreeOutcome> {
            self.rt.block_on(self.runtime().client().outcome(root))
        }
        fn tree(&self, root: RootId) -> Result<Vec<RunInfo>> {
            self.rt.block_on(self.runtime().client().tree(root))
        }
        fn cancel(&self, scope: impl Into<Scope>, source: &str, reason: &str) -> Result<Requested> {
            self.rt
                .block_on(self.runtime().cancel(scope, source, reason))
        }
        fn rollback(
            &self,
            scope: impl Into<Scope>,
            source: &str,
            reason: &str,
        ) -> Result<Requested> {
            self.rt
                .block_on(self.runtime().client().rollback(scope, source, reason))
        }
        fn stats(&self) -> RuntimeStats {
            self.runtime().stats()
        }
        fn shutdown(mut self) -> Result<()> {
            match self.runtime.take() {
                Some(runtime) => self.rt.block_on(runtime.shutdown()),
                None => Ok(()),
            }
        }
    }

    impl Engine for OnTokio {
        type X = Tokio;
        type Runtime = TokioServed;

        fn new_builder<P: DeserializeOwned + Send + Sync + 'static>(
            name: &str,
        ) -> SagaBuilder<P, Tokio> {
            sct::Saga::builder(name)
        }

        fn start(config: Config<Self>) -> Result<TokioServed> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let mut b = sct::Runtime::builder(&config.url)
                .schema(&config.schema)
                .connect_timeout(Duration::from_secs(5));
            if let Some(w) = config.workers {
                b = b.workers(w);
            }
            if let Some(s) = config.safety_net {
                b = b.safety_net_interval(s);
            }
            if let Some((base, max)) = config.backoff {
                b = b.retry_backoff(base, max);
            }
            if let Some(limit) = config.max_json_bytes {
                b = b.max_json_bytes(limit);
            }
            if let Some(dead) = config.vacuum_after {
                b = b.vacuum_runs_after(dead);
            }
            b = b
                .strict_topics(config.strict_topics)
                .steps_per_commit(config.steps_per_commit);
            for (topic, saga, concurrency) in config.subscriptions {
                b = match concurrency {
                    Some(c) => b.subscribe_with(topic, saga, c),
                    None => b.subscribe(topic, saga),
                };
            }
            for (topic, saga) in config.older {
                b = b.also_serve(topic, saga);
            }
            let runtime = rt.block_on(b.start())?;
            Ok(TokioServed {
                rt,
                runtime: Some(runtime),
            })
        }

        fn step<P, F, O>(
            b: SagaBuilder<P, Tokio>,
            name: Option<String>,
            f: F,
        ) -> SagaBuilder<P, Tokio>
        where
            P: DeserializeOwned + Send + Sync + 'static,
            F: Fn(&mut StepContext<'_, Tokio>, &P) -> StepResult<O> + Send + Sync + 'static,
            O: Into<Next> + Send + 'static,
        {
            match name {
                Some(name) => {
                    b.step_named(name, move |ctx, p| Box::pin(ready(blocking(|| f(ctx, p)))))
                }
                None => b.step(move |ctx, p| Box::pin(ready(blocking(|| f(ctx, p))))),
            }
        }
        fn rollback<P, F>(b: SagaBuilder<P, Tokio>, f: F) -> SagaBuilder<P, Tokio>
        where
            P: DeserializeOwned + Send + Sync + 'static,
            F: Fn(&mut StepContext<'_, Tokio>, &P, &Failure) -> StepResult<()>
                + Send
                + Sync
                + 'static,
        {
            b.rollback(move |ctx, p, cause| Box::pin(ready(blocking(|| f(ctx, p, cause)))))
        }
        fn on_child_failures<P, F>(b: SagaBuilder<P, Tokio>, f: F) -> SagaBuilder<P, Tokio>
        where
            P: DeserializeOwned + Send + Sync + 'static,
            F: Fn(&mut StepContext<'_, Tokio>, &P, &ChildFailures) -> StepResult<Next>
                + Send
                + Sync
                + 'static,
        {
            b.on_child_failures(move |ctx, p, failures| {
                Box::pin(ready(blocking(|| f(ctx, p, failures))))
            })
        }
        fn try_finally<P, F, O, G>(
            b: SagaBuilder<P, Tokio>,
            body: F,
            finally: G,
        ) -> SagaBuilder<P, Tokio>
        where
            P: DeserializeOwned + Send + Sync + 'static,
            F: Fn(&mut StepContext<'_, Tokio>, &P) -> StepResult<O> + Send + Sync + 'static,
            O: Into<Next> + Send + 'static,
            G: Fn(&mut StepContext<'_, Tokio>, &P) -> StepResult<()> + Send + Sync + 'static,
        {
            b.try_finally(
                move |ctx, p| Box::pin(ready(blocking(|| body(ctx, p)))),
                move |ctx, p| Box::pin(ready(blocking(|| finally(ctx, p)))),
            )
        }
        fn scheduled_step<P, A, F, O>(
            b: SagaBuilder<P, Tokio>,
            at: A,
            body: F,
        ) -> SagaBuilder<P, Tokio>
        where
            P: DeserializeOwned + Send + Sync + 'static,
            A: Fn(&P) -> std::time::SystemTime + Send + Sync + 'static,
            F: Fn(&mut StepContext<'_, Tokio>, &P) -> StepResult<O> + Send + Sync + 'static,
            O: Into<Next> + Send + 'static,
        {
            b.scheduled_step(at, move |ctx, p| Box::pin(ready(blocking(|| body(ctx, p)))))
        }

        fn store_value<T: Serialize + ?Sized>(
            ctx: &mut StepContext<'_, Tokio>,
            name: impl AsReturnName<T>,
            value: &T,
        ) -> Result<()> {
            wait(ctx.store_value(name, value))
        }
        fn child_values<T: DeserializeOwned>(
            ctx: &mut StepContext<'_, Tokio>,
            name: impl AsReturnName<T>,
        ) -> Result<Vec<ChildValue<T>>> {
            wait(ctx.child_values(name))
        }
        fn child_value<T: DeserializeOwned>(
            ctx: &mut StepContext<'_, Tokio>,
            name: impl AsReturnName<T>,
            handler: &str,
        ) -> Result<Option<T>> {
            wait(ctx.child_value(name, handler))
        }
        fn execute(
            ctx: &mut StepContext<'_, Tokio>,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
        ) -> std::result::Result<u64, postgres::Error> {
            wait(async { ctx.tx().await.execute(sql, params).await })
        }
        fn query_one(
            ctx: &mut StepContext<'_, Tokio>,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
        ) -> std::result::Result<postgres::Row, postgres::Error> {
            wait(async { ctx.tx().await.query_one(sql, params).await })
        }
        fn should_give_up(
            ctx: &mut StepContext<'_, Tokio>,
        ) -> std::result::Result<bool, postgres::Error> {
            wait(ctx.should_give_up())
        }
        fn give_up_if_necessary(ctx: &mut StepContext<'_, Tokio>) -> StepResult<()> {
            wait(ctx.give_up_if_necessary())
        }
    }
}
