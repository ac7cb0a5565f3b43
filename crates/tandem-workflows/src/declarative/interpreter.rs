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
use tandem_store::{
    Author, AuthorKind, Content, MessageStatus, NewAssignment, NewMessage, Role, ThreadId,
};

use super::definition::{
    Action, AssignStep, Definition, END, HttpStep, PostMessageStep, Speaker, Step,
};
use super::http_step;
use super::template::{Reference, Scope, Template, render_json, strings_in};
use crate::context::{Context, Wakeup};
use crate::error::{ActionError, StepError};
use crate::registry::{ArgsCheck, Handler};

/// Most steps one run may execute: a `branch` or `next` loop that never
/// ends fails the run instead of running forever.
pub const MAX_EXECUTED_STEPS: usize = 1000;

/// The handler that runs `definition`.
pub(crate) fn handler(definition: Arc<Definition>, client: reqwest::Client) -> Handler {
    Arc::new(move |ctx, args| {
        let definition = definition.clone();
        let client = client.clone();
        Box::pin(async move { Walk::new(&definition, &ctx, &client, args).run().await })
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
        args: Value,
    ) -> Self {
        let (name, version) = ctx.workflow();
        let run = json!({"id": ctx.run_id().to_string(), "name": name, "version": version});
        Self {
            definition,
            ctx,
            client,
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
        let (name, version) = self.ctx.workflow();
        let workflow = json!({
            "name": name, "version": version, "run_id": self.ctx.run_id(), "step": id,
        });
        // As the server marks messages posted as a named agent: people have
        // `provider: "human"`; an AI agent's provider here is the workflow.
        let (kind, metadata) = match post.author {
            Speaker::Ai => (
                AuthorKind::Ai,
                json!({"provider": "workflow", "providerMetadata": {"workflow": workflow}}),
            ),
            Speaker::Human => (
                AuthorKind::Human,
                json!({
                    "provider": "human",
                    "providerMetadata": {"human": {"name": agent}, "workflow": workflow},
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
