//! Message metadata keys that the server writes, and who may write and read
//! them. One table, [`METADATA_KEYS`], says both, so that the keys customers
//! may not set and the keys customers never see cannot drift apart: a
//! staff-only key a customer could write would let a customer forge the
//! staff record of a message.

/// The model that wrote an AI message, `"human"` for people.
pub const PROVIDER: &str = "provider";
/// The provider's own details (`{"human": {"name"}}`, the model's finish
/// reason, the workflow that posted).
pub const PROVIDER_METADATA: &str = "providerMetadata";
/// Tokens a reply cost.
pub const USAGE: &str = "usage";
/// The confidence the AI reported for its reply.
pub const CONFIDENCE: &str = "confidence";
/// The routing decision that made the reply.
pub const ROUTING: &str = "routing";
/// Every decision the reply's run made, in order.
pub const DECISIONS: &str = "decisions";
/// The workflow run that posted the message.
pub const RUN_ID: &str = "run_id";
/// A draft's review: who approved or rejected it, and how.
pub const APPROVAL: &str = "approval";
/// A copilot suggestion (`{"requested_by", "instructions"?}`), or the
/// suggestion a reply was sent from (`{"id", "edited"}`).
pub const SUGGESTION: &str = "suggestion";
/// What the desk did (a holding message, a passed deadline).
pub const DESK: &str = "desk";

/// Who may write a metadata key and who may read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAccess {
    /// Only the server (or an admin) writes it: a customer's message may
    /// not set it.
    pub server_written: bool,
    /// Left out of a customer's view of a message.
    pub staff_only: bool,
}

/// Written by the server, seen by everyone.
const SERVER_WRITTEN: KeyAccess = KeyAccess {
    server_written: true,
    staff_only: false,
};
/// Written by the server, seen by staff only.
const STAFF_ONLY: KeyAccess = KeyAccess {
    server_written: true,
    staff_only: true,
};

/// Every metadata key the server gives a meaning to, and its access. Keys
/// not listed are the integrator's (or the customer's) own.
pub const METADATA_KEYS: [(&str, KeyAccess); 10] = [
    (PROVIDER, SERVER_WRITTEN),
    (PROVIDER_METADATA, SERVER_WRITTEN),
    (USAGE, STAFF_ONLY),
    (CONFIDENCE, STAFF_ONLY),
    (ROUTING, STAFF_ONLY),
    (DECISIONS, STAFF_ONLY),
    (RUN_ID, STAFF_ONLY),
    (APPROVAL, STAFF_ONLY),
    (SUGGESTION, STAFF_ONLY),
    (DESK, STAFF_ONLY),
];

fn access(key: &str) -> Option<KeyAccess> {
    METADATA_KEYS
        .iter()
        .find(|(name, _)| *name == key)
        .map(|(_, access)| *access)
}

/// Whether only the server (or an admin) may write `key`.
pub fn is_reserved(key: &str) -> bool {
    access(key).is_some_and(|a| a.server_written)
}

/// Whether `key` is left out of a customer's view of a message.
pub fn is_staff_only(key: &str) -> bool {
    access(key).is_some_and(|a| a.staff_only)
}

/// The keys only the server (or an admin) may write, in table order.
pub fn reserved_keys() -> impl Iterator<Item = &'static str> {
    METADATA_KEYS
        .into_iter()
        .filter(|(_, access)| access.server_written)
        .map(|(key, _)| key)
}

/// The keys a customer's view of a message leaves out, in table order.
pub fn staff_only_keys() -> impl Iterator<Item = &'static str> {
    METADATA_KEYS
        .into_iter()
        .filter(|(_, access)| access.staff_only)
        .map(|(key, _)| key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_staff_only_key_is_reserved() {
        // A staff-only key a customer could set would reach the staff view
        // as if the server had written it.
        for key in staff_only_keys() {
            assert!(is_reserved(key), "`{key}` is staff-only but not reserved");
        }
    }

    #[test]
    fn keys_are_listed_once() {
        for (i, (key, _)) in METADATA_KEYS.iter().enumerate() {
            assert!(
                METADATA_KEYS[i + 1..].iter().all(|(other, _)| other != key),
                "`{key}` is listed twice"
            );
        }
    }

    #[test]
    fn provider_keys_are_reserved_but_visible() {
        assert_eq!(
            reserved_keys().collect::<Vec<_>>(),
            [
                "provider",
                "providerMetadata",
                "usage",
                "confidence",
                "routing",
                "decisions",
                "run_id",
                "approval",
                "suggestion",
                "desk",
            ]
        );
        let mut staff: Vec<_> = staff_only_keys().collect();
        staff.sort_unstable();
        assert_eq!(
            staff,
            [
                "approval",
                "confidence",
                "decisions",
                "desk",
                "routing",
                "run_id",
                "suggestion",
                "usage",
            ]
        );
        assert!(!is_staff_only("provider") && !is_staff_only("providerMetadata"));
        assert!(!is_reserved("order_id") && !is_staff_only("order_id"));
    }
}
