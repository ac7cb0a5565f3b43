//! Who may call a route, said in its signature.
//!
//! The auth middleware ([`super::auth`]) leaves the caller's [`Principal`]
//! in the request. A handler takes the extractor of the callers it admits,
//! which refuses everyone else before the handler runs, in the API's error
//! format:
//!
//! | extractor | admits | refuses |
//! |---|---|---|
//! | [`Principal`] | every token | — |
//! | [`Staff`] | admin and agent tokens | customers: 403 `forbidden` |
//! | [`StaffOnThread`] | admin and agent tokens | customers: 404 for a thread that is not theirs, as if it did not exist; 403 `forbidden` for their own |
//! | [`Admin`] | admin tokens | agents and customers: 403 `forbidden` |
//! | [`Agent`] | agent tokens | admin and customers: 403 `forbidden` |
//! | [`Customer`] | customer tokens | admin and agents: 403 `forbidden` |
//!
//! Without a principal (a route outside the middleware) each is a 401.
//! Each also documents itself in the OpenAPI document: the bearer
//! requirement, the token kinds it admits ([`CALLERS_EXTENSION`]) and a
//! sentence of the operation's description. What a caller may do *within* a
//! route (an agent posts and sets presence as itself only) is the route's.

use aide::generate::GenContext;
use aide::openapi::Operation;
use aide::operation::OperationInput;
use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use serde::Deserialize;
use tandem_model::{ThreadId, TokenId, TokenKind};

use super::extract::ApiPath;
use super::{ApiError, Principal};
use crate::AppState;

/// The OpenAPI extension of an operation that lists the token kinds it
/// admits (`["admin", "agent"]`).
pub const CALLERS_EXTENSION: &str = "x-tandem-callers";

/// An admin token: the integrator's backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub token: TokenId,
}

/// A human support agent's token; the agent replies under `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub token: TokenId,
    pub name: String,
}

/// One end user's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub token: TokenId,
    pub customer_id: String,
}

/// Staff: an admin or a human agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staff {
    Admin(Admin),
    Agent(Agent),
}

/// [`Staff`] on a route of one thread (its `{id}`). A customer is refused
/// all the same, but learns nothing of threads that are not its own: those
/// are 404, as if they did not exist, and only its own thread is a 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffOnThread(pub Staff);

impl Staff {
    pub fn token_id(&self) -> TokenId {
        match self {
            Self::Admin(Admin { token }) | Self::Agent(Agent { token, .. }) => *token,
        }
    }

    /// The agent's name; none for an admin.
    pub fn agent_name(&self) -> Option<&str> {
        match self {
            Self::Admin(_) => None,
            Self::Agent(agent) => Some(&agent.name),
        }
    }

    /// The name staff work is recorded under: the agent's own, or `admin`.
    pub fn name(&self) -> &str {
        self.agent_name().unwrap_or("admin")
    }

    /// The caller as a [`Principal`], for what every caller shares (the
    /// rules of posting, idempotency keys).
    pub fn principal(&self) -> Principal {
        match self.clone() {
            Self::Admin(Admin { token }) => Principal::Admin { token },
            Self::Agent(Agent { token, name }) => Principal::Agent { token, name },
        }
    }
}

/// Staff, or the customer a principal is.
fn staff_or_customer(principal: Principal) -> Result<Staff, Customer> {
    match principal {
        Principal::Admin { token } => Ok(Staff::Admin(Admin { token })),
        Principal::Agent { token, name } => Ok(Staff::Agent(Agent { token, name })),
        Principal::Customer { token, customer_id } => Err(Customer { token, customer_id }),
    }
}

/// The route being called, for refusals: `` `PUT /v1/agents/{name}` ``.
fn route(parts: &Parts) -> String {
    match parts.extensions.get::<MatchedPath>() {
        Some(path) => format!("`{} {}`", parts.method, path.as_str()),
        None => "this route".to_owned(),
    }
}

fn customer_refused(parts: &Parts) -> ApiError {
    ApiError::forbidden(
        "forbidden",
        format!("customer tokens may not use {}", route(parts)),
    )
}

fn only(parts: &Parts, kind: &str) -> ApiError {
    ApiError::forbidden(
        "forbidden",
        format!("only {kind} tokens may use {}", route(parts)),
    )
}

impl<S: Send + Sync> FromRequestParts<S> for Staff {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        staff_or_customer(principal).map_err(|_| customer_refused(parts))
    }
}

/// The `{id}` of a thread route.
#[derive(Deserialize)]
struct ThreadIdPath {
    id: ThreadId,
}

impl FromRequestParts<AppState> for StaffOnThread {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let customer = match staff_or_customer(principal) {
            Ok(staff) => return Ok(Self(staff)),
            Err(customer) => customer,
        };
        // An id that does not parse is the same 400 for everyone.
        let ApiPath(ThreadIdPath { id }) = ApiPath::from_request_parts(parts, state).await?;
        state
            .store
            .get_thread(id, Some(&customer.customer_id))
            .await?
            .ok_or(ApiError::NotFound("thread"))?;
        Err(customer_refused(parts))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Principal::from_request_parts(parts, state).await? {
            Principal::Admin { token } => Ok(Self { token }),
            _ => Err(only(parts, "admin")),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Principal::from_request_parts(parts, state).await? {
            Principal::Agent { token, name } => Ok(Self { token, name }),
            _ => Err(only(parts, "agent")),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Customer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Principal::from_request_parts(parts, state).await? {
            Principal::Customer { token, customer_id } => Ok(Self { token, customer_id }),
            _ => Err(only(parts, "customer")),
        }
    }
}

/// Marks an operation as taking a bearer token that `callers` may hold,
/// with a sentence for people.
fn document(operation: &mut Operation, callers: &[TokenKind], sentence: &str) {
    let requirement = [("bearer".to_owned(), Vec::new())].into_iter().collect();
    if !operation.security.contains(&requirement) {
        operation.security.push(requirement);
    }
    if operation.extensions.contains_key(CALLERS_EXTENSION) {
        return;
    }
    let kinds = callers.iter().map(|kind| kind.as_str()).collect::<Vec<_>>();
    operation
        .extensions
        .insert(CALLERS_EXTENSION.into(), kinds.into());
    operation.description = Some(match operation.description.take() {
        Some(text) => format!("{text}\n\n{sentence}"),
        None => sentence.to_owned(),
    });
}

impl OperationInput for Principal {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        document(
            operation,
            &[TokenKind::Admin, TokenKind::Agent, TokenKind::Customer],
            "Callers: every token (admin, agent, customer).",
        );
    }
}

impl OperationInput for Staff {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        document(
            operation,
            &[TokenKind::Admin, TokenKind::Agent],
            "Callers: admin and agent tokens; customers get 403.",
        );
    }
}

impl OperationInput for StaffOnThread {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        document(
            operation,
            &[TokenKind::Admin, TokenKind::Agent],
            "Callers: admin and agent tokens; customers get 403 on their own thread, 404 on any other.",
        );
    }
}

impl OperationInput for Admin {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        document(
            operation,
            &[TokenKind::Admin],
            "Callers: admin tokens; agents and customers get 403.",
        );
    }
}

impl OperationInput for Agent {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        document(
            operation,
            &[TokenKind::Agent],
            "Callers: agent tokens; admin and customers get 403.",
        );
    }
}

impl OperationInput for Customer {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        document(
            operation,
            &[TokenKind::Customer],
            "Callers: customer tokens; admin and agents get 403.",
        );
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use serde_json::{Value, json};
    use tandem_model::NewThread;
    use tandem_store::Store;
    use tandem_store::testing::TestDatabase;
    use tower::ServiceExt;

    use super::*;
    use crate::Config;

    /// A route per extractor, each answering 200 when it admits the caller.
    fn app(state: AppState) -> Router {
        Router::new()
            .route("/anyone", get(|_: Principal| async {}))
            .route("/staff", get(|_: Staff| async {}))
            .route("/admin", get(|_: Admin| async {}))
            .route("/agent", get(|_: Agent| async {}))
            .route("/customer", get(|_: Customer| async {}))
            .route("/threads/{id}", get(|_: StaffOnThread| async {}))
            .with_state(state)
    }

    /// The status and error code `caller` gets at `path`, with the message.
    async fn call(app: &Router, path: &str, caller: Option<&Principal>) -> (StatusCode, Value) {
        let mut request = Request::builder().uri(path);
        if let Some(principal) = caller {
            request = request.extension(principal.clone());
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let error =
            serde_json::from_slice::<Value>(&body).map_or(Value::Null, |v| v["error"].clone());
        (status, error)
    }

    #[tokio::test]
    async fn each_extractor_admits_its_callers_and_refuses_the_rest() {
        let db = TestDatabase::fresh().await;
        let config = Config {
            database: db.options(),
            ..Config::default()
        };
        let store = Store::connect(&config.database).await.unwrap();
        store.migrate().await.unwrap();
        let mut threads = Vec::new();
        for customer in ["c1", "c2"] {
            let new = NewThread {
                customer_id: customer.into(),
                title: None,
                metadata: json!({}),
            };
            threads.push(store.create_thread(new, None).await.unwrap().value.id);
        }
        let (own, other) = (threads[0], threads[1]);
        let app = app(AppState::new(store.clone(), config));

        let admin = Principal::Admin {
            token: TokenId::new(),
        };
        let agent = Principal::Agent {
            token: TokenId::new(),
            name: "Sam".into(),
        };
        let customer = Principal::Customer {
            token: TokenId::new(),
            customer_id: "c1".into(),
        };
        let own = format!("/threads/{own}");
        let other = format!("/threads/{other}");
        let missing = format!("/threads/{}", ThreadId::new());
        let forbidden = Some((StatusCode::FORBIDDEN, "forbidden"));
        let unauthorized = Some((StatusCode::UNAUTHORIZED, "unauthorized"));
        let not_found = Some((StatusCode::NOT_FOUND, "not_found"));
        // Per path: what the admin, the agent, the customer and no one get
        // (`None`: admitted).
        let cases = [
            ("/anyone", [None, None, None, unauthorized]),
            ("/staff", [None, None, forbidden, unauthorized]),
            ("/admin", [None, forbidden, forbidden, unauthorized]),
            ("/agent", [forbidden, None, forbidden, unauthorized]),
            ("/customer", [forbidden, forbidden, None, unauthorized]),
            (own.as_str(), [None, None, forbidden, unauthorized]),
            // Not the customer's, or no thread at all: the same 404.
            (other.as_str(), [None, None, not_found, unauthorized]),
            (missing.as_str(), [None, None, not_found, unauthorized]),
            // The route's own path extractor checks the id for staff.
            (
                "/threads/not-an-id",
                [
                    None,
                    None,
                    Some((StatusCode::BAD_REQUEST, "invalid_id")),
                    unauthorized,
                ],
            ),
        ];
        let callers = [Some(&admin), Some(&agent), Some(&customer), None];
        for (path, expected) in cases {
            for (caller, expected) in callers.iter().zip(expected) {
                let (status, error) = call(&app, path, *caller).await;
                let who = caller.map_or("no one", |p| p.kind().as_str());
                match expected {
                    None => assert_eq!(status, StatusCode::OK, "{who} at {path}: {error}"),
                    Some((want, code)) => {
                        assert_eq!(status, want, "{who} at {path}: {error}");
                        assert_eq!(error["code"], code, "{who} at {path}");
                    }
                }
                // A refusal for the caller's kind names the route.
                if status == StatusCode::FORBIDDEN {
                    let message = error["message"].as_str().unwrap_or_default();
                    let route = if path.starts_with("/threads/") {
                        "/threads/{id}"
                    } else {
                        path
                    };
                    let names = format!("`GET {route}`");
                    assert!(message.ends_with(&names), "{who} at {path}: {message}");
                }
            }
        }
        store.close().await;
    }

    #[test]
    fn staff_names_and_principals() {
        let token = TokenId::new();
        let admin = Staff::Admin(Admin { token });
        assert_eq!(admin.name(), "admin");
        assert_eq!(admin.agent_name(), None);
        assert_eq!(admin.token_id(), token);
        assert_eq!(admin.principal(), Principal::Admin { token });
        let agent = Staff::Agent(Agent {
            token,
            name: "Sam".into(),
        });
        assert_eq!(agent.name(), "Sam");
        assert_eq!(agent.agent_name(), Some("Sam"));
        assert_eq!(
            agent.principal(),
            Principal::Agent {
                token,
                name: "Sam".into()
            }
        );
    }
}
