//! `tandem`: run the server, migrate the database, mint tokens, manage inbox
//! accounts and widget keys ([`accounts`]), follow a thread or the inbox
//! ([`tail`]).

mod accounts;
mod tail;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tandem_model::TokenSubject;
use tandem_server::config::{Config, LogFormat};
use tandem_server::{AppState, serve};
use tandem_store::Store;
use tandem_workflows::Registry;

#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "An AI and human support agents answering customers together"
)]
struct Cli {
    /// A TOML configuration file (see tandem.example.toml).
    #[arg(long, global = true, env = "TANDEM_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate the database and serve the API and web pages.
    Serve,
    /// Apply the database migrations, then exit.
    Migrate,
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage the accounts agents sign in to the inbox with.
    Agent {
        #[command(subcommand)]
        command: accounts::AgentCommand,
    },
    /// Manage the keys the customer chat widget is embedded with.
    Widget {
        #[command(subcommand)]
        command: accounts::WidgetCommand,
    },
    /// Follow a thread or the inbox over the WebSocket: one JSON frame per line.
    Tail(tail::TailArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a token and print its secret (shown once).
    Create {
        #[command(subcommand)]
        subject: Subject,
        /// A note to recognise the token by.
        #[arg(long, global = true)]
        label: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum Subject {
    /// The integrator's backend: may do everything.
    Admin,
    /// A human support agent.
    Agent {
        /// The name the agent replies under.
        #[arg(long)]
        name: String,
    },
    /// One end user.
    Customer {
        /// The integrator's id for the customer.
        #[arg(long)]
        customer_id: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Server commands load the configuration; `tail` is a client of some
    // server and has none.
    let setup = || setup(cli.config.as_deref(), cli.log_json);
    match cli.command {
        Command::Serve => run_server(setup()?).await,
        Command::Migrate => {
            let store = open_store(&setup()?).await?;
            store.close().await;
            println!("migrations applied");
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Create { subject, label },
        } => {
            let store = open_store(&setup()?).await?;
            let subject = match subject {
                Subject::Admin => TokenSubject::Admin,
                Subject::Agent { name } => TokenSubject::Agent { name },
                Subject::Customer { customer_id } => TokenSubject::Customer { customer_id },
            };
            let minted = store.create_token(subject, label).await?;
            store.close().await;
            println!("{}", minted.secret);
            Ok(())
        }
        Command::Agent { command } => {
            let store = open_store(&setup()?).await?;
            let done = accounts::agent(&store, command).await;
            store.close().await;
            done
        }
        Command::Widget { command } => {
            let store = open_store(&setup()?).await?;
            let done = accounts::widget(&store, command).await;
            store.close().await;
            done
        }
        Command::Tail(args) => tail::run(args).await,
    }
}

/// Loads the configuration and starts logging.
fn setup(file: Option<&std::path::Path>, log_json: bool) -> anyhow::Result<Config> {
    let mut config = Config::load(file).context("loading configuration")?;
    if log_json {
        config.log.format = LogFormat::Json;
    }
    init_tracing(&config)?;
    tracing::debug!(?config, "configuration");
    Ok(config)
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database).await.with_context(|| {
        format!(
            "connecting to {}",
            tandem_store::backend::redact_url(&config.database.url)
        )
    })?;
    store.migrate().await.context("migrating the database")?;
    Ok(store)
}

async fn run_server(mut config: Config) -> anyhow::Result<()> {
    raise_open_file_limit();
    let store = open_store(&config).await?;
    if let Some(minted) = store.bootstrap_admin().await? {
        // Printed, not logged: log pipelines keep what they see.
        println!("First start: an admin token was created. It is shown once, keep it safe:");
        println!();
        println!("    {}", minted.secret);
        println!();
    }
    announce_ai(&config)?;
    let mut registry = Registry::new();
    let loaded = tandem_server::workflows::load_declarative(&store, &config, &mut registry)
        .await
        .context("loading the declarative workflows")?;
    if loaded > 0 {
        tracing::info!(definitions = loaded, "workflows: definitions loaded");
    }
    let listener = tandem_server::net::bind(config.listen)
        .with_context(|| format!("listening on {}", config.listen))?;
    let address = listener.local_addr()?;
    // Resume URLs point here unless a public address is configured.
    config
        .workflows
        .public_url
        .get_or_insert_with(|| format!("http://{address}"));
    tracing::info!(
        %address,
        database = %tandem_store::backend::redact_url(&config.database.url),
        "serving"
    );
    let state = AppState::build(store, config, registry)
        .await
        .context("starting the workflow engine")?;
    serve(listener, state, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Every client socket is a file descriptor: the soft limit goes up to the
/// hard limit before anything is opened (the server's connection cap is
/// taken from it).
fn raise_open_file_limit() {
    match tandem_server::net::open_files::raise() {
        Ok(limits) if limits.soft < 4096 => tracing::warn!(
            soft_was = limits.soft_before,
            soft = limits.soft,
            hard = limits.hard,
            "open files: the limit is low; raise the hard limit (e.g. LimitNOFILE=) \
             for more connections"
        ),
        Ok(limits) => tracing::info!(
            soft_was = limits.soft_before,
            soft = limits.soft,
            hard = limits.hard,
            "open files: soft limit raised to the hard limit"
        ),
        Err(error) => tracing::warn!(%error, "open files: the limit could not be raised"),
    }
}

/// Says at start whether the AI answers, and refuses an endpoint the client
/// cannot use.
fn announce_ai(config: &Config) -> anyhow::Result<()> {
    if !config.reply.enabled {
        tracing::warn!(
            "the built-in reply path is off (reply.enabled = false): messages are not routed"
        );
        return Ok(());
    }
    if !config.ai.enabled() {
        tracing::warn!(
            "AI is off: no OpenAI-compatible endpoint is configured (OPENAI_API_KEY, \
             OPENAI_BASE_URL); every thread routes to humans"
        );
        return Ok(());
    }
    tandem_llm::Llm::new(&config.ai).context("the AI endpoint's configuration")?;
    let ai = &config.ai;
    let named = |role: tandem_llm::ModelRole| {
        let model = ai.role_model(role);
        if ai.defaults_to_reply_model(role) {
            format!("{model} (the reply model: unset, and the endpoint is not the provider's)")
        } else {
            model.to_owned()
        }
    };
    tracing::info!(
        endpoint = ai.endpoint(),
        reply_model = %ai.reply_model,
        classifier_model = %named(tandem_llm::ModelRole::Classifier),
        embedding_model = %named(tandem_llm::ModelRole::Embedding),
        first_token_timeout_secs = ai.first_token_timeout_secs,
        idle_timeout_secs = ai.idle_timeout_secs,
        request_timeout_secs = ai.request_timeout_secs,
        total_timeout_secs = ai.total_timeout_secs,
        check_models_on_start = ai.check_models_on_start,
        "AI is on",
    );
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

fn init_tracing(config: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&config.log.filter)
        .with_context(|| format!("log filter {:?}", config.log.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}
