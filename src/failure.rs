//! Failures as data: what a step's error or panic becomes once it is recorded.
//!
//! The JSON shape keeps the property names of Scoop's `CooperationFailure` (`type`, `message`,
//! `source`, `causes`) so that traces read the same across implementations; readers tolerate
//! extra properties such as Scoop's `stackTrace`.

use std::any::Any;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A recorded failure: a type, a message, where it came from, the step, and its causes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    // Boxed strings and frames keep the type small: failures travel in `Result`s.
    #[serde(rename = "type")]
    kind: Box<str>,
    message: Box<str>,
    source: Box<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<Box<str>>,
    #[serde(default)]
    causes: Vec<Failure>,
    /// Frames recorded by other implementations (Scoop's JVM stack traces, a script's line);
    /// kept so a failure crossing services loses nothing. Rust failures record none.
    #[serde(
        rename = "stackTrace",
        default,
        skip_serializing_if = "<[Frame]>::is_empty"
    )]
    stack_trace: Box<[Frame]>,
}

/// One frame of a stack trace recorded by another implementation, with Scoop's property names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The file, or `<unknown filename>`.
    #[serde(rename = "fileName")]
    pub file_name: String,
    /// The line.
    #[serde(rename = "lineNumber")]
    pub line_number: i64,
    /// The class, if the language has them and it is known.
    #[serde(rename = "className", default)]
    pub class_name: Option<String>,
    /// The function, if known.
    #[serde(rename = "functionName", default)]
    pub function_name: Option<String>,
}

impl Failure {
    /// A failure with the given type, message and source, no step and no causes.
    pub fn new(
        kind: impl Into<String>,
        message: impl Into<String>,
        source: impl Into<String>,
    ) -> Self {
        Failure {
            kind: kind.into().into_boxed_str(),
            message: non_empty(message.into()).into_boxed_str(),
            source: source.into().into_boxed_str(),
            step: None,
            causes: Vec::new(),
            stack_trace: Box::default(),
        }
    }

    /// The same failure, attributed to a step.
    pub fn with_step(mut self, step: impl Into<String>) -> Self {
        self.step = Some(step.into().into_boxed_str());
        self
    }

    /// The same failure with one more cause appended.
    pub fn with_cause(mut self, cause: Failure) -> Self {
        self.causes.push(cause);
        self
    }

    /// The failure's type: a Rust type name for errors, `panic` for panics, or an engine type
    /// such as `structured_cooperation::PayloadMismatch`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Who raised it: `handler[instance]` for step code, or a caller-supplied string.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The step that was running, if known.
    pub fn step(&self) -> Option<&str> {
        self.step.as_deref()
    }

    /// The causes, outermost first.
    pub fn causes(&self) -> &[Failure] {
        &self.causes
    }

    /// Stack frames recorded by another implementation (empty for Rust failures).
    pub fn stack_trace(&self) -> &[Frame] {
        &self.stack_trace
    }

    /// Builds the failure recorded for a step error.
    pub(crate) fn from_step_error(err: StepError, source: &str, step: &str) -> Failure {
        if let Some(failure) = err.recorded {
            return *failure;
        }
        if err.inner.downcast_ref::<postgres::Error>().is_some() {
            // postgres::Error displays only "db error"; the server's message is its source.
            let message = crate::error::with_sources(&*err.inner);
            return Failure::new(err.kind, message, source).with_step(step);
        }
        let mut failure = Failure::new(err.kind, err.inner.to_string(), source).with_step(step);
        failure.causes = source_chain(err.inner.source(), source);
        failure
    }

    /// Builds the failure recorded for a panic in user code.
    pub(crate) fn from_panic(payload: &(dyn Any + Send), source: &str, step: &str) -> Failure {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "<panic payload is not a string>".to_owned()
        };
        Failure::new("panic", message, source).with_step(step)
    }
}

/// Type strings of the failures the engine itself builds.
pub(crate) mod kinds {
    pub(crate) const CHILD_ROLLED_BACK: &str = "structured_cooperation::ChildRolledBack";
    pub(crate) const CHILD_ROLLBACK_FAILED: &str = "structured_cooperation::ChildRollbackFailed";
    pub(crate) const PARENT_SAID_SO: &str = "structured_cooperation::ParentSaidSo";
    pub(crate) const ROLLBACK_REQUESTED: &str = "structured_cooperation::RollbackRequested";
    pub(crate) const CHILD_OF_COMPENSATION_FAILED: &str =
        "structured_cooperation::CompensationChildFailed";
    pub(crate) const CANCELLED: &str = "structured_cooperation::Cancelled";
}

impl Failure {
    /// Children of the step that was suspended in `step` failed and rolled back.
    pub(crate) fn child_rolled_back(step: &str, causes: Vec<Failure>, source: &str) -> Failure {
        Failure {
            causes,
            ..Failure::new(
                kinds::CHILD_ROLLED_BACK,
                format!("a child failed while the run was suspended in step {step:?}"),
                source,
            )
            .with_step(step)
        }
    }

    /// Children failed to roll back while the run was in `step`. `own` (the run's own
    /// rollback cause, if any) is added as a last cause unless it already occurs inside the
    /// children's failures.
    pub(crate) fn child_rollback_failed(
        step: &str,
        mut causes: Vec<Failure>,
        own: Option<&Failure>,
        source: &str,
    ) -> Failure {
        if let Some(own) = own {
            if !causes.iter().any(|c| c.contains(own)) {
                causes.push(own.clone());
            }
        }
        Failure {
            causes,
            ..Failure::new(
                kinds::CHILD_ROLLBACK_FAILED,
                format!("a child's rollback failed while the run was in step {step:?}"),
                source,
            )
            .with_step(step)
        }
    }

    /// What a parent tells the children it asks to roll back.
    pub(crate) fn parent_said_so(cause: &Failure, source: &str) -> Failure {
        Failure::new(kinds::PARENT_SAID_SO, "the parent is rolling back", source)
            .with_cause(cause.clone())
    }

    /// An operator's cancellation.
    pub(crate) fn cancelled(reason: &str, source: &str) -> Failure {
        Failure::new(kinds::CANCELLED, reason, source)
    }

    /// An operator's request to roll back finished work.
    pub(crate) fn rollback_requested(reason: &str, source: &str) -> Failure {
        Failure::new(kinds::ROLLBACK_REQUESTED, reason, source)
    }

    /// Whether `other` equals this failure or one of its causes, at any depth.
    pub(crate) fn contains(&self, other: &Failure) -> bool {
        self == other || self.causes.iter().any(|c| c.contains(other))
    }
}

fn non_empty(message: String) -> String {
    if message.trim().is_empty() {
        "<no message>".to_owned()
    } else {
        message
    }
}

/// Turns an error's `source()` chain into nested causes. The concrete types of sources are
/// not known at runtime, so they are recorded with a generic type.
fn source_chain(
    mut next: Option<&(dyn std::error::Error + 'static)>,
    source: &str,
) -> Vec<Failure> {
    let mut chain = Vec::new();
    while let Some(err) = next {
        chain.push(Failure::new("error source", err.to_string(), source));
        next = err.source();
    }
    // Nest them: each cause holds the next one.
    chain.into_iter().rev().fold(Vec::new(), |inner, mut f| {
        f.causes = inner;
        vec![f]
    })
}

impl fmt::Display for Failure {
    /// Renders like a backtrace that crosses services, one line per failure:
    ///
    /// ```text
    /// [order-saga[6f1c…]] structured_cooperation::ChildFailed: a child failed (step "0")
    ///   caused by: [payment[9a2e…]] my_app::CardDeclined: card declined (step "charge")
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(f, 0)
    }
}

impl Failure {
    fn render(&self, f: &mut fmt::Formatter<'_>, depth: usize) -> fmt::Result {
        if depth > 0 {
            write!(f, "\n{:indent$}caused by: ", "", indent = depth * 2)?;
        }
        write!(f, "[{}] {}: {}", self.source, self.kind, self.message)?;
        if let Some(step) = &self.step {
            write!(f, " (step {step:?})")?;
        }
        for cause in &self.causes {
            cause.render(f, depth + 1)?;
        }
        Ok(())
    }
}

/// The error type of step closures.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into it with `?`, keeping its type
/// name for the recorded [`Failure`]. For ad-hoc messages use [`StepError::msg`].
pub struct StepError {
    kind: String,
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
    /// A failure to record as it is (rethrowing a failure received from children).
    recorded: Option<Box<Failure>>,
    /// Worth another attempt (see [`RetryPolicy`](crate::RetryPolicy)).
    transient: bool,
}

impl StepError {
    /// A step error carrying just a message.
    pub fn msg(message: impl fmt::Display) -> StepError {
        StepError {
            kind: "structured_cooperation::StepFailed".to_owned(),
            inner: message.to_string().into(),
            recorded: None,
            transient: false,
        }
    }

    /// Fails the step with an existing failure, recorded as it is. This is how a child-failure
    /// handler passes its children's failure on unchanged (see
    /// [`ChildFailures::rethrow`](crate::ChildFailures::rethrow)).
    pub fn from_failure(failure: Failure) -> StepError {
        StepError {
            kind: failure.kind.to_string(),
            inner: failure.message.to_string().into(),
            recorded: Some(Box::new(failure)),
            transient: false,
        }
    }

    /// Wraps an already boxed error (whose concrete type name is no longer known).
    pub fn from_boxed(inner: Box<dyn std::error::Error + Send + Sync + 'static>) -> StepError {
        StepError {
            kind: "boxed error".to_owned(),
            inner,
            recorded: None,
            transient: false,
        }
    }

    /// A step error with an explicit failure type, for callers that want stable type strings
    /// (for example to be matched by another service).
    pub fn with_kind(kind: impl Into<String>, message: impl fmt::Display) -> StepError {
        StepError {
            kind: kind.into(),
            inner: message.to_string().into(),
            recorded: None,
            transient: false,
        }
    }

    /// Marks an error as transient: the step is worth another attempt, as its saga's
    /// [`RetryPolicy`](crate::RetryPolicy) allows (three attempts by default). Use it for
    /// failures a later try may not meet: a timeout, a rate limit, a service restarting.
    ///
    /// ```
    /// use structured_cooperation::StepError;
    ///
    /// let e = StepError::transient(std::io::Error::other("connection reset"));
    /// assert!(e.is_transient());
    /// assert_eq!(e.kind(), "std::io::error::Error");
    /// ```
    pub fn transient(error: impl Into<StepError>) -> StepError {
        StepError {
            transient: true,
            ..error.into()
        }
    }

    /// The type name that will be recorded.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Whether the error is transient: marked with [`transient`](Self::transient), or a
    /// PostgreSQL serialization failure (`40001`) or deadlock (`40P01`) from the step's own
    /// statements, which a new attempt in a new transaction usually passes.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

/// Whether `err` is a PostgreSQL error that a new attempt of the same transaction usually
/// passes: a serialization failure or a deadlock.
fn retryable_database_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let pg = match err.downcast_ref::<crate::Error>() {
        Some(crate::Error::Postgres(pg)) => Some(pg),
        _ => err.downcast_ref::<postgres::Error>(),
    };
    pg.and_then(postgres::Error::code).is_some_and(|code| {
        *code == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
            || *code == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
    })
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StepError {
    fn from(err: E) -> Self {
        StepError {
            kind: std::any::type_name::<E>().to_owned(),
            transient: retryable_database_error(&err),
            inner: Box::new(err),
            recorded: None,
        }
    }
}

impl fmt::Debug for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StepError({}: {})", self.kind, self.inner)
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.inner)
    }
}

/// What step closures return: `Ok(())` to continue, or `Ok(Next::...)` to choose the next step.
pub type StepResult<T = ()> = std::result::Result<T, StepError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("could not reserve stock")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn error_chain_becomes_nested_causes() {
        let err: StepError = Outer(std::io::Error::other("disk on fire")).into();
        assert!(err.kind().ends_with("Outer"));
        let f = Failure::from_step_error(err, "inventory[1]", "reserve");
        assert_eq!(f.message(), "could not reserve stock");
        assert_eq!(f.step(), Some("reserve"));
        assert_eq!(f.causes().len(), 1);
        assert_eq!(f.causes()[0].message(), "disk on fire");
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["type"], f.kind());
        let back: Failure = serde_json::from_value(json).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn ex_01_a_failure_from_another_system_keeps_its_type_and_frames() {
        let json = r#"{"message":"Non-zero exit status returned from process","type":"ExitStatus",
            "source":"external-system","stackTrace":[{"fileName":"script.sh","lineNumber":42}]}"#;
        let f: Failure = serde_json::from_str(json).unwrap();
        assert_eq!(
            f.to_string(),
            "[external-system] ExitStatus: Non-zero exit status returned from process"
        );
        assert_eq!(f.kind(), "ExitStatus");
        assert_eq!(f.source(), "external-system");
        assert_eq!(
            f.stack_trace(),
            [Frame {
                file_name: "script.sh".to_owned(),
                line_number: 42,
                class_name: None,
                function_name: None
            }]
        );
        let again: Failure = serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
        assert_eq!(again, f, "frames survive a round trip");
    }

    #[test]
    fn reads_scoop_shaped_json() {
        let json = r#"{"message":"boom","type":"java.lang.RuntimeException","source":"child[1]",
            "stackTrace":[{"fileName":"X.kt","lineNumber":3}]}"#;
        let f: Failure = serde_json::from_str(json).unwrap();
        assert_eq!(f.kind(), "java.lang.RuntimeException");
        assert!(f.causes().is_empty());
    }

    #[test]
    fn panic_payloads() {
        let p: Box<dyn Any + Send> = Box::new("boom");
        assert_eq!(Failure::from_panic(&*p, "h[1]", "0").message(), "boom");
        let p: Box<dyn Any + Send> = Box::new(String::from("owned boom"));
        assert_eq!(
            Failure::from_panic(&*p, "h[1]", "0").message(),
            "owned boom"
        );
        let p: Box<dyn Any + Send> = Box::new(42);
        assert_eq!(Failure::from_panic(&*p, "h[1]", "0").kind(), "panic");
    }

    #[test]
    fn renders_like_a_backtrace() {
        let f = Failure::new("a::Outer", "outer", "root[1]")
            .with_step("0")
            .with_cause(Failure::new("b::Inner", "", "child[2]"));
        assert_eq!(
            f.to_string(),
            "[root[1]] a::Outer: outer (step \"0\")\n  caused by: [child[2]] b::Inner: <no message>"
        );
    }
}
