//! Deadlines given to launches and emissions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

/// What a deadline bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadlineKind {
    /// The happy path: once it passes, a run that has not finished gives up at its next step
    /// boundary (or when it asks) and rolls back; its compensations still run.
    HappyPath,
    /// The rollback path: once it passes, a rollback that has not finished stops and the run
    /// ends `ROLLBACK_FAILED`.
    Rollback,
    /// Both paths: once it passes, the run gives up and its rollback fails at once — nothing
    /// runs after an absolute deadline.
    Absolute,
}

impl DeadlineKind {
    fn as_str(self) -> &'static str {
        match self {
            DeadlineKind::HappyPath => "happy_path",
            DeadlineKind::Rollback => "rollback",
            DeadlineKind::Absolute => "absolute",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum When {
    /// Measured from the database's clock when the message is written.
    Within(Duration),
    At(SystemTime),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: DeadlineKind,
    when: When,
    source: String,
}

/// Deadlines for a launched or emitted message's runs, and (inherited) for everything below
/// them: a run's deadline of each kind is the earliest of its own and its parent's, and the run
/// keeps a trace of every deadline that applied and who set it. Times given as durations are
/// measured with the database clock, so hosts with skewed clocks agree.
///
/// ```
/// use std::time::Duration;
/// use structured_cooperation::Deadlines;
///
/// let deadlines = Deadlines::new()
///     .happy_path_within(Duration::from_secs(30), "checkout")
///     .absolute_within(Duration::from_secs(120), "checkout");
/// assert!(!deadlines.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deadlines {
    entries: Vec<Entry>,
}

impl Deadlines {
    /// No deadlines (besides inherited ones).
    pub fn new() -> Deadlines {
        Deadlines::default()
    }

    fn push(mut self, kind: DeadlineKind, when: When, source: impl Into<String>) -> Self {
        self.entries.push(Entry {
            kind,
            when,
            source: source.into(),
        });
        self
    }

    /// A deadline of `kind`, `within` after the message is written; `source` names who set it.
    pub fn within(self, kind: DeadlineKind, within: Duration, source: impl Into<String>) -> Self {
        self.push(kind, When::Within(within), source)
    }

    /// A deadline of `kind` at `at`; `source` names who set it.
    pub fn at(self, kind: DeadlineKind, at: SystemTime, source: impl Into<String>) -> Self {
        self.push(kind, When::At(at), source)
    }

    /// A happy-path deadline `within` from now (database clock).
    pub fn happy_path_within(self, within: Duration, source: impl Into<String>) -> Self {
        self.within(DeadlineKind::HappyPath, within, source)
    }

    /// A rollback deadline `within` from now (database clock).
    pub fn rollback_within(self, within: Duration, source: impl Into<String>) -> Self {
        self.within(DeadlineKind::Rollback, within, source)
    }

    /// An absolute deadline `within` from now (database clock).
    pub fn absolute_within(self, within: Duration, source: impl Into<String>) -> Self {
        self.within(DeadlineKind::Absolute, within, source)
    }

    /// Whether no deadline was given.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The JSON the emit statement reads: `[{kind, in_us | at_us, source}]`.
    pub(crate) fn to_json(&self) -> Option<String> {
        if self.entries.is_empty() {
            return None;
        }
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let entries: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|e| match &e.when {
                When::Within(d) => {
                    json!({"kind": e.kind.as_str(), "in_us": micros(*d), "source": e.source})
                }
                When::At(t) => {
                    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                    json!({"kind": e.kind.as_str(), "at_us": micros(since), "source": e.source})
                }
            })
            .collect();
        Some(serde_json::Value::Array(entries).to_string())
    }
}
