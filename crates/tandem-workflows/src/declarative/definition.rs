//! The definition format: its types, parsing from JSON or TOML, validation,
//! and the canonical JSON a definition's version is the hash of.
//!
//! Parsing goes through a JSON value step by step (rather than one derived
//! `Deserialize` with a tagged enum) so that every problem can name the
//! step and the field it is in, and so that every problem of a file is
//! reported at once. What serde cannot check is checked by [`validate`]: the
//! header and ids there, each kind's fields in [`step_fields`], references in
//! [`references`].

mod references;
mod step_fields;
mod validate;

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tandem_model::{AssignedTo, Visibility};

use crate::retry::RetryPolicy;

/// The jump target that ends the run.
pub const END: &str = "end";

/// Most steps one definition may have; far more than a readable file has.
const MAX_STEPS: usize = 500;

/// The longest sleep, deadline, URL lifetime or backoff: ten years. Far
/// longer ones would overflow the engine's timestamps.
const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

/// Headers every `http` request carries, set by the engine.
const RESERVED_HEADERS: [&str; 6] = [
    "idempotency-key",
    "tandem-timestamp",
    "tandem-signature",
    "tandem-run-id",
    "content-length",
    "host",
];

/// A file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Toml,
}

impl Format {
    /// The format a file's extension names (`.json` or `.toml`).
    pub fn from_path(path: &std::path::Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "json" => Some(Self::Json),
            "toml" => Some(Self::Toml),
            _ => None,
        }
    }
}

/// A parsed, validated workflow definition. It serializes to the format
/// it is read from; reading goes through [`parse`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definition {
    /// `[a-z0-9_-]{1,64}`.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub args: ArgsSpec,
    pub steps: Vec<Step>,
    /// The run's result (a template); by default the last step's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// What the run's arguments must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgsSpec {
    /// Keys the arguments object must have.
    #[serde(default)]
    pub required: Vec<String>,
}

/// One step: its id, what it does, and where the run goes after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// `[a-z0-9_]{1,64}`, unique in the definition; the journal's step name.
    pub id: String,
    /// The step to go to next (`"end"` ends the run); by default the one
    /// after it in the file.
    pub next: Option<String>,
    pub action: Action,
}

/// What a step does, by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    Http(HttpStep),
    WaitEvent(WaitEventStep),
    Sleep(SleepStep),
    PostMessage(PostMessageStep),
    Assign(AssignStep),
    Branch(BranchStep),
    Llm(LlmStep),
    AskHuman(AskHumanStep),
    Approval(ApprovalStep),
}

const KINDS: &str =
    "http, wait_event, sleep, post_message, assign, branch, llm, ask_human, approval";

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Http(_) => "http",
            Self::WaitEvent(_) => "wait_event",
            Self::Sleep(_) => "sleep",
            Self::PostMessage(_) => "post_message",
            Self::Assign(_) => "assign",
            Self::Branch(_) => "branch",
            Self::Llm(_) => "llm",
            Self::AskHuman(_) => "ask_human",
            Self::Approval(_) => "approval",
        }
    }

    /// The first segments a reference into this step's result may take;
    /// `None` when any may (results that are store records).
    fn result_fields(&self) -> Option<&'static [&'static str]> {
        match self {
            Self::Http(_) => Some(&["status", "body"]),
            Self::WaitEvent(_) => Some(&["event", "timed_out"]),
            Self::Sleep(_) => Some(&["seconds"]),
            Self::Branch(_) => Some(&["value", "target"]),
            Self::Llm(_) => Some(&["text", "json", "model", "usage", "latency_ms", "error"]),
            Self::AskHuman(_) => Some(&["answer", "by", "item_id", "message_id", "timed_out"]),
            Self::Approval(_) => Some(&[
                "approved",
                "resolution",
                "text",
                "review",
                "by",
                "message_id",
                "draft_id",
                "item_id",
                "timed_out",
            ]),
            Self::PostMessage(_) | Self::Assign(_) => None,
        }
    }

    /// What `steps.<id>.json.<field>` may name.
    fn json_shape(&self) -> JsonShape {
        let Self::Llm(llm) = self else {
            return JsonShape::Any;
        };
        let Some(schema) = &llm.schema else {
            return JsonShape::None;
        };
        // An object that admits other properties may have any field.
        let open = schema
            .get("additionalProperties")
            .is_some_and(|extra| extra != &Value::Bool(false));
        match schema.get("properties").and_then(Value::as_object) {
            Some(properties) if !open => {
                JsonShape::Properties(properties.keys().cloned().collect())
            }
            _ => JsonShape::Any,
        }
    }
}

/// What the `json` of a step's result may hold, as far as references care.
#[derive(Debug, Clone, PartialEq, Eq)]
enum JsonShape {
    /// Not known (not an `llm` step, or an open schema).
    Any,
    /// An `llm` step without `schema`: its result has no `json`.
    None,
    /// The top-level properties of the step's schema.
    Properties(Vec<String>),
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut value = serde_json::to_value(&self.action).map_err(serde::ser::Error::custom)?;
        if let Value::Object(map) = &mut value {
            map.insert("id".into(), Value::String(self.id.clone()));
            if let Some(next) = &self.next {
                map.insert("next".into(), Value::String(next.clone()));
            }
        }
        value.serialize(serializer)
    }
}

/// An HTTP request to another system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    /// A template; `http://` or `https://`.
    pub url: String,
    #[serde(default)]
    pub method: Method,
    /// Extra headers (values are templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The JSON body, templated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The statuses that count as success; by default any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Vec<u16>>,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// An `http` step's method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    #[serde(rename = "GET", alias = "get")]
    Get,
    #[default]
    #[serde(rename = "POST", alias = "post")]
    Post,
    #[serde(rename = "PUT", alias = "put")]
    Put,
    #[serde(rename = "PATCH", alias = "patch")]
    Patch,
    #[serde(rename = "DELETE", alias = "delete")]
    Delete,
}

/// A wait for an event, with an optional deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitEventStep {
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// The step to go to when the deadline passes; without it the run fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,
    /// How long a `{{resume_url.<this step>}}` stays valid.
    #[serde(default = "default_resume_ttl")]
    pub resume_url_ttl_secs: u64,
}

fn default_resume_ttl() -> u64 {
    7 * 24 * 3600
}

/// A durable sleep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepStep {
    pub seconds: u64,
}

/// A message posted into a thread as a named agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessageStep {
    pub thread_id: String,
    pub text: String,
    /// The agent the message is posted as (a template).
    pub agent_name: String,
    /// Whether the named agent is an AI agent or a person.
    #[serde(default)]
    pub author: Speaker,
    #[serde(default = "default_visibility")]
    pub visibility: Visibility,
}

fn default_visibility() -> Visibility {
    Visibility::Public
}

/// The kind of agent a `post_message` step speaks as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    #[default]
    Ai,
    Human,
}

/// A change of a thread's assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignStep {
    pub thread_id: String,
    pub to: AssignedTo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A model call: a completion, or a structured answer when `schema` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmStep {
    /// The model; by default the server's reply model (`ai.reply_model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The system prompt, the call's first turn (a template).
    pub system: String,
    /// A template. Without `thread_id`, the user turn (required). With it,
    /// an optional instruction sent as a system turn after the thread's
    /// history: the customer's words reach the model only as user turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A template: the thread whose history goes into the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// The token budget of the system prompt and the history (only with
    /// `thread_id`): the oldest turns are left out to fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_budget_tokens: Option<u32>,
    /// A JSON Schema (an object): the answer must be JSON that fits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The step to go to when the call fails (after its retries) or its
    /// answer does not fit; without it the run fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
}

/// The history budget of an `llm` step with a thread, by default.
pub const DEFAULT_HISTORY_BUDGET_TOKENS: u32 = 8_000;

/// A question for the support team, as a `question` inbox item; the run
/// waits for the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskHumanStep {
    /// A template: the thread the question is about.
    pub thread_id: String,
    /// A template: the question, as the support team reads it.
    pub question: String,
    /// A template: why the item is opened, shown in the inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A template: the AI agent asking; by default the server's (`agent.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// The step to go to when no answer came in time; without it the run
    /// fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,
}

/// A draft reply held for a person, as an `approval` inbox item; the run
/// waits for the review. Approving publishes the draft (the inbox does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalStep {
    /// A template: the thread the reply is for.
    pub thread_id: String,
    /// A template: the draft reply.
    pub text: String,
    /// A template: why the draft needs a person, shown in the inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A template: the AI agent the reply is from; by default the
    /// server's (`agent.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// The step to go to when no review came in time; without it the run
    /// fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,
}

/// A jump chosen by a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchStep {
    /// A reference path (`steps.decide.event.approved`), kept without braces.
    pub on: String,
    /// From a value's JSON text (`true`, `"approved"`) or a bare string to a
    /// step id (or `"end"`).
    #[serde(default)]
    pub cases: BTreeMap<String, String>,
    /// Where to go when no case matches; by default the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

impl BranchStep {
    /// The target for `value`: a case whose key is the value's JSON text,
    /// else one whose key is the string value itself, else the default.
    pub fn target(&self, value: &Value) -> Option<&str> {
        let text = value.to_string();
        self.cases
            .get(&text)
            .or_else(|| value.as_str().and_then(|s| self.cases.get(s)))
            .or(self.default.as_ref())
            .map(String::as_str)
    }
}

/// One problem with a definition: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// The step's id (or `#n`, its 1-based place, when it has none).
    pub step: Option<String>,
    /// The field, as a path (`retry.max_attempts`, `body.callback`).
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(step) = &self.step {
            write!(f, ": step {step:?}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Collects the problems of one file.
struct Problems<'a> {
    file: &'a str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn add(&mut self, step: Option<&str>, field: Option<&str>, message: impl Into<String>) {
        self.list.push(Problem {
            file: self.file.to_owned(),
            step: step.map(str::to_owned),
            field: field.map(str::to_owned),
            message: message.into(),
        });
    }
}

/// Parses and validates a definition; `file` names it in problems.
pub fn parse(source: &str, format: Format, file: &str) -> Result<Definition, Vec<Problem>> {
    let mut problems = Problems {
        file,
        list: Vec::new(),
    };
    let value: Value = match format {
        Format::Json => serde_json::from_str(source).map_err(|e| e.to_string()),
        Format::Toml => toml::from_str(source).map_err(|e| e.to_string().trim_end().to_owned()),
    }
    .map_err(|message| {
        vec![Problem {
            file: file.to_owned(),
            step: None,
            field: None,
            message: format!("not valid {}: {message}", format_name(format)),
        }]
    })?;
    let definition = from_value(value, &mut problems);
    match definition {
        Some(definition) if problems.list.is_empty() => Ok(definition),
        _ => Err(problems.list),
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Json => "JSON",
        Format::Toml => "TOML",
    }
}

/// The top level, with steps left as JSON to parse one by one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    args: ArgsSpec,
    steps: Vec<Value>,
    #[serde(default)]
    output: Option<Value>,
}

fn from_value(value: Value, problems: &mut Problems<'_>) -> Option<Definition> {
    let raw: RawDefinition = match typed(value) {
        Ok(raw) => raw,
        Err((field, message)) => {
            problems.add(None, field.as_deref(), message);
            return None;
        }
    };
    let mut steps = Vec::new();
    // Each parsed step's place in the file, and the steps that did not
    // parse: they still count as known, so that jumps and references to
    // them do not add a second, misleading problem.
    let mut places = Vec::new();
    let mut unparsed = Vec::new();
    let count = raw.steps.len();
    for (i, value) in raw.steps.into_iter().enumerate() {
        let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
        match parse_step(value) {
            Ok(step) => {
                steps.push(step);
                places.push(i);
            }
            Err((field, message)) => {
                let label = id.clone().unwrap_or_else(|| format!("#{}", i + 1));
                problems.add(Some(&label), field.as_deref(), message);
                unparsed.extend(id.map(|id| (id, i)));
            }
        }
    }
    let mut definition = Definition {
        name: raw.name,
        description: raw.description,
        args: raw.args,
        steps,
        output: raw.output,
    };
    let layout = Layout {
        count,
        places,
        unparsed,
    };
    validate::validate(&mut definition, &layout, problems);
    Some(definition)
}

/// Where steps stand in the file, the ones that did not parse included.
struct Layout {
    count: usize,
    /// The file place of each parsed step.
    places: Vec<usize>,
    /// The id and place of each step that did not parse.
    unparsed: Vec<(String, usize)>,
}

/// Deserializes with the failing field's path.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, (Option<String>, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        (field, e.into_inner().to_string())
    })
}

/// Parses one step: `id`, `kind` and `next` here, the rest by kind.
fn parse_step(value: Value) -> Result<Step, (Option<String>, String)> {
    let Value::Object(mut map) = value else {
        return Err((None, "a step must be a table/object".into()));
    };
    let id = take_string(&mut map, "id")?;
    let next = match map.remove("next") {
        None => None,
        Some(Value::String(next)) => Some(next),
        Some(_) => return Err((Some("next".into()), "must be a string".into())),
    };
    let kind = take_string(&mut map, "kind")?;
    let fields = Value::Object(map);
    let action = match kind.as_str() {
        "http" => Action::Http(typed(fields)?),
        "wait_event" => Action::WaitEvent(typed(fields)?),
        "sleep" => Action::Sleep(typed(fields)?),
        "post_message" => Action::PostMessage(typed(fields)?),
        "assign" => Action::Assign(typed(fields)?),
        "branch" => Action::Branch(typed(fields)?),
        "llm" => Action::Llm(typed(fields)?),
        "ask_human" => Action::AskHuman(typed(fields)?),
        "approval" => Action::Approval(typed(fields)?),
        other => {
            return Err((
                Some("kind".into()),
                format!("unknown kind {other:?}, expected one of {KINDS}"),
            ));
        }
    };
    Ok(Step { id, next, action })
}

fn take_string(
    map: &mut Map<String, Value>,
    key: &str,
) -> Result<String, (Option<String>, String)> {
    match map.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err((Some(key.into()), "must be a string".into())),
        None => Err((None, format!("missing field `{key}`"))),
    }
}

fn is_name(name: &str, extra: &[char]) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || extra.contains(&c))
}

/// Event names travel in URL paths: keep them to URL-safe characters.
fn is_event_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Definition {
    /// The JSON the version is the hash of, and the form kept in the store:
    /// defaults spelled out, keys sorted, no whitespace. Reformatting a file,
    /// or writing it in the other format, does not change it.
    pub fn canonical_json(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut out = String::new();
        write_canonical(&value, &mut out);
        out
    }

    /// The first 12 hex digits of the SHA-256 of [`Self::canonical_json`].
    pub fn version(&self) -> String {
        let digest = Sha256::digest(self.canonical_json().as_bytes());
        hex::encode(digest)[..12].to_owned()
    }

    /// The place of the step with this id.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// The ids of its `llm` steps, which need a model endpoint.
    pub fn llm_steps(&self) -> impl Iterator<Item = &str> {
        self.steps
            .iter()
            .filter(|s| matches!(s.action, Action::Llm(_)))
            .map(|s| s.id.as_str())
    }
}

/// JSON with object keys sorted at every level, whatever order the map
/// kept them in.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const EXAMPLE: &str = include_str!("../../../../examples/workflows/refund.toml");

    fn toml(source: &str) -> Result<Definition, Vec<Problem>> {
        parse(source, Format::Toml, "flow.toml")
    }

    fn ok(source: &str) -> Definition {
        toml(source).unwrap_or_else(|problems| panic!("{problems:#?}"))
    }

    /// The problems of an invalid file.
    fn problems(source: &str) -> Vec<Problem> {
        match toml(source) {
            Ok(definition) => panic!("expected problems, parsed {definition:#?}"),
            Err(problems) => problems,
        }
    }

    /// Asserts one of `problems` is at this step and field and says `says`.
    #[track_caller]
    fn has(problems: &[Problem], step: Option<&str>, field: Option<&str>, says: &str) {
        let found = problems.iter().any(|p| {
            p.file == "flow.toml"
                && p.step.as_deref() == step
                && p.field.as_deref() == field
                && p.message.contains(says)
        });
        assert!(
            found,
            "no problem at {step:?} {field:?} saying {says:?} in {problems:#?}"
        );
    }

    /// A valid file around `steps`.
    fn with_steps(steps: &str) -> String {
        format!("name = \"flow\"\n{steps}")
    }

    const WAIT: &str = r#"
[[steps]]
id = "decision"
kind = "wait_event"
event = "decided"
"#;

    #[test]
    fn the_example_is_valid() {
        let definition = ok(EXAMPLE);
        assert_eq!(definition.name, "refund");
        assert_eq!(definition.steps.len(), 8);
        assert_eq!(
            definition.args.required,
            ["thread_id", "order_id", "amount"]
        );
        let Action::Http(http) = &definition.steps[0].action else {
            panic!("the first step is the request");
        };
        assert_eq!(http.method, Method::Post);
        assert_eq!(http.retry.max_attempts, 5);
        assert_eq!(http.retry.multiplier, RetryPolicy::default().multiplier);
        assert_eq!(definition.version().len(), 12);
    }

    #[test]
    fn json_and_toml_give_the_same_definition_and_version() {
        let from_toml = ok(r#"
name = "notify"
output = "{{steps.call.body}}"
[[steps]]
id = "call"
kind = "http"
url = "https://example.com/hook"
headers = { "X-Team" = "{{args.team}}" }
body = { n = 1, ok = true, who = ["{{args.team}}", 2.5] }
[[steps]]
id = "nap"
kind = "sleep"
seconds = 30
"#);
        let from_json = parse(
            r#"{"name": "notify", "output": "{{steps.call.body}}", "steps": [
                {"id": "call", "kind": "http", "url": "https://example.com/hook",
                 "headers": {"X-Team": "{{args.team}}"},
                 "body": {"who": ["{{args.team}}", 2.5], "ok": true, "n": 1}},
                {"kind": "sleep", "seconds": 30, "id": "nap"}]}"#,
            Format::Json,
            "notify.json",
        )
        .unwrap_or_else(|p| panic!("{p:#?}"));
        assert_eq!(from_toml, from_json);
        assert_eq!(from_toml.canonical_json(), from_json.canonical_json());
        assert_eq!(from_toml.version(), from_json.version());
    }

    #[test]
    fn the_version_ignores_formatting_and_spelled_out_defaults_but_not_content() {
        let base = ok(r#"
name = "flow"
[[steps]]
id = "call"
kind = "http"
url = "https://example.com/x"
[[steps]]
id = "decision"
kind = "wait_event"
event = "decided"
[[steps]]
id = "route"
kind = "branch"
on = "steps.decision.event.ok"
cases = { true = "call" }
"#);
        let reformatted = ok(r#"
# a comment
name    =   "flow"

[[steps]]
kind = "http"            # kinds first this time
id = "call"
method = "post"
url = "https://example.com/x"
timeout_ms = 10000
retry = { max_attempts = 3 }

[[steps]]
event = "decided"
id = "decision"
kind = "wait_event"
resume_url_ttl_secs = 604800

[[steps]]
id = "route"
kind = "branch"
on = "{{ steps.decision.event.ok }}"
[steps.cases]
true = "call"
"#);
        assert_eq!(base, reformatted);
        assert_eq!(base.version(), reformatted.version());

        let changed = ok(&EXAMPLE.replace("timeout_ms = 5000", "timeout_ms = 5001"));
        assert_ne!(ok(EXAMPLE).version(), changed.version());
        let renamed = ok(&EXAMPLE.replace("id = \"acknowledge\"", "id = \"ack\""));
        assert_ne!(ok(EXAMPLE).version(), renamed.version());
    }

    #[test]
    fn the_canonical_json_reads_back_as_the_same_definition() {
        let definition = ok(EXAMPLE);
        let canonical = definition.canonical_json();
        let again = parse(&canonical, Format::Json, "stored").unwrap_or_else(|p| panic!("{p:#?}"));
        assert_eq!(definition, again);
        assert_eq!(canonical, again.canonical_json());
        assert!(!canonical.contains('\n'));
        assert!(
            canonical.starts_with("{\"args\":{\"required\":["),
            "keys sorted: {canonical}"
        );
        let value: Value = serde_json::from_str(&canonical).unwrap_or_default();
        assert_eq!(value["steps"][0]["method"], json!("POST"));
        assert_eq!(value["steps"][0]["retry"]["max_attempts"], json!(5));
    }

    #[test]
    fn syntax_errors_name_the_format_and_place() {
        let p = problems("name = \"flow\"\n[[steps]\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].message.starts_with("not valid TOML"), "{}", p[0]);
        assert!(p[0].message.contains("line 2"), "{}", p[0]);
        let p = parse("{\"name\": ", Format::Json, "flow.json")
            .err()
            .unwrap_or_default();
        assert!(p[0].message.starts_with("not valid JSON"), "{}", p[0]);
        assert_eq!(p[0].file, "flow.json");
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused() {
        let p = problems(&with_steps(
            "[[steps]]\nid = \"a\"\nkind = \"email\"\nto = \"x\"\n",
        ));
        has(
            &p,
            Some("a"),
            Some("kind"),
            "unknown kind \"email\", expected one of http",
        );

        let p = problems(&with_steps(
            "[[steps]]\nid = \"a\"\nkind = \"http\"\nurl = \"https://x.test/\"\nmethd = \"GET\"\n",
        ));
        has(&p, Some("a"), Some("methd"), "unknown field `methd`");

        let p = problems("name = \"flow\"\nsteps = []\nversion = 2\n");
        has(&p, None, Some("version"), "unknown field `version`");

        let p = problems(&with_steps(
            "[[steps]]\nid = \"a\"\nkind = \"http\"\nurl = \"https://x.test/\"\nretry = { max_attempts = \"three\" }\n",
        ));
        has(&p, Some("a"), Some("retry.max_attempts"), "invalid type");

        let p = problems(&with_steps("[[steps]]\nid = \"a\"\nkind = \"http\"\n"));
        has(&p, Some("a"), None, "missing field `url`");

        let p = problems(&with_steps("[[steps]]\nkind = \"sleep\"\nseconds = 1\n"));
        has(&p, Some("#1"), None, "missing field `id`");
    }

    #[test]
    fn empty_steps_and_bad_names_are_refused() {
        has(
            &problems("name = \"flow\"\nsteps = []\n"),
            None,
            Some("steps"),
            "at least one step",
        );
        has(
            &problems("name = \"flow\"\n"),
            None,
            None,
            "missing field `steps`",
        );

        let p = problems(
            "name = \"Refund Flow\"\n[[steps]]\nid = \"a\"\nkind = \"sleep\"\nseconds = 1\n",
        );
        has(&p, None, Some("name"), "must be 1 to 64 of a-z");
        let long = "x".repeat(65);
        let p = problems(&format!(
            "name = \"{long}\"\n[[steps]]\nid = \"a\"\nkind = \"sleep\"\nseconds = 1\n"
        ));
        has(&p, None, Some("name"), "must be 1 to 64");

        let p = problems(&with_steps(
            "[[steps]]\nid = \"Ask-Manager\"\nkind = \"sleep\"\nseconds = 1\n",
        ));
        has(
            &p,
            Some("Ask-Manager"),
            Some("id"),
            "must be 1 to 64 of a-z, 0-9 and `_`",
        );
        let p = problems(&with_steps(
            "[[steps]]\nid = \"end\"\nkind = \"sleep\"\nseconds = 1\n",
        ));
        has(&p, Some("end"), Some("id"), "reserved");

        let p = problems(&with_steps(
            "[[steps]]\nid = \"w\"\nkind = \"wait_event\"\nevent = \"a/b\"\n",
        ));
        has(&p, Some("w"), Some("event"), "letters, digits");
    }

    #[test]
    fn durations_are_bounded() {
        let p = problems(&with_steps(
            r#"
[[steps]]
id = "nap"
kind = "sleep"
seconds = 9223372036854775807
[[steps]]
id = "w"
kind = "wait_event"
event = "e"
timeout_secs = 315360001
resume_url_ttl_secs = 0
[[steps]]
id = "call"
kind = "http"
url = "https://x.test/"
retry = { max_backoff_ms = 315360000001, jitter = 1.5, max_attempts = 0 }
timeout_ms = 0
"#,
        ));
        has(&p, Some("nap"), Some("seconds"), "must be 1 to 315360000");
        has(
            &p,
            Some("w"),
            Some("timeout_secs"),
            "must be 1 to 315360000",
        );
        has(
            &p,
            Some("w"),
            Some("resume_url_ttl_secs"),
            "must be 1 to 315360000",
        );
        has(&p, Some("call"), Some("retry.max_backoff_ms"), "ten years");
        has(&p, Some("call"), Some("retry.jitter"), "0 to 1");
        has(&p, Some("call"), Some("retry.max_attempts"), "1 to 100");
        has(&p, Some("call"), Some("timeout_ms"), "1 to 300000");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let p = problems(&with_steps(
            "[[steps]]\nid = \"a\"\nkind = \"sleep\"\nseconds = 1\n[[steps]]\nid = \"a\"\nkind = \"sleep\"\nseconds = 2\n",
        ));
        has(&p, Some("a"), Some("id"), "another step has the same id");
    }

    #[test]
    fn jumps_must_name_a_step_or_end() {
        let p = problems(&with_steps(
            r#"
[[steps]]
id = "a"
kind = "sleep"
seconds = 1
next = "nowhere"
[[steps]]
id = "w"
kind = "wait_event"
event = "e"
timeout_secs = 5
on_timeout = "gone"
[[steps]]
id = "b"
kind = "branch"
on = "steps.w.event.x"
cases = { yes = "a", no = "missing" }
default = "lost"
"#,
        ));
        has(
            &p,
            Some("a"),
            Some("next"),
            "jumps to unknown step \"nowhere\"",
        );
        has(
            &p,
            Some("w"),
            Some("on_timeout"),
            "jumps to unknown step \"gone\"",
        );
        has(
            &p,
            Some("b"),
            Some("cases.no"),
            "jumps to unknown step \"missing\"",
        );
        has(
            &p,
            Some("b"),
            Some("default"),
            "jumps to unknown step \"lost\"",
        );
        assert_eq!(p.len(), 4, "{p:#?}");

        // Backward jumps (loops) and `end` are fine.
        ok(&with_steps(
            "[[steps]]\nid = \"a\"\nkind = \"sleep\"\nseconds = 1\n[[steps]]\nid = \"b\"\nkind = \"sleep\"\nseconds = 1\nnext = \"a\"\n[[steps]]\nid = \"c\"\nkind = \"sleep\"\nseconds = 1\nnext = \"end\"\n",
        ));

        let p = problems(&with_steps(
            "[[steps]]\nid = \"w\"\nkind = \"wait_event\"\nevent = \"e\"\non_timeout = \"w\"\n",
        ));
        has(&p, Some("w"), Some("on_timeout"), "needs `timeout_secs`");
        let p = problems(&format!(
            "{}\n[[steps]]\nid = \"b\"\nkind = \"branch\"\non = \"steps.decision.event\"\nnext = \"decision\"\n",
            with_steps(WAIT)
        ));
        has(&p, Some("b"), Some("next"), "not `next`");
    }

    #[test]
    fn templates_may_only_name_earlier_steps() {
        let p = problems(&format!(
            r#"{}
[[steps]]
id = "tell"
kind = "post_message"
thread_id = "{{{{args.thread_id}}}}"
agent_name = "Bot"
text = "later: {{{{steps.after.body}}}}, self: {{{{steps.tell.id}}}}, unknown: {{{{steps.ghost}}}}"
[[steps]]
id = "after"
kind = "http"
url = "https://x.test/"
body = {{ ok = "{{{{steps.decision.event}}}}", bad = ["{{{{steps.decision.payload}}}}"] }}
"#,
            with_steps(WAIT)
        ));
        has(
            &p,
            Some("tell"),
            Some("text"),
            "step \"after\" does not come before this one",
        );
        has(
            &p,
            Some("tell"),
            Some("text"),
            "step \"tell\" does not come before this one",
        );
        has(&p, Some("tell"), Some("text"), "no step \"ghost\"");
        has(
            &p,
            Some("after"),
            Some("body.bad[0]"),
            "a wait_event step's result has `event`, `timed_out`",
        );
        assert_eq!(p.len(), 4, "{p:#?}");

        let p = problems(&with_steps(
            "[[steps]]\nid = \"a\"\nkind = \"post_message\"\nthread_id = \"{{env.THREAD}}\"\nagent_name = \"Bot\"\ntext = \"{{run.started}} {{args.x\"\n",
        ));
        has(
            &p,
            Some("a"),
            Some("thread_id"),
            "must start with `args`, `steps`, `run` or `resume_url`",
        );
        has(&p, Some("a"), Some("text"), "unclosed");

        let p = problems(&with_steps(
            "[[steps]]\nid = \"a\"\nkind = \"post_message\"\nthread_id = \"{{args.t}}\"\nagent_name = \"Bot\"\ntext = \"{{run.started}}\"\n",
        ));
        has(
            &p,
            Some("a"),
            Some("text"),
            "`run.id`, `run.name` and `run.version`",
        );

        // The output may name any step.
        ok(&format!(
            "name = \"flow\"\noutput = {{ d = \"{{{{steps.decision.event}}}}\" }}\n{WAIT}"
        ));
        let p = problems(&format!(
            "name = \"flow\"\noutput = \"{{{{steps.nope}}}}\"\n{WAIT}"
        ));
        has(&p, None, Some("output"), "no step \"nope\"");
    }

    #[test]
    fn resume_urls_must_name_a_wait_step() {
        let source = r#"
name = "flow"
[[steps]]
id = "call"
kind = "http"
url = "https://x.test/"
body = { good = "{{resume_url.decision}}", bad = "{{resume_url.nap}}", worse = "{{resume_url.ghost}}" }
[[steps]]
id = "nap"
kind = "sleep"
seconds = 1
[[steps]]
id = "decision"
kind = "wait_event"
event = "decided"
"#;
        let p = problems(source);
        has(
            &p,
            Some("call"),
            Some("body.bad"),
            "step \"nap\" is a sleep step, not a wait_event",
        );
        has(&p, Some("call"), Some("body.worse"), "no step \"ghost\"");
        assert_eq!(p.len(), 2, "{p:#?}");
    }

    #[test]
    fn urls_and_headers_are_checked() {
        let step = |url: &str| {
            with_steps(&format!(
                "[[steps]]\nid = \"a\"\nkind = \"http\"\nurl = \"{url}\"\n"
            ))
        };
        has(
            &problems(&step("ftp://x.test/f")),
            Some("a"),
            Some("url"),
            "must be an http:// or https:// URL",
        );
        has(
            &problems(&step("not a url")),
            Some("a"),
            Some("url"),
            "is not a valid URL",
        );
        has(
            &problems(&step("x.test/{{args.p}}")),
            Some("a"),
            Some("url"),
            "is not a valid URL",
        );
        ok(&step("https://x.test/orders/{{args.order}}?q={{args.q}}"));
        // A URL that is a reference is checked when the step runs.
        ok(&step("{{args.callback}}"));

        let p = problems(&with_steps(
            "[[steps]]\nid = \"a\"\nkind = \"http\"\nurl = \"https://x.test/\"\nheaders = { \"Idempotency-Key\" = \"mine\", \"bad header\" = \"x\" }\n",
        ));
        has(
            &p,
            Some("a"),
            Some("headers.Idempotency-Key"),
            "set by the engine",
        );
        has(
            &p,
            Some("a"),
            Some("headers.bad header"),
            "not a valid header name",
        );
    }

    #[test]
    fn a_step_that_does_not_parse_is_still_known_to_the_others() {
        let p = problems(&with_steps(
            r#"
[[steps]]
id = "a"
kind = "sleep"
seconds = 1
next = "b"
[[steps]]
id = "b"
kind = "http"
[[steps]]
id = "c"
kind = "post_message"
thread_id = "{{steps.b.body.thread}}"
agent_name = "Bot"
text = "{{resume_url.b}}"
"#,
        ));
        has(&p, Some("b"), None, "missing field `url`");
        assert_eq!(p.len(), 1, "no follow-on problems: {p:#?}");
    }

    #[test]
    fn every_problem_of_a_file_is_reported_at_once() {
        let p = problems(
            r#"
name = "Bad Name"
[[steps]]
id = "a"
kind = "nope"
[[steps]]
id = "b"
kind = "sleep"
seconds = 0
next = "z"
[[steps]]
id = "b"
kind = "sleep"
seconds = 1
"#,
        );
        has(&p, None, Some("name"), "must be 1 to 64");
        has(&p, Some("a"), Some("kind"), "unknown kind");
        has(&p, Some("b"), Some("seconds"), "must be 1 to");
        has(&p, Some("b"), Some("next"), "unknown step \"z\"");
        has(&p, Some("b"), Some("id"), "same id");
        let text = p[0].to_string();
        assert!(text.starts_with("flow.toml: "), "{text}");
    }

    /// The three kinds that involve the AI and people, as a flow uses them.
    const AI_FLOW: &str = r#"
name = "flow"
[[steps]]
id = "draft"
kind = "llm"
system = "You write support replies."
thread_id = "{{args.thread_id}}"
prompt = "Draft the reply."
schema = { type = "object", properties = { reply = { type = "string" } }, required = ["reply"] }
on_error = "ask"
[[steps]]
id = "ask"
kind = "ask_human"
thread_id = "{{args.thread_id}}"
question = "Can we refund {{args.order}}?"
timeout_secs = 600
on_timeout = "end"
[[steps]]
id = "review"
kind = "approval"
thread_id = "{{args.thread_id}}"
text = "{{steps.draft.json.reply}} ({{steps.ask.answer}})"
reason = "refunds need a person"
[[steps]]
id = "route"
kind = "branch"
on = "steps.review.approved"
cases = { true = "end" }
"#;

    #[test]
    fn llm_ask_human_and_approval_parse_with_their_defaults() {
        let definition = ok(AI_FLOW);
        let Action::Llm(llm) = &definition.steps[0].action else {
            panic!("{definition:#?}");
        };
        assert_eq!(llm.model, None, "the server's reply model");
        assert_eq!(llm.history_budget_tokens, None);
        assert_eq!(llm.retry, RetryPolicy::default());
        assert_eq!(llm.on_error.as_deref(), Some("ask"));
        let Action::AskHuman(ask) = &definition.steps[1].action else {
            panic!("{definition:#?}");
        };
        assert_eq!(ask.agent_name, None);
        assert_eq!(ask.timeout_secs, Some(600));
        let Action::Approval(approval) = &definition.steps[2].action else {
            panic!("{definition:#?}");
        };
        assert_eq!(approval.reason.as_deref(), Some("refunds need a person"));
        assert_eq!(definition.llm_steps().collect::<Vec<_>>(), ["draft"]);
        let example = ok(include_str!(
            "../../../../examples/workflows/ai-approval.toml"
        ));
        assert_eq!(example.llm_steps().collect::<Vec<_>>(), ["triage", "draft"]);

        let canonical = definition.canonical_json();
        let again = parse(&canonical, Format::Json, "stored").unwrap_or_else(|p| panic!("{p:#?}"));
        assert_eq!(definition, again);
        let value: Value = serde_json::from_str(&canonical).unwrap_or_default();
        assert_eq!(value["steps"][0]["kind"], "llm");
        assert_eq!(value["steps"][0]["retry"]["max_attempts"], json!(3));
        assert_eq!(value["steps"][1]["kind"], "ask_human");
        assert_eq!(value["steps"][2]["kind"], "approval");
    }

    #[test]
    fn llm_steps_are_checked() {
        let p = problems(&with_steps(
            r#"
[[steps]]
id = "plain"
kind = "llm"
system = " "
model = "gpt 4"
history_budget_tokens = 1000
retry = { max_attempts = 0 }
on_error = "nowhere"
[[steps]]
id = "shaped"
kind = "llm"
system = "s"
prompt = ""
schema = { type = "array", properties = [], required = ["a", 3] }
[[steps]]
id = "untyped"
kind = "llm"
system = "s"
thread_id = "{{args.thread_id}}"
history_budget_tokens = 10
schema = "an object, please"
"#,
        ));
        has(&p, Some("plain"), Some("system"), "must not be empty");
        has(
            &p,
            Some("plain"),
            Some("prompt"),
            "is required without `thread_id`",
        );
        has(&p, Some("plain"), Some("model"), "must be a model name");
        has(
            &p,
            Some("plain"),
            Some("history_budget_tokens"),
            "only a step with `thread_id`",
        );
        has(&p, Some("plain"), Some("retry.max_attempts"), "1 to 100");
        has(
            &p,
            Some("plain"),
            Some("on_error"),
            "unknown step \"nowhere\"",
        );
        has(&p, Some("shaped"), Some("prompt"), "must not be empty");
        has(
            &p,
            Some("shaped"),
            Some("schema.type"),
            "must be \"object\"",
        );
        has(
            &p,
            Some("shaped"),
            Some("schema.properties"),
            "must be a table",
        );
        has(
            &p,
            Some("shaped"),
            Some("schema.required"),
            "a list of property names",
        );
        has(
            &p,
            Some("untyped"),
            Some("history_budget_tokens"),
            "must be 500 to 200000",
        );
        has(&p, Some("untyped"), Some("schema"), "must be a JSON Schema");
        assert_eq!(p.len(), 12, "{p:#?}");

        let p = problems(&with_steps(
            "[[steps]]\nid = \"a\"\nkind = \"llm\"\nsystem = \"s\"\nprompt = \"p\"\nschema = { type = \"object\", properties = { x = {} }, required = [\"y\"] }\ntemperature = 0.2\n",
        ));
        has(
            &p,
            Some("a"),
            Some("temperature"),
            "unknown field `temperature`",
        );
        let p = problems(&with_steps(
            "[[steps]]\nid = \"a\"\nkind = \"llm\"\nprompt = \"p\"\n",
        ));
        has(&p, Some("a"), None, "missing field `system`");
    }

    #[test]
    fn references_into_an_llm_result_follow_its_schema() {
        let step = |text: &str| {
            format!(
                r#"{AI_FLOW}
[[steps]]
id = "tell"
kind = "post_message"
thread_id = "{{{{args.thread_id}}}}"
agent_name = "Bot"
text = "{text}"
"#
            )
        };
        ok(&step(
            "{{steps.draft.json.reply}} {{steps.draft.text}} {{steps.draft.usage.total_tokens}}",
        ));
        has(
            &problems(&step("{{steps.draft.json.answer}}")),
            Some("tell"),
            Some("text"),
            "the `schema` of step \"draft\" has no property \"answer\"",
        );
        has(
            &problems(&step("{{steps.draft.reply}}")),
            Some("tell"),
            Some("text"),
            "an llm step's result has `text`, `json`",
        );
        has(
            &problems(&step("{{steps.review.approvd}}")),
            Some("tell"),
            Some("text"),
            "an approval",
        );
        has(
            &problems(&step("{{steps.ask.reply}}")),
            Some("tell"),
            Some("text"),
            "`answer`, `by`, `item_id`",
        );

        // Without a schema there is no `json`; an open schema has any field.
        let plain = AI_FLOW.replace(
            "schema = { type = \"object\", properties = { reply = { type = \"string\" } }, required = [\"reply\"] }\n",
            "",
        );
        has(
            &problems(&plain),
            Some("review"),
            Some("text"),
            "step \"draft\" has no `schema`, so its result has no `json`",
        );
        ok(&AI_FLOW
            .replace(
                "required = [\"reply\"] }",
                "required = [\"reply\"], additionalProperties = true }",
            )
            .replace("json.reply", "json.anything"));
    }

    #[test]
    fn ask_human_and_approval_are_checked() {
        let p = problems(&with_steps(
            r#"
[[steps]]
id = "ask"
kind = "ask_human"
thread_id = "{{args.thread_id}}"
question = "  "
agent_name = ""
on_timeout = "review"
[[steps]]
id = "review"
kind = "approval"
thread_id = "{{steps.later.id}}"
text = ""
timeout_secs = 0
on_timeout = "ghost"
[[steps]]
id = "later"
kind = "sleep"
seconds = 1
"#,
        ));
        has(&p, Some("ask"), Some("question"), "must not be empty");
        has(&p, Some("ask"), Some("agent_name"), "1 to 128 characters");
        has(&p, Some("ask"), Some("on_timeout"), "needs `timeout_secs`");
        has(&p, Some("review"), Some("text"), "must not be empty");
        has(
            &p,
            Some("review"),
            Some("timeout_secs"),
            "must be 1 to 315360000",
        );
        has(
            &p,
            Some("review"),
            Some("on_timeout"),
            "unknown step \"ghost\"",
        );
        has(
            &p,
            Some("review"),
            Some("thread_id"),
            "step \"later\" does not come before this one",
        );
        assert_eq!(p.len(), 7, "{p:#?}");

        let p = problems(&with_steps(
            "[[steps]]\nid = \"ask\"\nkind = \"ask_human\"\nthread = \"{{args.t}}\"\nquestion = \"q\"\n",
        ));
        has(&p, Some("ask"), Some("thread"), "unknown field `thread`");
        let p = problems(&with_steps(
            "[[steps]]\nid = \"ask\"\nkind = \"ask_human\"\nthread_id = \"{{args.t}}\"\n",
        ));
        has(&p, Some("ask"), None, "missing field `question`");
        let p = problems(&with_steps(
            "[[steps]]\nid = \"review\"\nkind = \"approval\"\nthread_id = \"{{args.t}}\"\n",
        ));
        has(&p, Some("review"), None, "missing field `text`");
    }

    #[test]
    fn a_branch_matches_json_text_then_bare_strings_then_the_default() {
        let branch = BranchStep {
            on: "steps.x.event.v".into(),
            cases: BTreeMap::from([
                ("true".into(), "yes".into()),
                ("\"approved\"".into(), "quoted".into()),
                ("pending".into(), "bare".into()),
                ("3".into(), "three".into()),
                ("null".into(), "nothing".into()),
            ]),
            default: Some("other".into()),
        };
        assert_eq!(branch.target(&json!(true)), Some("yes"));
        assert_eq!(branch.target(&json!("true")), Some("yes"));
        assert_eq!(branch.target(&json!("approved")), Some("quoted"));
        assert_eq!(branch.target(&json!("pending")), Some("bare"));
        assert_eq!(branch.target(&json!(3)), Some("three"));
        assert_eq!(branch.target(&Value::Null), Some("nothing"));
        assert_eq!(branch.target(&json!(false)), Some("other"));
        let no_default = BranchStep {
            default: None,
            ..branch
        };
        assert_eq!(no_default.target(&json!({"a": 1})), None);
    }

    /// A file with a problem of every kind the validator looks for.
    const EVERY_PROBLEM: &str = r#"
name = "Bad Name"
output = { last = "{{steps.nowhere.body}}", run = "{{run.nope}}" }
[args]
required = ["ok", "not valid"]

[[steps]]
id = "end"
kind = "sleep"
seconds = 0

[[steps]]
id = "Bad"
kind = "sleep"
seconds = 5
next = "nowhere"

[[steps]]
id = "call"
kind = "http"
url = "ftp://example.com/{{steps.later.body}}"
headers = { "Bad Header" = "x", "Host" = "h", "X-A" = "{{args.a}}", "x-a" = "{{nope.x}}" }
body = { callback = "{{resume_url.call}}", again = "{{steps.call.body}}" }
retry = { max_attempts = 0, multiplier = 0.5, initial_backoff_ms = 999999999999999, jitter = 2.0 }
timeout_ms = 0
expect = [99]

[[steps]]
id = "think"
kind = "llm"
system = " "
history_budget_tokens = 1000
model = "a b"
schema = { type = "array", properties = 1, required = [1] }
on_error = "gone"

[[steps]]
id = "think2"
kind = "llm"
system = "s"
prompt = " "
thread_id = "{{args.t}}"
history_budget_tokens = 100
schema = { type = "object", properties = { a = {} }, required = ["b"] }

[[steps]]
id = "ask"
kind = "ask_human"
thread_id = "{{args.t}}"
question = " "
agent_name = " "
timeout_secs = 0
on_timeout = "gone"

[[steps]]
id = "review"
kind = "approval"
thread_id = "{{steps.think.text.x}}"
text = "{{steps.think2.json.c}}"
reason = "{{steps.think2.jsn}}"
on_timeout = "gone"

[[steps]]
id = "wait"
kind = "wait_event"
event = "bad event"
timeout_secs = 0
resume_url_ttl_secs = 0

[[steps]]
id = "wait2"
kind = "wait_event"
event = "e"
on_timeout = "gone"

[[steps]]
id = "post"
kind = "post_message"
thread_id = "{{steps.wait.payload}}"
text = " "
agent_name = ""

[[steps]]
id = "give"
kind = "assign"
thread_id = "{{resume_url.post}}"
to = "ai"
assignee = "sam"
reason = "{{steps.give.id}}"

[[steps]]
id = "route"
kind = "branch"
on = "{{resume_url.wait}}"
next = "end"
cases = { a = "gone" }
default = "gone2"

[[steps]]
id = "route2"
kind = "branch"
on = "steps.route3.value"

[[steps]]
id = "route3"
kind = "branch"
on = "bad root"

[[steps]]
id = "call"
kind = "nope"
"#;

    #[test]
    fn problems_come_in_the_order_of_the_file() {
        let found: Vec<String> = problems(EVERY_PROBLEM)
            .iter()
            .map(Problem::to_string)
            .collect();
        let expected = [
            r#"flow.toml: step "call": field `kind`: unknown kind "nope", expected one of http, wait_event, sleep, post_message, assign, branch, llm, ask_human, approval"#,
            r#"flow.toml: field `name`: "Bad Name" must be 1 to 64 of a-z, 0-9, `_` and `-`"#,
            r#"flow.toml: field `args.required`: "not valid" is not a valid argument name"#,
            r#"flow.toml: step "end": field `id`: `end` is reserved for `next = "end"`"#,
            r#"flow.toml: step "Bad": field `id`: must be 1 to 64 of a-z, 0-9 and `_`"#,
            r#"flow.toml: step "end": field `seconds`: must be 1 to 315360000 (ten years)"#,
            r#"flow.toml: step "Bad": field `next`: jumps to unknown step "nowhere""#,
            r#"flow.toml: step "call": field `url`: `{{steps.later.body}}`: no step "later""#,
            r#"flow.toml: step "call": field `url`: "ftp://example.com/{{steps.later.body}}" must be an http:// or https:// URL"#,
            r#"flow.toml: step "call": field `headers.Bad Header`: not a valid header name"#,
            r#"flow.toml: step "call": field `headers.Host`: set by the engine on every request"#,
            r#"flow.toml: step "call": field `headers.x-a`: the same header twice"#,
            r#"flow.toml: step "call": field `headers.x-a`: `nope.x` must start with `args`, `steps`, `run` or `resume_url`"#,
            r#"flow.toml: step "call": field `body.again`: `{{steps.call.body}}`: step "call" does not come before this one, so it has no result here"#,
            r#"flow.toml: step "call": field `body.callback`: `{{resume_url.call}}`: step "call" is a http step, not a wait_event"#,
            r#"flow.toml: step "call": field `retry.max_attempts`: must be 1 to 100"#,
            r#"flow.toml: step "call": field `retry.multiplier`: must be at least 1"#,
            r#"flow.toml: step "call": field `retry.initial_backoff_ms`: at most ten years"#,
            r#"flow.toml: step "call": field `retry.jitter`: must be 0 to 1"#,
            r#"flow.toml: step "call": field `timeout_ms`: must be 1 to 300000"#,
            r#"flow.toml: step "call": field `expect`: 99 is not an HTTP status"#,
            r#"flow.toml: step "think": field `system`: must not be empty"#,
            r#"flow.toml: step "think": field `prompt`: is required without `thread_id`: it is the user turn"#,
            r#"flow.toml: step "think": field `history_budget_tokens`: only a step with `thread_id` sends a history"#,
            r#"flow.toml: step "think": field `model`: "a b" must be a model name: 1 to 128 characters, no spaces"#,
            r#"flow.toml: step "think": field `schema.type`: must be "object": a structured answer is a JSON object"#,
            r#"flow.toml: step "think": field `schema.properties`: must be a table/object of property schemas"#,
            r#"flow.toml: step "think": field `schema.required`: must be a list of property names"#,
            r#"flow.toml: step "think": field `on_error`: jumps to unknown step "gone""#,
            r#"flow.toml: step "think2": field `prompt`: must not be empty"#,
            r#"flow.toml: step "think2": field `history_budget_tokens`: must be 500 to 200000"#,
            r#"flow.toml: step "think2": field `schema.required`: "b" is not one of `properties`"#,
            r#"flow.toml: step "ask": field `question`: must not be empty"#,
            r#"flow.toml: step "ask": field `agent_name`: must be 1 to 128 characters"#,
            r#"flow.toml: step "ask": field `timeout_secs`: must be 1 to 315360000 (ten years)"#,
            r#"flow.toml: step "ask": field `on_timeout`: jumps to unknown step "gone""#,
            r#"flow.toml: step "review": field `text`: `{{steps.think2.json.c}}`: the `schema` of step "think2" has no property "c""#,
            r#"flow.toml: step "review": field `reason`: `{{steps.think2.jsn}}`: an llm step's result has `text`, `json`, `model`, `usage`, `latency_ms`, `error`"#,
            r#"flow.toml: step "review": field `on_timeout`: needs `timeout_secs`: without a deadline it never fires"#,
            r#"flow.toml: step "review": field `on_timeout`: jumps to unknown step "gone""#,
            r#"flow.toml: step "wait": field `event`: "bad event" must be 1 to 64 of letters, digits, `_`, `-` and `.`"#,
            r#"flow.toml: step "wait": field `timeout_secs`: must be 1 to 315360000 (ten years)"#,
            r#"flow.toml: step "wait": field `resume_url_ttl_secs`: must be 1 to 315360000 (ten years)"#,
            r#"flow.toml: step "wait2": field `on_timeout`: needs `timeout_secs`: without a deadline it never fires"#,
            r#"flow.toml: step "wait2": field `on_timeout`: jumps to unknown step "gone""#,
            r#"flow.toml: step "post": field `thread_id`: `{{steps.wait.payload}}`: a wait_event step's result has `event`, `timed_out`"#,
            r#"flow.toml: step "post": field `text`: must not be empty"#,
            r#"flow.toml: step "post": field `agent_name`: must be 1 to 128 characters"#,
            r#"flow.toml: step "give": field `thread_id`: `{{resume_url.post}}`: step "post" is a post_message step, not a wait_event"#,
            r#"flow.toml: step "give": field `reason`: `{{steps.give.id}}`: step "give" does not come before this one, so it has no result here"#,
            r#"flow.toml: step "give": field `assignee`: only a thread assigned `to = "human"` has an assignee"#,
            r#"flow.toml: step "route": field `next`: a branch jumps with `cases` and `default`, not `next`"#,
            r#"flow.toml: step "route": field `on`: a branch cannot look at a resume URL"#,
            r#"flow.toml: step "route": field `cases.a`: jumps to unknown step "gone""#,
            r#"flow.toml: step "route": field `default`: jumps to unknown step "gone2""#,
            r#"flow.toml: step "route2": field `on`: `{{steps.route3.value}}`: step "route3" does not come before this one, so it has no result here"#,
            r#"flow.toml: step "route3": field `on`: `bad root` must start with `args`, `steps`, `run` or `resume_url`"#,
            r#"flow.toml: field `output.last`: `{{steps.nowhere.body}}`: no step "nowhere""#,
            r#"flow.toml: field `output.run`: `{{run.nope}}`: the run has `run.id`, `run.name` and `run.version`"#,
        ];
        assert_eq!(found, expected, "{found:#?}");
    }
}
