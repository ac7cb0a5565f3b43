//! Walks a definition's steps through the [`Context`].
//!
//! Everything the walk decides comes from the run's arguments, its id and
//! the results of earlier steps, which replay from the journal; the only
//! steps taken are the context's. So a run re-executed after a suspension
//! or a crash takes the same path, step for step, as the journal recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tandem_model::metadata::{PROVIDER, PROVIDER_METADATA};
use tandem_model::{
    Author, AuthorKind, Content, MessageStatus, NewAssignment, NewMessage, Role, ThreadId,
};

use super::Services;
use super::definition::{
    Action, ApprovalStep, AskHumanStep, AssignStep, DEFAULT_HISTORY_BUDGET_TOKENS, Definition, END,
    HttpStep, LlmStep, PostMessageStep, Speaker, Step,
};
use super::inbox_step::{self, Origin};
use super::template::{Reference, Scope, Template, render_json, strings_in};
use super::{http_step, llm_step};
use crate::context::{Context, Wakeup};
use crate::error::{ActionError, StepError};
use crate::registry::{ArgsCheck, Handler};

/// Most steps one run may execute: a `branch` or `next` loop that never
/// ends fails the run instead of running forever.
pub const MAX_EXECUTED_STEPS: usize = 1000;

/// The handler that runs `definition`.
pub(crate) fn handler(
    definition: Arc<Definition>,
    client: reqwest::Client,
    services: Services,
) -> Handler {
    let services = Arc::new(services);
    Arc::new(move |ctx, args| {
        let definition = definition.clone();
        let client = client.clone();
        let services = services.clone();
        Box::pin(async move {
            Walk::new(&definition, &ctx, &client, &services, args)
                .run()
                .await
        })
    })
}

/// Refuses arguments that lack a required key.
pub(crate) fn args_check(definition: &Definition) -> Option<ArgsCheck> {
    let required = definition.args.required.clone();
    if required.is_empty() {
        return None;
    }
    Some(Arc::new(move |args: &Value| {
        let Some(object) = args.as_object() else {
            return Err("the arguments must be a JSON object".to_owned());
        };
        let missing: Vec<&str> = required
            .iter()
            .filter(|key| !object.contains_key(key.as_str()))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "missing required arguments: {}",
                missing.join(", ")
            ))
        }
    }))
}

/// Where a step sends the run.
enum Jump {
    /// `next`, or the step after it.
    Next,
    To(String),
}

/// One execution of one run.
struct Walk<'a> {
    definition: &'a Definition,
    ctx: &'a Context,
    client: &'a reqwest::Client,
    services: &'a Services,
    args: Value,
    run: Value,
    /// Each step's latest result.
    results: HashMap<String, Value>,
    /// Resume URLs minted and not yet used by their wait step.
    resume_urls: HashMap<String, String>,
}

impl<'a> Walk<'a> {
    fn new(
        definition: &'a Definition,
        ctx: &'a Context,
        client: &'a reqwest::Client,
        services: &'a Services,
        args: Value,
    ) -> Self {
        let (name, version) = ctx.workflow();
        let run = json!({"id": ctx.run_id().to_string(), "name": name, "version": version});
        Self {
            definition,
            ctx,
            client,
            services,
            args,
            run,
            results: HashMap::new(),
            resume_urls: HashMap::new(),
        }
    }

    async fn run(mut self) -> Result<Value, StepError> {
        let definition = self.definition;
        let steps = &definition.steps;
        let mut place = 0;
        let mut executed = 0;
        let mut last = Value::Null;
        while let Some(step) = steps.get(place) {
            executed += 1;
            if executed > MAX_EXECUTED_STEPS {
                return Err(StepError::fail(format!(
                    "the run reached step {:?} after executing {MAX_EXECUTED_STEPS} steps, the \
                     most a declarative workflow may: a `branch` or `next` loop does not end",
                    step.id
                )));
            }
            let (result, jump) = self.step(step).await?;
            self.results.insert(step.id.clone(), result.clone());
            last = result;
            let target = match jump {
                Jump::To(target) => Some(target),
                Jump::Next => step.next.clone(),
            };
            place = match target.as_deref() {
                None => place + 1,
                Some(END) => break,
                // Validation made every jump target a known id.
                Some(id) => definition.position(id).ok_or_else(|| {
                    StepError::fail(format!("step {:?} jumps to unknown step {id:?}", step.id))
                })?,
            };
        }
        match &definition.output {
            Some(output) => {
                self.mint(output, "output").await?;
                render_json(output, &self.scope())
                    .map_err(|e| StepError::fail(format!("the workflow's `output`: {e}")))
            }
            None => Ok(last),
        }
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            args: &self.args,
            steps: &self.results,
            run: &self.run,
            resume_urls: &self.resume_urls,
        }
    }

    async fn step(&mut self, step: &Step) -> Result<(Value, Jump), StepError> {
        let id = step.id.as_str();
        match &step.action {
            Action::Http(http) => Ok((self.http(id, http).await?, Jump::Next)),
            Action::WaitEvent(wait) => {
                let timeout = wait.timeout_secs.map(Duration::from_secs);
                let wakeup = self.ctx.wait_for_event(&wait.event, timeout).await?;
                // The URL delivered this wait's event (or expired unused):
                // a later reference, in a loop, gets a fresh one.
                self.resume_urls.remove(id);
                match wakeup {
                    Wakeup::Event(payload) => {
                        Ok((json!({"event": payload, "timed_out": false}), Jump::Next))
                    }
                    Wakeup::TimedOut => {
                        let result = json!({"event": null, "timed_out": true});
                        match &wait.on_timeout {
                            Some(target) => Ok((result, Jump::To(target.clone()))),
                            None => Err(failed(
                                id,
                                format!(
                                    "no event {:?} arrived within {} s (the step has no `on_timeout`)",
                                    wait.event,
                                    wait.timeout_secs.unwrap_or_default()
                                ),
                            )),
                        }
                    }
                }
            }
            Action::Sleep(sleep) => {
                self.ctx.sleep(Duration::from_secs(sleep.seconds)).await?;
                Ok((json!({"seconds": sleep.seconds}), Jump::Next))
            }
            Action::PostMessage(post) => Ok((self.post_message(id, post).await?, Jump::Next)),
            Action::Assign(assign) => Ok((self.assign(id, assign).await?, Jump::Next)),
            Action::Branch(branch) => {
                // A missing value is `null`: it matches a `null` case or
                // takes the default, as an absent answer should.
                let value = Reference::parse(&branch.on)
                    .ok()
                    .and_then(|r| self.scope().lookup(&r).ok())
                    .unwrap_or(Value::Null);
                let target = branch.target(&value).map(str::to_owned);
                let result = json!({"value": value, "target": target});
                Ok((result, target.map_or(Jump::Next, Jump::To)))
            }
            Action::Llm(llm) => self.llm(id, llm).await,
            Action::AskHuman(ask) => self.ask_human(id, ask).await,
            Action::Approval(approval) => self.approval(id, approval).await,
        }
    }

    /// Mints the resume URLs that templates in `value` use and that are not
    /// minted yet, in a fixed order so that replay mints the same ones.
    async fn mint(&mut self, value: &Value, field: &str) -> Result<(), StepError> {
        let mut strings = Vec::new();
        strings_in(value, field, &mut strings);
        for (_, source) in strings {
            let Ok(template) = Template::parse(source) else {
                continue;
            };
            for wait_id in template.resume_urls() {
                if self.resume_urls.contains_key(wait_id) {
                    continue;
                }
                let wait = self.definition.steps.iter().find_map(|s| match &s.action {
                    Action::WaitEvent(wait) if s.id == wait_id => Some(wait),
                    _ => None,
                });
                let Some(wait) = wait else {
                    return Err(StepError::fail(format!("no wait_event step {wait_id:?}")));
                };
                let ttl = Duration::from_secs(wait.resume_url_ttl_secs);
                let url = self.ctx.resume_url(&wait.event, ttl).await?;
                self.resume_urls.insert(wait_id.to_owned(), url);
            }
        }
        Ok(())
    }

    /// Renders one template field as text.
    async fn text(&mut self, step: &str, field: &str, source: &str) -> Result<String, StepError> {
        let value = Value::String(source.to_owned());
        self.mint(&value, field).await?;
        let template =
            Template::parse(source).map_err(|e| failed(step, format!("`{field}`: {e}")))?;
        template
            .render_text(&self.scope())
            .map_err(|e| failed(step, format!("`{field}`: {e}")))
    }

    async fn optional_text(
        &mut self,
        step: &str,
        field: &str,
        source: Option<&String>,
    ) -> Result<Option<String>, StepError> {
        match source {
            Some(source) => self.text(step, field, source).await.map(Some),
            None => Ok(None),
        }
    }

    async fn http(&mut self, id: &str, http: &HttpStep) -> Result<Value, StepError> {
        let url = self.text(id, "url", &http.url).await?;
        let mut headers = Vec::new();
        for (name, value) in &http.headers {
            let value = self.text(id, &format!("headers.{name}"), value).await?;
            headers.push((name.clone(), value));
        }
        let body = match &http.body {
            Some(body) => {
                self.mint(body, "body").await?;
                let rendered = render_json(body, &self.scope())
                    .map_err(|e| failed(id, format!("`body`: {e}")))?;
                Some(
                    serde_json::to_vec(&rendered)
                        .map_err(|e| failed(id, format!("`body`: {e}")))?,
                )
            }
            None => None,
        };
        let request = http_step::Request {
            method: http.method,
            url,
            headers,
            body,
            timeout: Duration::from_millis(http.timeout_ms),
            expect: http.expect.clone(),
            run_id: self.ctx.run_id().to_string(),
        };
        let (ctx, client) = (self.ctx, self.client);
        let signer = ctx.signer();
        ctx.run_with(id, &http.retry, |info| {
            http_step::send(client, signer, &request, info)
        })
        .await
    }

    async fn post_message(&mut self, id: &str, post: &PostMessageStep) -> Result<Value, StepError> {
        let thread_id = self.thread_id(id, &post.thread_id).await?;
        let text = self.text(id, "text", &post.text).await?;
        if text.trim().is_empty() {
            return Err(failed(id, "`text` rendered empty"));
        }
        let agent = self.text(id, "agent_name", &post.agent_name).await?;
        let workflow = self.workflow_meta(id);
        // As the server marks messages posted as a named agent: people have
        // `provider: "human"`; an AI agent's provider here is the workflow.
        let (kind, metadata) = match post.author {
            Speaker::Ai => (
                AuthorKind::Ai,
                json!({PROVIDER: "workflow", PROVIDER_METADATA: {"workflow": workflow}}),
            ),
            Speaker::Human => (
                AuthorKind::Human,
                json!({
                    PROVIDER: "human",
                    PROVIDER_METADATA: {"human": {"name": agent}, "workflow": workflow},
                }),
            ),
        };
        let message = NewMessage {
            id: None,
            thread_id,
            role: Role::Assistant,
            agent_name: Some(agent.clone()),
            author: Author {
                kind,
                id: Some(agent),
            },
            content: Content::Text(text),
            visibility: post.visibility,
            status: MessageStatus::Published,
            metadata,
            reply_to: None,
            customer_scope: None,
        };
        let posted = self.ctx.post_message(id, message).await?;
        serde_json::to_value(posted).map_err(|e| failed(id, e.to_string()))
    }

    async fn assign(&mut self, id: &str, assign: &AssignStep) -> Result<Value, StepError> {
        let thread_id = self.thread_id(id, &assign.thread_id).await?;
        let assignee = self
            .optional_text(id, "assignee", assign.assignee.as_ref())
            .await?;
        let team = self.optional_text(id, "team", assign.team.as_ref()).await?;
        let reason = self
            .optional_text(id, "reason", assign.reason.as_ref())
            .await?;
        let assignment = NewAssignment {
            thread_id,
            assigned_to: assign.to,
            assignee,
            team,
            reason,
            by_kind: "workflow".to_owned(),
            by_id: Some(self.ctx.run_id().to_string()),
        };
        let thread = self.ctx.assign(id, assignment).await?;
        serde_json::to_value(thread).map_err(|e| failed(id, e.to_string()))
    }

    /// A model call, journaled as the step; a failure (after the step's
    /// retries) goes to `on_error` when there is one.
    async fn llm(&mut self, id: &str, step: &LlmStep) -> Result<(Value, Jump), StepError> {
        let system = self.text(id, "system", &step.system).await?;
        let prompt = self
            .optional_text(id, "prompt", step.prompt.as_ref())
            .await?;
        let thread = match &step.thread_id {
            Some(source) => Some(self.thread_id(id, source).await?),
            None => None,
        };
        let prompt = match (prompt, thread) {
            (Some(prompt), None) if prompt.trim().is_empty() => {
                return Err(failed(id, "`prompt` rendered empty"));
            }
            // An instruction that renders empty is no instruction.
            (prompt, _) => prompt.filter(|p| !p.trim().is_empty()),
        };
        let llm = self.services.llm.as_ref();
        let model = step
            .model
            .clone()
            .or_else(|| llm.map(|l| l.config().reply_model.clone()))
            .unwrap_or_default();
        let request = llm_step::Request {
            step: id.to_owned(),
            model,
            system,
            prompt,
            thread: thread.map(|thread_id| llm_step::History {
                thread_id,
                budget_tokens: step
                    .history_budget_tokens
                    .unwrap_or(DEFAULT_HISTORY_BUDGET_TOKENS)
                    as usize,
                ai_name: self.services.agent_name.clone(),
            }),
            schema: step.schema.clone(),
        };
        let store = &self.ctx.shared().core.store;
        let outcome = self
            .ctx
            .run_with(id, &step.retry, |info| {
                llm_step::call(llm, store, &request, info)
            })
            .await;
        match (outcome, &step.on_error) {
            (Ok(result), _) => Ok((result, Jump::Next)),
            // The failure is journaled: a replay takes the same jump.
            (Err(StepError::Failed { step: at, error }), Some(target)) if at == id => {
                let result = json!({
                    "error": {"message": error.message, "retryable": error.retryable},
                });
                Ok((result, Jump::To(target.clone())))
            }
            (Err(error), _) => Err(error),
        }
    }

    /// A `question` item, then a durable wait for its answer.
    async fn ask_human(
        &mut self,
        id: &str,
        ask: &AskHumanStep,
    ) -> Result<(Value, Jump), StepError> {
        let thread_id = self.thread_id(id, &ask.thread_id).await?;
        let question = self.text(id, "question", &ask.question).await?;
        if question.trim().is_empty() {
            return Err(failed(id, "`question` rendered empty"));
        }
        let reason = self
            .optional_text(id, "reason", ask.reason.as_ref())
            .await?
            .unwrap_or_else(|| {
                format!(
                    "the workflow {:?} asks the support team",
                    self.definition.name
                )
            });
        let agent = self.agent_name(id, ask.agent_name.as_ref()).await?;
        let origin = self.origin(id, thread_id, &agent, reason, ask.timeout_secs);
        let opened = self
            .ctx
            .open_item(id, inbox_step::question(&origin, question))
            .await?;
        let payload = self
            .wait_for_person(id, &opened, ask.timeout_secs, ask.on_timeout.is_some())
            .await?;
        let result = inbox_step::answered(&opened, payload.as_ref());
        Ok(match (payload, &ask.on_timeout) {
            (None, Some(target)) => (result, Jump::To(target.clone())),
            _ => (result, Jump::Next),
        })
    }

    /// A draft with an `approval` item, then a durable wait for the review.
    async fn approval(
        &mut self,
        id: &str,
        approval: &ApprovalStep,
    ) -> Result<(Value, Jump), StepError> {
        let thread_id = self.thread_id(id, &approval.thread_id).await?;
        let text = self.text(id, "text", &approval.text).await?;
        if text.trim().is_empty() {
            return Err(failed(id, "`text` rendered empty"));
        }
        let reason = self
            .optional_text(id, "reason", approval.reason.as_ref())
            .await?
            .unwrap_or_else(|| {
                format!(
                    "the workflow {:?} holds a draft for approval",
                    self.definition.name
                )
            });
        let agent = self.agent_name(id, approval.agent_name.as_ref()).await?;
        let origin = self.origin(id, thread_id, &agent, reason, approval.timeout_secs);
        let opened = self
            .ctx
            .open_item(id, inbox_step::approval(&origin, text.clone()))
            .await?;
        let payload = self
            .wait_for_person(
                id,
                &opened,
                approval.timeout_secs,
                approval.on_timeout.is_some(),
            )
            .await?;
        // The draft as journaled with its item.
        let draft = opened.item.body.clone().unwrap_or(text);
        let result = inbox_step::reviewed(&opened, &draft, payload.as_ref());
        Ok(match (payload, &approval.on_timeout) {
            (None, Some(target)) => (result, Jump::To(target.clone())),
            _ => (result, Jump::Next),
        })
    }

    /// Waits for the resolution of an item this step opened: its event's
    /// payload, or none when the deadline passed (the item is then marked
    /// `expired`, and without `on_timeout` the step fails).
    async fn wait_for_person(
        &mut self,
        id: &str,
        opened: &tandem_model::OpenedItem,
        timeout_secs: Option<u64>,
        on_timeout: bool,
    ) -> Result<Option<Value>, StepError> {
        let event = inbox_step::event(opened);
        let timeout = timeout_secs.map(Duration::from_secs);
        match self.ctx.wait_for_event(&event, timeout).await? {
            Wakeup::Event(payload) => Ok(Some(payload)),
            Wakeup::TimedOut => {
                let store = &self.ctx.shared().core.store;
                let item = opened.item.id;
                self.ctx
                    .run(id, |_| inbox_step::expire(store, item))
                    .await?;
                if on_timeout {
                    Ok(None)
                } else {
                    Err(failed(
                        id,
                        format!(
                            "inbox item {item} was not resolved within {} s (the step has no \
                             `on_timeout`); it is expired",
                            timeout_secs.unwrap_or_default()
                        ),
                    ))
                }
            }
        }
    }

    /// Where an item comes from: the thread, this run and step, the agent.
    fn origin<'n>(
        &self,
        id: &str,
        thread_id: ThreadId,
        agent_name: &'n str,
        reason: String,
        timeout_secs: Option<u64>,
    ) -> Origin<'n> {
        // The item's deadline, for the inbox's order. Read from the clock
        // and not journaled: only the first execution's item is stored.
        let now = self.ctx.shared().core.clock.now();
        let due_at = timeout_secs
            .and_then(|secs| chrono::Duration::try_seconds(secs as i64))
            .and_then(|wait| now.checked_add_signed(wait));
        Origin {
            thread_id,
            run_id: self.ctx.run_id(),
            agent_name,
            workflow: self.workflow_meta(id),
            reason: Some(reason),
            due_at,
        }
    }

    /// The AI agent a step speaks as: its `agent_name`, or the server's.
    async fn agent_name(&mut self, id: &str, source: Option<&String>) -> Result<String, StepError> {
        let name = self
            .optional_text(id, "agent_name", source)
            .await?
            .unwrap_or_else(|| self.services.agent_name.clone());
        if name.trim().is_empty() || name.chars().count() > 128 {
            return Err(failed(
                id,
                format!("`agent_name`: {name:?} must be 1 to 128 characters"),
            ));
        }
        Ok(name)
    }

    /// Names the workflow, version, run and step in a message's metadata.
    fn workflow_meta(&self, id: &str) -> Value {
        let (name, version) = self.ctx.workflow();
        json!({"name": name, "version": version, "run_id": self.ctx.run_id(), "step": id})
    }

    async fn thread_id(&mut self, id: &str, source: &str) -> Result<ThreadId, StepError> {
        let text = self.text(id, "thread_id", source).await?;
        text.trim()
            .parse()
            .map_err(|_| failed(id, format!("`thread_id`: {text:?} is not a thread id")))
    }
}

/// A step's failure that no retry mends.
fn failed(step: &str, message: impl Into<String>) -> StepError {
    StepError::Failed {
        step: step.to_owned(),
        error: ActionError::permanent(message),
    }
}
