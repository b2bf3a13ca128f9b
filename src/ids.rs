//! Identifiers that cross the public API, as newtypes over UUIDs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID.
            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = crate::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s.trim()).map(Self).map_err(|source| crate::Error::InvalidId {
                    kind: $kind,
                    input: s.to_owned(),
                    source,
                })
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

id_type!(
    /// The id of a cooperation root: the message launched on the global scope that started a
    /// tree of runs. It equals that message's [`MessageId`].
    RootId,
    "root id"
);
id_type!(
    /// The id of a message (an emission on a topic).
    MessageId,
    "message id"
);
id_type!(
    /// The id of a run: one handler's execution of one message.
    RunId,
    "run id"
);

impl RootId {
    /// The id of the root message, which is the same UUID.
    pub fn message_id(&self) -> MessageId {
        MessageId(self.0)
    }
}

/// A new time-ordered id (UUIDv7), so that ids sort roughly by creation.
pub(crate) fn new_uuid() -> Uuid {
    Uuid::now_v7()
}
