//! `proofctl admin keys|quota|usage|prices|network|runner-login ...`: API keys, requesters' quotas,
//! usage and prices, the prover-network allowlist, and the runners' database login, managed in the cluster's database directly —
//! which is also how the first admin key comes to exist, before any key could authorise an RPC.

use anyhow::Result;
use chrono::Utc;
use clap::{Args, Subcommand};
use proofjobs_pipeline::state::{validate_requester_name, Db, RequesterRow, DEFAULT_QUOTA};

#[derive(Args)]
pub struct AdminArgs {
    /// The cluster's PostgreSQL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// API keys: bearer credentials, each bound to a requester.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Requesters' quotas and weights; the requester `*` holds the defaults.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// What each requester's proofs used since a time: task- and runner-seconds on CPU and GPU
    /// runners and the estimated cost at the pools' prices.
    Usage {
        /// Proofs created since then: RFC 3339 (`2026-11-30T00:00:00Z`) or an age (`90m`, `24h`, `7d`).
        #[arg(long, default_value = "24h")]
        since: String,
    },
    /// Set the hourly prices that turn runner-seconds into cost (shown with the current ones).
    Prices {
        /// USD per hour of a CPU runner.
        #[arg(long)]
        cpu_usd_per_hour: Option<f64>,
        /// USD per hour of a GPU runner.
        #[arg(long)]
        gpu_usd_per_hour: Option<f64>,
    },
    /// The prover-network API's allowlist: which signer addresses may prove, as which requester.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Create (or give a new password to) the login role runner pods connect as: a member of
    /// `proofjobs_runner`, with rights on the rows of the proof whose token it presents only.
    /// Its URL goes into the runner Secret as `runner-database-url`.
    RunnerLogin {
        /// The role's name.
        #[arg(long, default_value = "proofjobs_runner_login")]
        role: String,
        /// Its password (from the environment, so it stays out of shell history and `ps`).
        #[arg(long, env = "PROOFJOBS_RUNNER_DB_PASSWORD", hide_env_values = true)]
        password: String,
    },
}

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Let the key behind `address` (0x + 40 hex digits, as `cast wallet address` prints it) use
    /// the network API as `requester`: its proofs, quotas and usage are that requester's.
    Allow {
        address: String,
        #[arg(long)]
        requester: String,
    },
}

#[derive(Subcommand)]
pub enum QuotaCommand {
    /// Set a requester's limits (`*`: the defaults every requester inherits). Fields not given
    /// keep their value; the dispatcher and the api apply the change on their next request.
    Set {
        requester: String,
        /// Share of contended GPUs relative to other requesters (1-1000; default 1).
        #[arg(long)]
        weight: Option<i32>,
        /// Proofs started and unfinished at once; more wait as `queued-over-quota`.
        #[arg(long)]
        max_in_flight: Option<i32>,
        /// GPU runner pods at once, all the requester's proofs together.
        #[arg(long)]
        max_gpu_runners: Option<i32>,
        /// The largest cycle limit a request may carry; requests naming none get this one.
        #[arg(long)]
        max_cycles: Option<i64>,
        /// How far ahead a request's deadline may be, in seconds.
        #[arg(long)]
        max_deadline_secs: Option<i64>,
        /// high | normal | low: who takes the next free GPU first, and the PriorityClass of the
        /// requester's stage pods (a `high` pod on a full pool preempts lower-priority ones).
        #[arg(long)]
        priority: Option<String>,
        /// Fields to set back to inheriting the default (or, on `*`, to no limit):
        /// weight, max_in_flight, max_gpu_runners, max_cycles, max_deadline_secs, priority.
        #[arg(long, value_delimiter = ',')]
        clear: Vec<String>,
    },
    /// Show the defaults and every requester's own settings.
    List,
    /// Remove a requester's own settings: it inherits every default again.
    Reset { requester: String },
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

pub async fn run(args: AdminArgs) -> Result<()> {
    let database_url = args
        .database_url
        .ok_or_else(|| anyhow::anyhow!("admin commands work on the cluster's database: give --database-url or DATABASE_URL"))?;
    let db = Db::connect(&database_url, 2).await?;
    db.migrate().await?;
    let result = match args.command {
        AdminCommand::Keys(command) => keys(&db, command).await,
        AdminCommand::Quota(command) => quota(&db, command).await,
        AdminCommand::Usage { since } => usage(&db, &since).await,
        AdminCommand::Prices { cpu_usd_per_hour, gpu_usd_per_hour } => prices(&db, cpu_usd_per_hour, gpu_usd_per_hour).await,
        AdminCommand::Network(NetworkCommand::Allow { address, requester }) => allow_address(&db, &address, &requester).await,
        AdminCommand::RunnerLogin { role, password } => db.set_runner_login(&role, &password, true).await.map(|created| {
            println!("role {role} {} (member of proofjobs_runner)", if created { "can log in" } else { "unchanged" });
        }),
    };
    db.close().await;
    result
}

async fn allow_address(db: &Db, address: &str, requester: &str) -> Result<()> {
    validate_requester_name(requester).map_err(anyhow::Error::msg)?;
    let bytes = parse_address(address).map_err(anyhow::Error::msg)?;
    db.allow_network_address(&bytes, requester).await?;
    println!("address {} proves as requester {requester}", address.to_lowercase());
    Ok(())
}

/// `0x` and 40 hex digits.
fn parse_address(address: &str) -> Result<Vec<u8>, String> {
    let digits = address.strip_prefix("0x").or_else(|| address.strip_prefix("0X")).unwrap_or(address);
    if digits.len() != 40 {
        return Err(format!("address {address:?} is not 0x and 40 hex digits"));
    }
    hex::decode(digits).map_err(|e| format!("address {address:?} is not hex: {e}"))
}

async fn usage(db: &Db, since: &str) -> Result<()> {
    let since = parse_since(since, Utc::now()).map_err(anyhow::Error::msg)?;
    let prices = db.prices().await?;
    let rows = db.usage_by_requester(since).await?;
    println!("proofs created since {}; prices: CPU ${}/h, GPU ${}/h", since.to_rfc3339(), prices.cpu_usd_per_hour, prices.gpu_usd_per_hour);
    println!(
        "{:<24} {:>7} {:>13} {:>13} {:>15} {:>15} {:>12}",
        "requester", "proofs", "cpu-task-s", "gpu-task-s", "cpu-runner-s", "gpu-runner-s", "est-cost-usd"
    );
    let line = |name: &str, proofs: i64, u: &proofjobs_pipeline::state::Usage| {
        println!(
            "{:<24} {:>7} {:>13.1} {:>13.1} {:>15.1} {:>15.1} {:>12.4}",
            name,
            proofs,
            u.cpu_task_secs,
            u.gpu_task_secs,
            u.cpu_runner_secs,
            u.gpu_runner_secs,
            u.estimated_cost_usd(&prices)
        )
    };
    let mut total = proofjobs_pipeline::state::Usage::default();
    let mut proofs = 0;
    for row in &rows {
        let u = &row.usage;
        line(if row.owner.is_empty() { "(none)" } else { row.owner.as_str() }, row.proofs, u);
        proofs += row.proofs;
        total.cpu_task_secs += u.cpu_task_secs;
        total.gpu_task_secs += u.gpu_task_secs;
        total.cpu_runner_secs += u.cpu_runner_secs;
        total.gpu_runner_secs += u.gpu_runner_secs;
    }
    line("total", proofs, &total);
    Ok(())
}

async fn prices(db: &Db, cpu: Option<f64>, gpu: Option<f64>) -> Result<()> {
    for (pool, price) in [("cpu", cpu), ("gpu", gpu)] {
        if let Some(price) = price {
            db.set_price(pool, price).await?;
        }
    }
    let prices = db.prices().await?;
    println!("CPU runner ${}/h, GPU runner ${}/h", prices.cpu_usd_per_hour, prices.gpu_usd_per_hour);
    Ok(())
}

/// `--since`: an RFC 3339 time, or an age before `now` (`90m`, `24h`, `7d`).
fn parse_since(text: &str, now: chrono::DateTime<Utc>) -> Result<chrono::DateTime<Utc>, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = number.parse().map_err(|_| format!("--since {text:?}: expected an RFC 3339 time or an age like 90m, 24h, 7d"))?;
    let age = match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => return Err(format!("--since {text:?}: the unit must be s, m, h or d")),
    };
    Ok(now - age)
}

async fn quota(db: &Db, command: QuotaCommand) -> Result<()> {
    match command {
        QuotaCommand::Set { requester, weight, max_in_flight, max_gpu_runners, max_cycles, max_deadline_secs, priority, clear } => {
            let row = RequesterRow {
                name: requester,
                weight,
                max_in_flight,
                max_gpu_runners,
                max_cycles,
                max_deadline_secs,
                priority,
                updated_at: None,
            };
            let clear: Vec<&str> = clear.iter().map(|f| f.trim()).filter(|f| !f.is_empty()).collect();
            let row = db.set_requester(&row, &clear).await?;
            print_requesters(&[row]);
        }
        QuotaCommand::List => print_requesters(&db.list_requesters().await?),
        QuotaCommand::Reset { requester } => {
            anyhow::ensure!(db.remove_requester(&requester).await?, "requester {requester:?} has no settings of its own");
            println!("{requester} inherits the defaults again");
        }
    }
    Ok(())
}

fn print_requesters(rows: &[RequesterRow]) {
    let show = |v: Option<i64>, unset: &str| v.map(|v| v.to_string()).unwrap_or_else(|| unset.to_string());
    println!(
        "{:<24} {:>6} {:>13} {:>15} {:>14} {:>17} {:>9}",
        "requester", "weight", "max-in-flight", "max-gpu-runners", "max-cycles", "max-deadline-secs", "priority"
    );
    for r in rows {
        // On the defaults row an unset field means no limit; elsewhere it means the default.
        let unset = if r.name == DEFAULT_QUOTA { "-" } else { "(default)" };
        println!(
            "{:<24} {:>6} {:>13} {:>15} {:>14} {:>17} {:>9}",
            r.name,
            show(r.weight.map(i64::from), unset),
            show(r.max_in_flight.map(i64::from), unset),
            show(r.max_gpu_runners.map(i64::from), unset),
            show(r.max_cycles, unset),
            show(r.max_deadline_secs, unset),
            r.priority.clone().unwrap_or_else(|| if r.name == DEFAULT_QUOTA { "normal".into() } else { unset.to_string() })
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_since("24h", now).unwrap().to_rfc3339(), "2026-11-29T12:00:00+00:00");
        assert_eq!(parse_since("90m", now).unwrap().to_rfc3339(), "2026-11-30T10:30:00+00:00");
        assert_eq!(parse_since("2026-11-01T00:00:00Z", now).unwrap().to_rfc3339(), "2026-11-01T00:00:00+00:00");
        for bad in ["", "h", "24", "3w", "yesterday"] {
            assert!(parse_since(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses_are_0x_and_40_hex_digits() {
        assert_eq!(parse_address("0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266").unwrap().len(), 20);
        for bad in ["", "0x", "0x1234", "f39fd6e51aad88f6f4ce6ab8827279cfffb9226", "0xz39fd6e51aad88f6f4ce6ab8827279cfffb92266"] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }
}
