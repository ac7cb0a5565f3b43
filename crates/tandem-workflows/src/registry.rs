//! The workflows a server can run, by name and version.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tandem_model::WorkflowRun;

use crate::context::Context;
use crate::error::StepError;

/// A workflow's body: its context and arguments in, its result out.
pub type Handler =
    Arc<dyn Fn(Context, Value) -> BoxFuture<'static, Result<Value, StepError>> + Send + Sync>;

/// Runs once per run when it has ended, whichever way.
pub type OnComplete = Arc<dyn Fn(Outcome) -> BoxFuture<'static, ()> + Send + Sync>;

/// Checks a run's arguments before it is created.
pub type ArgsCheck = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// How a run ended, for its on-complete handler.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run: WorkflowRun,
    pub end: End,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    Completed(Value),
    /// The error recorded on the run (`{code, message, …}`).
    Failed(Value),
    Cancelled,
}

/// One version of one workflow.
#[derive(Clone)]
pub struct WorkflowDef {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) handler: Handler,
    pub(crate) on_complete: Option<OnComplete>,
    pub(crate) check_args: Option<ArgsCheck>,
}

impl std::fmt::Debug for WorkflowDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowDef")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl WorkflowDef {
    /// A workflow whose arguments and result are serde types; arguments
    /// that do not deserialize are refused when the run is started.
    pub fn new<A, R, F, Fut>(name: impl Into<String>, version: impl Into<String>, body: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Context, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, StepError>> + Send + 'static,
    {
        let body = Arc::new(body);
        let handler: Handler = Arc::new(move |ctx, args| {
            let body = body.clone();
            Box::pin(async move {
                let args: A = serde_json::from_value(args)
                    .map_err(|e| StepError::fail(format!("invalid arguments: {e}")))?;
                let result = body(ctx, args).await?;
                serde_json::to_value(result)
                    .map_err(|e| StepError::fail(format!("result does not serialize: {e}")))
            })
        });
        Self {
            name: name.into(),
            version: version.into(),
            handler,
            on_complete: None,
            check_args: Some(Arc::new(|args| {
                serde_json::from_value::<A>(args.clone())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })),
        }
    }

    /// A workflow over raw JSON, with its own argument check.
    pub fn from_handler(
        name: impl Into<String>,
        version: impl Into<String>,
        handler: Handler,
        check_args: Option<ArgsCheck>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            handler,
            on_complete: None,
            check_args,
        }
    }

    /// Adds a handler that gets each run's result, error or cancellation.
    pub fn on_complete<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Outcome) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_complete = Some(Arc::new(move |outcome| Box::pin(handler(outcome))));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }
}

/// Every workflow version this process can execute. New runs start on a
/// name's *current* version; runs already started keep theirs.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    workflows: BTreeMap<String, Versions>,
}

#[derive(Debug, Clone, Default)]
struct Versions {
    current: String,
    all: BTreeMap<String, Arc<WorkflowDef>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a version and makes it the name's current one.
    pub fn register(&mut self, def: WorkflowDef) -> &mut Self {
        let versions = self.workflows.entry(def.name.clone()).or_default();
        versions.current = def.version.clone();
        versions.all.insert(def.version.clone(), Arc::new(def));
        self
    }

    /// Adds an older version, still needed by the runs pinned to it.
    pub fn register_previous(&mut self, def: WorkflowDef) -> &mut Self {
        let versions = self.workflows.entry(def.name.clone()).or_default();
        if versions.current.is_empty() {
            versions.current = def.version.clone();
        }
        versions
            .all
            .entry(def.version.clone())
            .or_insert_with(|| Arc::new(def));
        self
    }

    /// The version new runs of `name` start on.
    pub fn current(&self, name: &str) -> Option<&Arc<WorkflowDef>> {
        let versions = self.workflows.get(name)?;
        versions.all.get(&versions.current)
    }

    /// A given version.
    pub fn get(&self, name: &str, version: &str) -> Option<&Arc<WorkflowDef>> {
        self.workflows.get(name)?.all.get(version)
    }

    /// Each name with the versions this process can execute.
    pub fn executable(&self) -> impl Iterator<Item = (&str, Vec<String>)> {
        self.workflows
            .iter()
            .map(|(name, v)| (name.as_str(), v.all.keys().cloned().collect()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.workflows.keys().map(String::as_str)
    }
}
