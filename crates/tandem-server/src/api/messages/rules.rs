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

    let (role, agent_name, author, customer_scope) = match principal {
        Principal::Customer { customer_id, .. } => {
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
            if let Some(key) = reserved_keys().find(|k| metadata.contains_key(*k)) {
                return Err(ApiError::field_not_allowed(
                    &format!("metadata.{key}"),
                    "customer",
                ));
            }
            let author = Author {
                kind: AuthorKind::Customer,
                id: Some(customer_id.clone()),
            };
            (Role::User, None, author, Some(customer_id.clone()))
        }
        Principal::Agent { name, .. } => {
            if request.agent_name.as_ref().is_some_and(|n| n != name)
                || request
                    .author
                    .as_ref()
                    .is_some_and(|a| a.kind != AuthorKind::Human || a.id.as_ref() != Some(name))
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
            if let Some(key) = reserved_keys()
                .filter(|k| *k != PROVIDER)
                .find(|k| metadata.contains_key(*k))
            {
                return Err(ApiError::field_not_allowed(
                    &format!("metadata.{key}"),
                    "agent",
                ));
            }
            metadata.insert(PROVIDER.into(), json!("human"));
            metadata.insert(PROVIDER_METADATA.into(), json!({"human": {"name": name}}));
            let author = Author {
                kind: AuthorKind::Human,
                id: Some(name.clone()),
            };
            (role, Some(name.clone()), author, None)
        }
        Principal::Admin { .. } => {
            let role = request.role.unwrap_or(Role::User);
            if let Some(name) = &request.agent_name {
                check_name("agent_name", name)?;
            }
            let author = match request.author.clone() {
                Some(author) => author,
                None => default_author(role, request.agent_name.as_deref(), &metadata),
            };
            if let Some(id) = &author.id {
                check_name("author.id", id)?;
            }
            (role, request.agent_name.clone(), author, None)
        }
    };

    check_parts_for_role(role, &request.content, principal)?;
    let plumbing = role == Role::Tool
        || request
            .content
            .parts()
            .iter()
            .any(|p| matches!(p, Part::ToolCall { .. }));
    let visibility = match request.visibility {
        Some(Visibility::Public) if plumbing => {
            return Err(ApiError::bad_request(
                "invalid_visibility",
                "tool calls and tool results are internal",
            ));
        }
        Some(visibility) => visibility,
        None if plumbing || role == Role::System => Visibility::Internal,
        None => Visibility::Public,
    };

    Ok(NewMessage {
        id: None,
        thread_id,
        role,
        agent_name,
        author,
        content: request.content,
        visibility,
        status: request.status.unwrap_or(MessageStatus::Published),
        metadata: Value::Object(metadata),
        reply_to: request.reply_to,
        customer_scope,
    })
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
