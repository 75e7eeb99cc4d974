//! `proofctl admin keys ...`: API keys, managed in the cluster's database directly — which is also
//! how the first admin key comes to exist, before any key could authorise an RPC.

use anyhow::Result;
use chrono::Utc;
use clap::Subcommand;
use proofjobs_pipeline::state::Db;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// API keys: bearer credentials, each bound to a requester.
    Keys {
        /// The cluster's PostgreSQL.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
        database_url: Option<String>,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (it is shown only this once).
    Create {
        /// The requester the key speaks for: its proofs, its quotas.
        #[arg(long)]
        requester: String,
        /// Admin keys see every requester's proofs and may use ProofRequestUpdate.
        #[arg(long)]
        admin: bool,
        /// The key stops working after this many days (default: no expiry).
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List keys (ids, requesters, state; never the secrets).
    List,
    /// Revoke a key by its id (the part after `pj_` in `keys list`); it is refused at once.
    Revoke { id: String },
}

pub async fn run(command: AdminCommand) -> Result<()> {
    let AdminCommand::Keys { database_url, command } = command;
    let database_url = database_url
        .ok_or_else(|| anyhow::anyhow!("admin commands work on the cluster's database: give --database-url or DATABASE_URL"))?;
    let db = Db::connect(&database_url, 2).await?;
    db.migrate().await?;
    let result = keys(&db, command).await;
    db.close().await;
    result
}

async fn keys(db: &Db, command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Create { requester, admin, expires_in_days, description } => {
            let expires_at = expires_in_days.map(|days| Utc::now() + chrono::Duration::days(days.into()));
            let (row, key) = db.create_key(&requester, admin, expires_at, &description).await?;
            eprintln!(
                "created key {} for requester {:?}{}{}; it is shown only now:",
                row.id,
                row.requester,
                if row.admin { " (admin)" } else { "" },
                row.expires_at.map(|t| format!(", expires {}", t.to_rfc3339())).unwrap_or_default()
            );
            println!("{key}");
        }
        KeysCommand::List => {
            println!("{:<14} {:<24} {:<6} {:<9} {:<26} description", "id", "requester", "admin", "state", "expires");
            for row in db.list_keys().await? {
                let state = match (row.revoked_at, row.expires_at) {
                    (Some(_), _) => "revoked",
                    (None, Some(t)) if t <= Utc::now() => "expired",
                    _ => "active",
                };
                let expires = row.expires_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
                println!("{:<14} {:<24} {:<6} {:<9} {:<26} {}", row.id, row.requester, row.admin, state, expires, row.description);
            }
        }
        KeysCommand::Revoke { id } => {
            let found = db.revoke_key(&id).await?;
            anyhow::ensure!(found, "no key with id {id:?}");
            println!("revoked key {id}");
        }
    }
    Ok(())
}
