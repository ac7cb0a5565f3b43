//! `tandem agent …` and `tandem widget …`: who may sign in to the inbox,
//! and the keys the customer chat is embedded with.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, bail};
use clap::Subcommand;
use tandem_model::NewWidgetKey;
use tandem_server::accounts;
use tandem_store::Store;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create an inbox account; the password is asked for (or read from
    /// one line of standard input when it is not a terminal).
    Create {
        /// The name the agent signs in with and replies under.
        #[arg(long)]
        name: String,
    },
    /// Set an account's password (and enable it again).
    Password {
        #[arg(long)]
        name: String,
    },
    /// Disable an account: it cannot sign in, and its sessions end now.
    Disable {
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WidgetCommand {
    /// Make a widget key for the chat; prints the key and the identity
    /// secret (shown once).
    Create {
        /// A site allowed to embed the chat, e.g. `https://shop.example.com`
        /// (repeat for several).
        #[arg(long = "origin")]
        origins: Vec<String>,
        /// A name to recognise the key by.
        #[arg(long, default_value = "chat widget")]
        name: String,
        /// Refuse anonymous visitors: every session needs a verified user.
        #[arg(long)]
        identity_required: bool,
    },
    /// List the live widget keys (without their secrets).
    List,
    /// Revoke a key: no new chat session starts with it.
    Revoke { key: String },
}

pub async fn agent(store: &Store, command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::Create { name } => {
            if store.agent_account(&name).await?.is_some() {
                bail!("the account {name:?} exists; use `tandem agent password --name {name:?}`");
            }
            let password = read_password()?;
            accounts::save_agent(store, &name, &password).await?;
            println!("agent {name:?} can sign in at /inbox");
        }
        AgentCommand::Password { name } => {
            if store.agent_account(&name).await?.is_none() {
                bail!("no account {name:?}");
            }
            let password = read_password()?;
            accounts::save_agent(store, &name, &password).await?;
            println!("password of {name:?} changed");
        }
        AgentCommand::Disable { name } => {
            if !store.disable_agent_account(&name).await? {
                bail!("no enabled account {name:?}");
            }
            println!("agent {name:?} is disabled and signed out");
        }
    }
    Ok(())
}

pub async fn widget(store: &Store, command: WidgetCommand) -> anyhow::Result<()> {
    match command {
        WidgetCommand::Create {
            origins,
            name,
            identity_required,
        } => {
            let origins = origins
                .into_iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .collect::<Vec<_>>();
            if let Some(bad) = origins
                .iter()
                .find(|o| !tandem_server::http::origin::is_well_formed(o))
            {
                bail!(
                    "{bad:?} is not an origin (scheme://host[:port], e.g. https://shop.example.com)"
                );
            }
            let key = store
                .create_widget_key(NewWidgetKey {
                    name,
                    allowed_origins: origins,
                    identity_required,
                })
                .await?;
            println!("widget key:      {}", key.key);
            println!("identity secret: {}", key.identity_secret);
            println!();
            println!("Embed the chat with:");
            println!(
                "  <script src=\"https://YOUR-TANDEM-HOST/widget.js\" data-widget-key=\"{}\" async></script>",
                key.key
            );
            println!(
                "Keep the identity secret on your server: it signs users' ids (HMAC-SHA256, hex) for data-user-hash."
            );
        }
        WidgetCommand::List => {
            for key in store.widget_keys().await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    key.key,
                    key.name,
                    if key.identity_required {
                        "verified users only"
                    } else {
                        "anyone"
                    },
                    key.allowed_origins.join(" ")
                );
            }
        }
        WidgetCommand::Revoke { key } => {
            if !store.revoke_widget_key(&key).await? {
                bail!("no live widget key {key:?}");
            }
            println!("revoked {key}");
        }
    }
    Ok(())
}

/// The new password: asked twice on a terminal, else one line of stdin.
fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Again: ")?;
        if first != second {
            bail!("the passwords differ");
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
