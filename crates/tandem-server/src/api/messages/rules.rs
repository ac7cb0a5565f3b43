//! Who may post what: turns a [`PostMessage`] into a [`NewMessage`] for the
//! caller's token, or says why not.
//!
//! - Customers post `role: user` text. They never set role, agent name,
//!   author, visibility, status or the reserved metadata keys
//!   ([`tandem_model::metadata::is_reserved`]).
//! - Agents post as themselves: `assistant` replies and internal notes, and
//!   `tool` results; the server marks them `provider: "human"`, and they set
//!   no other reserved key.
//! - Admin tokens may post anything, with defaults derived from the role.
//!
//! For everyone: tool plumbing (`tool` messages, tool calls) is internal, and
//! content must be non-empty and within the configured limits.

use serde_json::{Map, Value, json};
use tandem_model::metadata::{PROVIDER, PROVIDER_METADATA, reserved_keys};
use tandem_model::{
    Author, AuthorKind, Content, MessageStatus, NewMessage, Part, Role, ThreadId, Visibility,
};

use super::PostMessage;
use crate::config::Limits;
use crate::http::{ApiError, Principal};

const MAX_NAME_CHARS: usize = 128;

pub fn new_message(
    principal: &Principal,
    thread_id: ThreadId,
    request: PostMessage,
    limits: &Limits,
) -> Result<NewMessage, ApiError> {
    check_content(&request.content, limits)?;
    let mut metadata = request.metadata.clone().unwrap_or_default();
    check_metadata_size(&metadata, limits)?;
    let sender = match principal {
        Principal::Customer { customer_id, .. } => customer(&request, &metadata, customer_id)?,
        Principal::Agent { name, .. } => agent(&request, &mut metadata, name)?,
        Principal::Admin { .. } => admin(&request, &metadata)?,
    };
    check_parts_for_role(sender.role, &request.content, principal)?;
    let visibility = visibility(sender.role, &request.content, request.visibility)?;
    Ok(NewMessage {
        id: None,
        thread_id,
        role: sender.role,
        agent_name: sender.agent_name,
        author: sender.author,
        content: request.content,
        visibility,
        status: request.status.unwrap_or(MessageStatus::Published),
        metadata: Value::Object(metadata),
        reply_to: request.reply_to,
        customer_scope: sender.customer_scope,
    })
}

/// Who a message is from, as the caller's token allows.
struct Sender {
    role: Role,
    agent_name: Option<String>,
    author: Author,
    /// The customer a customer's message is limited to; `None` for staff.
    customer_scope: Option<String>,
}

/// A customer posts `user` messages as itself, and sets none of what the
/// server decides.
fn customer(
    request: &PostMessage,
    metadata: &Map<String, Value>,
    customer_id: &str,
) -> Result<Sender, ApiError> {
    let forbidden = [
        ("role", request.role.is_some()),
        ("agent_name", request.agent_name.is_some()),
        ("author", request.author.is_some()),
        ("visibility", request.visibility.is_some()),
        ("status", request.status.is_some()),
    ];
    if let Some((field, _)) = forbidden.iter().find(|(_, set)| *set) {
        return Err(ApiError::field_not_allowed(field, "customer"));
    }
    refuse_reserved_keys(metadata, &[], "customer")?;
    Ok(Sender {
        role: Role::User,
        agent_name: None,
        author: Author {
            kind: AuthorKind::Customer,
            id: Some(customer_id.to_owned()),
        },
        customer_scope: Some(customer_id.to_owned()),
    })
}

/// An agent posts `assistant` replies and notes, and `tool` results, as
/// itself; published only.
fn agent(
    request: &PostMessage,
    metadata: &mut Map<String, Value>,
    name: &str,
) -> Result<Sender, ApiError> {
    if request.agent_name.as_ref().is_some_and(|n| n != name)
        || request
            .author
            .as_ref()
            .is_some_and(|a| a.kind != AuthorKind::Human || a.id.as_deref() != Some(name))
    {
        return Err(ApiError::forbidden(
            "not_yourself",
            format!("agent tokens post as their own agent ({name:?}) only"),
        ));
    }
    let role = request.role.unwrap_or(Role::Assistant);
    if !matches!(role, Role::Assistant | Role::Tool) {
        return Err(ApiError::forbidden(
            "role_not_allowed",
            format!("agent tokens may not post `{role}` messages"),
        ));
    }
    if request
        .status
        .is_some_and(|s| s != MessageStatus::Published)
    {
        return Err(ApiError::field_not_allowed("status", "agent"));
    }
    mark_human(metadata, name)?;
    Ok(Sender {
        role,
        agent_name: Some(name.to_owned()),
        author: Author {
            kind: AuthorKind::Human,
            id: Some(name.to_owned()),
        },
        customer_scope: None,
    })
}

/// An agent's message is marked `provider: "human"` with its name; it sets
/// no other reserved key.
fn mark_human(metadata: &mut Map<String, Value>, name: &str) -> Result<(), ApiError> {
    if metadata
        .get(PROVIDER)
        .is_some_and(|p| p != &Value::from("human"))
    {
        return Err(ApiError::forbidden(
            "not_yourself",
            "an agent's messages have `metadata.provider` \"human\"",
        ));
    }
    // `provider` is checked above: an agent's is always "human".
    refuse_reserved_keys(metadata, &[PROVIDER], "agent")?;
    metadata.insert(PROVIDER.into(), json!("human"));
    metadata.insert(PROVIDER_METADATA.into(), json!({"human": {"name": name}}));
    Ok(())
}

/// The first reserved metadata key the caller set, other than `allowed`,
/// is refused.
fn refuse_reserved_keys(
    metadata: &Map<String, Value>,
    allowed: &[&str],
    who: &str,
) -> Result<(), ApiError> {
    match reserved_keys()
        .filter(|k| !allowed.contains(k))
        .find(|k| metadata.contains_key(*k))
    {
        Some(key) => Err(ApiError::field_not_allowed(&format!("metadata.{key}"), who)),
        None => Ok(()),
    }
}

/// An admin posts anything; what it leaves out follows the role.
fn admin(request: &PostMessage, metadata: &Map<String, Value>) -> Result<Sender, ApiError> {
    let role = request.role.unwrap_or(Role::User);
    if let Some(name) = &request.agent_name {
        check_name("agent_name", name)?;
    }
    let author = match request.author.clone() {
        Some(author) => author,
        None => default_author(role, request.agent_name.as_deref(), metadata),
    };
    if let Some(id) = &author.id {
        check_name("author.id", id)?;
    }
    Ok(Sender {
        role,
        agent_name: request.agent_name.clone(),
        author,
        customer_scope: None,
    })
}

/// Tool plumbing (`tool` messages, tool calls) is internal, whoever posts
/// it; `system` messages are internal unless the caller says otherwise.
fn visibility(
    role: Role,
    content: &Content,
    asked: Option<Visibility>,
) -> Result<Visibility, ApiError> {
    let plumbing = role == Role::Tool
        || content
            .parts()
            .iter()
            .any(|p| matches!(p, Part::ToolCall { .. }));
    match asked {
        Some(Visibility::Public) if plumbing => Err(ApiError::bad_request(
            "invalid_visibility",
            "tool calls and tool results are internal",
        )),
        Some(visibility) => Ok(visibility),
        None if plumbing || role == Role::System => Ok(Visibility::Internal),
        None => Ok(Visibility::Public),
    }
}

/// The author an admin's message gets when it names none. A customer author
/// without an id is filled in with the thread's customer by the store.
fn default_author(role: Role, agent_name: Option<&str>, metadata: &Map<String, Value>) -> Author {
    let human = metadata.get(PROVIDER) == Some(&Value::from("human"));
    let kind = match role {
        Role::User => AuthorKind::Customer,
        Role::Assistant | Role::Tool if human => AuthorKind::Human,
        Role::Assistant => AuthorKind::Ai,
        Role::Tool | Role::System => AuthorKind::System,
    };
    let id = match kind {
        AuthorKind::Customer | AuthorKind::System => None,
        AuthorKind::Ai | AuthorKind::Human => agent_name.map(str::to_owned),
    };
    Author { kind, id }
}

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("`{field}` must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Which parts each role may carry.
fn check_parts_for_role(
    role: Role,
    content: &Content,
    principal: &Principal,
) -> Result<(), ApiError> {
    let staff = !matches!(principal, Principal::Customer { .. });
    let parts = match content {
        Content::Text(_) if role == Role::Tool => {
            return Err(ApiError::bad_request(
                "invalid_content",
                "`tool` messages carry `tool_result` parts",
            ));
        }
        Content::Text(_) => return Ok(()),
        Content::Parts(parts) => parts,
    };
    for part in parts {
        let allowed = match part {
            Part::Text { .. } => role != Role::Tool,
            Part::ToolCall { .. } => {
                role == Role::Assistant && matches!(principal, Principal::Admin { .. })
            }
            Part::ToolResult { .. } => role == Role::Tool && staff,
        };
        if !allowed {
            let kind = match part {
                Part::Text { .. } => "text",
                Part::ToolCall { .. } => "tool_call",
                Part::ToolResult { .. } => "tool_result",
            };
            return Err(ApiError::bad_request(
                "part_not_allowed",
                format!("a `{role}` message from this token may not carry `{kind}` parts"),
            ));
        }
    }
    Ok(())
}

/// Non-empty, and within the size limits.
fn check_content(content: &Content, limits: &Limits) -> Result<(), ApiError> {
    let empty = || ApiError::bad_request("empty_content", "content must not be empty");
    let mut size = 0usize;
    match content {
        Content::Text(text) => {
            if text.trim().is_empty() {
                return Err(empty());
            }
            size = text.chars().count();
        }
        Content::Parts(parts) => {
            if parts.is_empty() {
                return Err(empty());
            }
            if parts.len() > limits.max_message_parts {
                return Err(ApiError::bad_request(
                    "too_many_parts",
                    format!("a message has at most {} parts", limits.max_message_parts),
                ));
            }
            for part in parts {
                size += match part {
                    Part::Text { text } => {
                        if text.trim().is_empty() {
                            return Err(empty());
                        }
                        text.chars().count()
                    }
                    Part::ToolCall {
                        id,
                        name,
                        arguments,
                    } => {
                        check_name("tool_call.id", id)?;
                        check_name("tool_call.name", name)?;
                        arguments.to_string().len()
                    }
                    Part::ToolResult {
                        tool_call_id,
                        name,
                        result,
                        ..
                    } => {
                        check_name("tool_result.tool_call_id", tool_call_id)?;
                        check_name("tool_result.name", name)?;
                        result.to_string().len()
                    }
                };
            }
        }
    }
    if size > limits.max_message_chars {
        return Err(ApiError::bad_request(
            "content_too_long",
            format!(
                "content is longer than {} characters",
                limits.max_message_chars
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_metadata_size(
    metadata: &Map<String, Value>,
    limits: &Limits,
) -> Result<(), ApiError> {
    let size = serde_json::to_vec(metadata).map_or(usize::MAX, |v| v.len());
    if size > limits.max_metadata_bytes {
        return Err(ApiError::bad_request(
            "metadata_too_large",
            format!(
                "metadata is larger than {} bytes of JSON",
                limits.max_metadata_bytes
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::json;
    use tandem_model::TokenId;

    use super::*;

    fn customer() -> Principal {
        Principal::Customer {
            token: TokenId::new(),
            customer_id: "alice".into(),
        }
    }

    fn agent() -> Principal {
        Principal::Agent {
            token: TokenId::new(),
            name: "Sam".into(),
        }
    }

    fn admin() -> Principal {
        Principal::Admin {
            token: TokenId::new(),
        }
    }

    /// The rules' answer to `body` posted by `principal`, within `limits`.
    fn post_within(
        principal: &Principal,
        body: Value,
        limits: &Limits,
    ) -> Result<NewMessage, ApiError> {
        let request: PostMessage = serde_json::from_value(body).expect("a PostMessage");
        new_message(principal, ThreadId::new(), request, limits)
    }

    fn post(principal: &Principal, body: Value) -> Result<NewMessage, ApiError> {
        post_within(principal, body, &Limits::default())
    }

    #[track_caller]
    fn accepted(principal: &Principal, body: Value) -> NewMessage {
        post(principal, body.clone()).unwrap_or_else(|e| panic!("{body} refused: {} {e}", e.code()))
    }

    /// Asserts `result` is the error `code` with `status`, its message
    /// saying `says`.
    #[track_caller]
    fn refused(result: Result<NewMessage, ApiError>, status: StatusCode, code: &str, says: &str) {
        let error = match result {
            Ok(message) => panic!("expected {code}, accepted {message:?}"),
            Err(error) => error,
        };
        assert_eq!((error.status(), error.code()), (status, code), "{error}");
        assert!(
            error.to_string().contains(says),
            "{error:?} does not say {says:?}"
        );
    }

    /// `{"content": "x"}` with `fields` added.
    fn body(fields: Value) -> Value {
        let mut body = json!({"content": "x"});
        body.as_object_mut()
            .expect("an object")
            .extend(fields.as_object().expect("an object").clone());
        body
    }

    fn tool_call() -> Value {
        json!([{"type": "tool_call", "id": "c1", "name": "lookup", "arguments": {}}])
    }

    fn tool_result() -> Value {
        json!([{"type": "tool_result", "tool_call_id": "c1", "name": "lookup", "result": 1}])
    }

    #[test]
    fn a_customer_sets_none_of_what_the_server_decides() {
        let fields = [
            ("role", json!({"role": "user"})),
            ("agent_name", json!({"agent_name": "Support"})),
            (
                "author",
                json!({"author": {"kind": "customer", "id": "alice"}}),
            ),
            ("visibility", json!({"visibility": "public"})),
            ("status", json!({"status": "published"})),
        ];
        for (field, fields) in fields {
            refused(
                post(&customer(), body(fields)),
                StatusCode::BAD_REQUEST,
                "field_not_allowed",
                &format!("customer tokens may not set `{field}`"),
            );
        }
    }

    #[test]
    fn a_customer_sets_no_reserved_metadata_key() {
        for key in reserved_keys() {
            refused(
                post(&customer(), body(json!({"metadata": {key: "x"}}))),
                StatusCode::BAD_REQUEST,
                "field_not_allowed",
                &format!("customer tokens may not set `metadata.{key}`"),
            );
        }
        let own = accepted(&customer(), body(json!({"metadata": {"order_id": "A-1"}})));
        assert_eq!(own.metadata, json!({"order_id": "A-1"}));
    }

    #[test]
    fn a_customer_posts_public_user_messages_as_itself() {
        let message = accepted(&customer(), json!({"content": "Where is my parcel?"}));
        assert_eq!(message.role, Role::User);
        assert_eq!(message.agent_name, None);
        assert_eq!(
            message.author,
            Author {
                kind: AuthorKind::Customer,
                id: Some("alice".into())
            }
        );
        assert_eq!(message.customer_scope.as_deref(), Some("alice"));
        assert_eq!(message.visibility, Visibility::Public);
        assert_eq!(message.status, MessageStatus::Published);
        assert_eq!(message.metadata, json!({}));
        refused(
            post(&customer(), json!({"content": tool_result()})),
            StatusCode::BAD_REQUEST,
            "part_not_allowed",
            "`tool_result`",
        );
        refused(
            post(&customer(), json!({"content": tool_call()})),
            StatusCode::BAD_REQUEST,
            "part_not_allowed",
            "`tool_call`",
        );
    }

    #[test]
    fn an_agent_cannot_post_as_another_agent() {
        let others = [
            json!({"agent_name": "Kim"}),
            json!({"author": {"kind": "human", "id": "Kim"}}),
            json!({"author": {"kind": "human"}}),
            json!({"author": {"kind": "ai", "id": "Sam"}}),
            json!({"author": {"kind": "customer", "id": "Sam"}}),
            json!({"metadata": {"provider": "gpt-4o"}}),
        ];
        for fields in others {
            refused(
                post(&agent(), body(fields)),
                StatusCode::FORBIDDEN,
                "not_yourself",
                "",
            );
        }
        let own = accepted(
            &agent(),
            body(json!({"agent_name": "Sam", "author": {"kind": "human", "id": "Sam"}})),
        );
        assert_eq!(own.agent_name.as_deref(), Some("Sam"));
    }

    #[test]
    fn an_agent_sets_no_status_but_published_and_no_reserved_key_but_provider() {
        for status in ["pending_approval", "approved", "rejected"] {
            refused(
                post(&agent(), body(json!({"status": status}))),
                StatusCode::BAD_REQUEST,
                "field_not_allowed",
                "agent tokens may not set `status`",
            );
        }
        accepted(&agent(), body(json!({"status": "published"})));
        for key in reserved_keys().filter(|k| *k != PROVIDER) {
            refused(
                post(&agent(), body(json!({"metadata": {key: "x"}}))),
                StatusCode::BAD_REQUEST,
                "field_not_allowed",
                &format!("agent tokens may not set `metadata.{key}`"),
            );
        }
        accepted(&agent(), body(json!({"metadata": {"provider": "human"}})));
    }

    #[test]
    fn an_agent_posts_assistant_and_tool_messages_marked_human() {
        for role in ["user", "system"] {
            refused(
                post(&agent(), body(json!({"role": role}))),
                StatusCode::FORBIDDEN,
                "role_not_allowed",
                &format!("`{role}`"),
            );
        }
        let reply = accepted(
            &agent(),
            json!({"content": "On its way.", "metadata": {"n": 1}}),
        );
        assert_eq!(reply.role, Role::Assistant);
        assert_eq!(reply.agent_name.as_deref(), Some("Sam"));
        assert_eq!(
            reply.author,
            Author {
                kind: AuthorKind::Human,
                id: Some("Sam".into())
            }
        );
        assert_eq!(reply.customer_scope, None);
        assert_eq!(reply.visibility, Visibility::Public);
        assert_eq!(
            reply.metadata,
            json!({"n": 1, "provider": "human", "providerMetadata": {"human": {"name": "Sam"}}})
        );
        let note = accepted(&agent(), body(json!({"visibility": "internal"})));
        assert_eq!(note.visibility, Visibility::Internal);
        let result = accepted(&agent(), json!({"role": "tool", "content": tool_result()}));
        assert_eq!(result.role, Role::Tool);
        refused(
            post(&agent(), json!({"content": tool_call()})),
            StatusCode::BAD_REQUEST,
            "part_not_allowed",
            "`tool_call`",
        );
    }

    #[test]
    fn tool_messages_and_tool_calls_are_always_internal() {
        let plumbing = [
            (admin(), json!({"role": "tool", "content": tool_result()})),
            (
                admin(),
                json!({"role": "assistant", "content": tool_call()}),
            ),
            (agent(), json!({"role": "tool", "content": tool_result()})),
        ];
        for (principal, request) in plumbing {
            let message = accepted(&principal, request.clone());
            assert_eq!(message.visibility, Visibility::Internal, "{request}");
            let mut public = request.clone();
            public["visibility"] = json!("public");
            refused(
                post(&principal, public),
                StatusCode::BAD_REQUEST,
                "invalid_visibility",
                "tool calls and tool results are internal",
            );
            let mut internal = request;
            internal["visibility"] = json!("internal");
            assert_eq!(
                accepted(&principal, internal).visibility,
                Visibility::Internal
            );
        }
        refused(
            post(&admin(), json!({"role": "tool", "content": "done"})),
            StatusCode::BAD_REQUEST,
            "invalid_content",
            "`tool` messages carry `tool_result` parts",
        );
    }

    #[test]
    fn an_admins_defaults_follow_the_role() {
        let cases = [
            (
                json!({}),
                Role::User,
                AuthorKind::Customer,
                None,
                Visibility::Public,
            ),
            (
                json!({"role": "assistant", "agent_name": "Bot"}),
                Role::Assistant,
                AuthorKind::Ai,
                Some("Bot"),
                Visibility::Public,
            ),
            (
                json!({"role": "assistant", "agent_name": "Dana", "metadata": {"provider": "human"}}),
                Role::Assistant,
                AuthorKind::Human,
                Some("Dana"),
                Visibility::Public,
            ),
            (
                json!({"role": "assistant", "metadata": {"provider": "gpt-4o"}}),
                Role::Assistant,
                AuthorKind::Ai,
                None,
                Visibility::Public,
            ),
            (
                json!({"role": "tool", "agent_name": "Bot", "content": tool_result()}),
                Role::Tool,
                AuthorKind::System,
                None,
                Visibility::Internal,
            ),
            (
                json!({"role": "tool", "agent_name": "Dana", "content": tool_result(), "metadata": {"provider": "human"}}),
                Role::Tool,
                AuthorKind::Human,
                Some("Dana"),
                Visibility::Internal,
            ),
            (
                json!({"role": "system", "agent_name": "Bot"}),
                Role::System,
                AuthorKind::System,
                None,
                Visibility::Internal,
            ),
        ];
        for (fields, role, kind, id, visibility) in cases {
            let message = accepted(&admin(), body(fields.clone()));
            assert_eq!(message.role, role, "{fields}");
            assert_eq!(
                message.author,
                Author {
                    kind,
                    id: id.map(str::to_owned)
                },
                "{fields}"
            );
            assert_eq!(message.visibility, visibility, "{fields}");
            assert_eq!(message.status, MessageStatus::Published, "{fields}");
            assert_eq!(message.customer_scope, None, "{fields}");
        }
    }

    #[test]
    fn an_admin_may_set_everything_within_bounds() {
        let message = accepted(
            &admin(),
            body(json!({
                "role": "system",
                "visibility": "public",
                "status": "pending_approval",
                "author": {"kind": "ai", "id": "Bot"},
                "metadata": {"provider": "gpt-4o", "routing": {}},
            })),
        );
        assert_eq!(message.visibility, Visibility::Public);
        assert_eq!(message.status, MessageStatus::PendingApproval);
        assert_eq!(message.author.kind, AuthorKind::Ai);
        assert_eq!(
            message.metadata,
            json!({"provider": "gpt-4o", "routing": {}})
        );
        for (fields, field) in [
            (json!({"agent_name": " "}), "agent_name"),
            (
                json!({"author": {"kind": "ai", "id": "x".repeat(129)}}),
                "author.id",
            ),
        ] {
            refused(
                post(&admin(), body(fields)),
                StatusCode::BAD_REQUEST,
                "invalid_name",
                &format!("`{field}` must be 1 to 128 characters"),
            );
        }
    }

    #[test]
    fn content_is_not_empty_and_within_the_limits() {
        let limits = Limits {
            max_message_chars: 10,
            max_message_parts: 2,
            max_metadata_bytes: 32,
            ..Limits::default()
        };
        for principal in [customer(), agent(), admin()] {
            for content in [
                json!(""),
                json!(" \n"),
                json!([]),
                json!([{"type": "text", "text": " "}]),
            ] {
                refused(
                    post_within(&principal, json!({"content": content}), &limits),
                    StatusCode::BAD_REQUEST,
                    "empty_content",
                    "content must not be empty",
                );
            }
            let ten = "é".repeat(10);
            post_within(&principal, json!({"content": ten}), &limits).expect("ten characters fit");
            refused(
                post_within(&principal, json!({"content": format!("{ten}!")}), &limits),
                StatusCode::BAD_REQUEST,
                "content_too_long",
                "longer than 10 characters",
            );
            let parts = json!([
                {"type": "text", "text": "abcde"},
                {"type": "text", "text": "fghijk"},
            ]);
            refused(
                post_within(&principal, json!({"content": parts}), &limits),
                StatusCode::BAD_REQUEST,
                "content_too_long",
                "longer than 10 characters",
            );
            let three = Value::Array(vec![json!({"type": "text", "text": "a"}); 3]);
            refused(
                post_within(&principal, json!({"content": three}), &limits),
                StatusCode::BAD_REQUEST,
                "too_many_parts",
                "at most 2 parts",
            );
            refused(
                post_within(
                    &principal,
                    json!({"content": "x", "metadata": {"note": "y".repeat(32)}}),
                    &limits,
                ),
                StatusCode::BAD_REQUEST,
                "metadata_too_large",
                "larger than 32 bytes",
            );
        }
        // Content comes first: an empty message from a customer who also
        // sets a role is refused for its content.
        refused(
            post(&customer(), json!({"content": "", "role": "user"})),
            StatusCode::BAD_REQUEST,
            "empty_content",
            "",
        );
    }
}
