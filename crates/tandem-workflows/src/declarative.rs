//! Declarative workflows: definitions written as JSON or TOML files instead
//! of Rust code, run by one interpreter over the same [`Context`] steps.
//!
//! - [`definition`]: the format's types, parsing, validation (every problem
//!   names its file, step and field) and the canonical JSON whose hash is a
//!   definition's version.
//! - [`template`]: `{{args.…}}`, `{{steps.<id>.…}}`, `{{run.id}}` and
//!   `{{resume_url.<wait step>}}` references in string fields.
//! - [`interpreter`]: the [`Handler`](crate::registry::Handler) that walks a
//!   definition's steps, deterministic given the run's journal.
//! - [`http_step`]: the signed request of an `http` step, and how its answer
//!   counts.
//! - [`llm_step`]: the model call of an `llm` step: its turns (a thread's
//!   history through `tandem_llm::prompt`), and how its answer counts.
//! - [`inbox_step`]: the inbox items `ask_human` and `approval` steps open,
//!   and what a person's resolution makes of their result.
//!
//! [`load_definitions`] reads a directory of definitions at startup, keeps
//! each version's source in the store, and registers the current versions
//! with the older ones that runs may still be pinned to; [`Services`] hands
//! the steps the model client and the AI agent's name. The format is
//! documented in `docs/workflow-files.md`.
//!
//! [`Context`]: crate::context::Context

pub mod definition;
pub mod http_step;
pub mod inbox_step;
pub mod interpreter;
pub mod llm_step;
pub mod template;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_llm::Llm;
use tandem_store::{Store, StoreError};

pub use definition::{Definition, Format, Problem};
pub use interpreter::MAX_EXECUTED_STEPS;

use crate::registry::{Registry, WorkflowDef};

/// The name the AI agent's messages carry when the server names none.
pub const DEFAULT_AGENT_NAME: &str = "Tandem AI";

/// What the steps that involve the AI and people need of the server.
#[derive(Debug, Clone)]
pub struct Services {
    /// The model client of `llm` steps; none while the AI is off, and then
    /// a definition with an `llm` step does not load.
    pub llm: Option<Llm>,
    /// The AI agent the questions and drafts of `ask_human` and `approval`
    /// steps are from, unless a step names another (the server's
    /// `agent.name`, as on the built-in reply path's messages).
    pub agent_name: String,
}

impl Default for Services {
    /// The AI off.
    fn default() -> Self {
        Self {
            llm: None,
            agent_name: DEFAULT_AGENT_NAME.to_owned(),
        }
    }
}

/// Why a step that needs a model cannot run.
pub(crate) const AI_OFF: &str = "an `llm` step needs a model endpoint and the AI is off: \
     configure one (OPENAI_API_KEY or OPENAI_BASE_URL) or remove the step";

/// A problem per `llm` step of `definition` when there is no model client.
fn ai_problems(definition: &Definition, file: &str, services: &Services) -> Vec<Problem> {
    if services.llm.is_some() {
        return Vec::new();
    }
    definition
        .llm_steps()
        .map(|step| Problem {
            file: file.to_owned(),
            step: Some(step.to_owned()),
            field: Some("kind".into()),
            message: AI_OFF.to_owned(),
        })
        .collect()
}

/// A definition loaded from a file, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedDefinition {
    pub name: String,
    /// The version new runs start on.
    pub version: String,
    pub path: PathBuf,
    /// How many steps it has.
    pub steps: usize,
}

/// Why definitions could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("reading the workflow definitions in {}: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem of every file, each naming its file, step and field.
    #[error("invalid workflow definitions:\n{}", list(.0))]
    Invalid(Vec<Problem>),
    #[error("building the HTTP client of `http` steps: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses and validates one definition; `file` names it in problems.
pub fn parse_definition(
    source: &str,
    format: Format,
    file: &str,
) -> Result<Definition, DefinitionError> {
    definition::parse(source, format, file).map_err(DefinitionError::Invalid)
}

/// The workflow that runs `definition` as its current version; refused
/// when it has an `llm` step and `services` no model client.
pub fn workflow_def(
    definition: Definition,
    services: &Services,
) -> Result<WorkflowDef, DefinitionError> {
    let problems = ai_problems(&definition, &definition.name, services);
    if !problems.is_empty() {
        return Err(DefinitionError::Invalid(problems));
    }
    let client = http_step::client().map_err(DefinitionError::HttpClient)?;
    let version = definition.version();
    Ok(build(Arc::new(definition), &version, &client, services))
}

fn build(
    definition: Arc<Definition>,
    version: &str,
    client: &reqwest::Client,
    services: &Services,
) -> WorkflowDef {
    let check = interpreter::args_check(&definition);
    WorkflowDef::from_handler(
        definition.name.clone(),
        version,
        interpreter::handler(definition, client.clone(), services.clone()),
        check,
    )
}

/// Reads every `*.json` and `*.toml` file in `dir` (in name order), and
/// fails with all their problems if any is invalid, two share a name, or
/// one has an `llm` step while `services` has no model client. Otherwise
/// it keeps each definition's canonical source in the store under its
/// version, registers it as its name's current version, and registers
/// every older stored version of the same names, so that runs pinned to one
/// still execute on it after the file changed (an `llm` step of an older
/// version fails when it runs with the AI off).
pub async fn load_definitions(
    store: &Store,
    dir: &Path,
    registry: &mut Registry,
    services: &Services,
) -> Result<Vec<LoadedDefinition>, DefinitionError> {
    let read_dir = |source| DefinitionError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        if path.is_file() && Format::from_path(&path).is_some() {
            paths.push(path);
        }
    }
    paths.sort();

    let mut problems = Vec::new();
    let mut parsed: Vec<(PathBuf, Definition)> = Vec::new();
    for path in paths {
        let file = path.display().to_string();
        let Some(format) = Format::from_path(&path) else {
            continue;
        };
        match std::fs::read_to_string(&path) {
            Ok(source) => match definition::parse(&source, format, &file) {
                Ok(definition) => {
                    problems.extend(ai_problems(&definition, &file, services));
                    parsed.push((path, definition));
                }
                Err(found) => problems.extend(found),
            },
            Err(e) => problems.push(Problem {
                file,
                step: None,
                field: None,
                message: format!("cannot be read: {e}"),
            }),
        }
    }
    let mut files: HashMap<&str, &Path> = HashMap::new();
    for (path, definition) in &parsed {
        let name = definition.name.as_str();
        let problem = if let Some(first) = files.insert(name, path) {
            format!("workflow {name:?} is also defined in {}", first.display())
        } else if registry.current(name).is_some() {
            format!("a workflow named {name:?} is already registered by the server's code")
        } else {
            continue;
        };
        problems.push(Problem {
            file: path.display().to_string(),
            step: None,
            field: Some("name".into()),
            message: problem,
        });
    }
    if !problems.is_empty() {
        return Err(DefinitionError::Invalid(problems));
    }

    let client = http_step::client().map_err(DefinitionError::HttpClient)?;
    let mut loaded = Vec::new();
    let mut current = HashSet::new();
    for (path, definition) in parsed {
        let version = definition.version();
        store
            .save_definition(&definition.name, &version, &definition.canonical_json())
            .await?;
        current.insert((definition.name.clone(), version.clone()));
        loaded.push(LoadedDefinition {
            name: definition.name.clone(),
            version: version.clone(),
            path,
            steps: definition.steps.len(),
        });
        registry.register(build(Arc::new(definition), &version, &client, services));
    }

    let names: HashSet<&str> = loaded.iter().map(|l| l.name.as_str()).collect();
    for (name, version, source) in store.definitions().await? {
        if !names.contains(name.as_str()) || current.contains(&(name.clone(), version.clone())) {
            continue;
        }
        let label = format!("stored definition {name} {version}");
        match definition::parse(&source, Format::Json, &label) {
            Ok(definition) if definition.name == name => {
                if services.llm.is_none() && definition.llm_steps().next().is_some() {
                    tracing::warn!(
                        workflow = %name, %version,
                        "workflows: a stored definition has `llm` steps and the AI is off; \
                         its runs fail when they reach one"
                    );
                }
                // Registered under the stored version, whatever this build
                // would hash it to: that is the version its runs carry.
                registry.register_previous(build(
                    Arc::new(definition),
                    &version,
                    &client,
                    services,
                ));
            }
            Ok(definition) => tracing::warn!(
                workflow = %name, %version, source_name = %definition.name,
                "workflows: a stored definition names another workflow; its runs cannot execute"
            ),
            Err(problems) => tracing::warn!(
                workflow = %name, %version, problems = %list(&problems),
                "workflows: a stored definition no longer validates; its runs cannot execute"
            ),
        }
    }
    Ok(loaded)
}
