//! Newtype ids. All are UUID v7, so they sort by creation time.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            Serialize, Deserialize, JsonSchema,
        )]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// A conversation between one customer and the support side.
    ThreadId
);
id_type!(
    /// One message of a thread.
    MessageId
);
id_type!(
    /// An API token (its id, never its secret).
    TokenId
);
id_type!(
    /// An item of the human inbox.
    InboxItemId
);
id_type!(
    /// One run of a workflow.
    RunId
);
id_type!(
    /// An event delivered to a workflow run.
    EventId
);
id_type!(
    /// One entry of a thread's assignment history.
    AssignmentId
);
id_type!(
    /// A labelled example for the embeddings router.
    RoutingExampleId
);
