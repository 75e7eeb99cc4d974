//! The `requesters` table: quotas and weights per requester, with the row named `*` as the
//! defaults every requester inherits field by field. One place answers "what may this requester
//! use?" for the api (cycle limit, deadline) and the dispatcher (proofs in flight, GPU runners,
//! share of contended GPUs, priority).

use std::collections::HashMap;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use super::Db;

/// The name of the row that holds the defaults.
pub const DEFAULTS: &str = "*";

/// One row as stored: `None` fields inherit the defaults (or, on the defaults row, mean "no limit").
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct RequesterRow {
    pub name: String,
    pub weight: Option<i32>,
    pub max_in_flight: Option<i32>,
    pub max_gpu_runners: Option<i32>,
    pub max_cycles: Option<i64>,
    pub max_deadline_secs: Option<i64>,
    /// `high`, `normal` or `low` (see [`Priority`]).
    pub priority: Option<String>,
    #[sqlx(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

/// How urgent a requester's proofs are. Under the dispatcher's GPU cap a higher priority takes
/// the next free GPU first; on the nodes, stage pods run under the matching PriorityClass, so a
/// `high` pod that finds its pool full makes the scheduler preempt lower-priority pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    /// The PriorityClass its stage pods run under (`manifests/base/priority-classes.yaml`);
    /// `normal` pods take the cluster's default.
    pub fn class_name(self) -> Option<&'static str> {
        match self {
            Priority::Low => Some("proofjobs-low"),
            Priority::Normal => None,
            Priority::High => Some("proofjobs-high"),
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Priority::Low, Priority::Normal, Priority::High]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown priority {s:?} (expected high, normal or low)"))
    }
}

/// What a requester may use, its own settings over the defaults. `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub weight: u32,
    pub max_in_flight: Option<u32>,
    pub max_gpu_runners: Option<u32>,
    pub max_cycles: Option<u64>,
    pub max_deadline_secs: Option<u64>,
    pub priority: Priority,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            weight: 1,
            max_in_flight: None,
            max_gpu_runners: None,
            max_cycles: None,
            max_deadline_secs: None,
            priority: Priority::Normal,
        }
    }
}

impl Quota {
    /// `own` over `defaults`, field by field.
    pub fn resolve(own: Option<&RequesterRow>, defaults: Option<&RequesterRow>) -> Quota {
        let pick = |f: fn(&RequesterRow) -> Option<i64>| own.and_then(f).or_else(|| defaults.and_then(f)).map(|v| v.max(0) as u64);
        Quota {
            weight: pick(|r| r.weight.map(i64::from)).unwrap_or(1).max(1) as u32,
            max_in_flight: pick(|r| r.max_in_flight.map(i64::from)).map(|v| v as u32),
            max_gpu_runners: pick(|r| r.max_gpu_runners.map(i64::from)).map(|v| v as u32),
            max_cycles: pick(|r| r.max_cycles),
            max_deadline_secs: pick(|r| r.max_deadline_secs),
            // The stored value passed the column's CHECK; anything else reads as normal.
            priority: own
                .and_then(|r| r.priority.as_deref())
                .or_else(|| defaults.and_then(|r| r.priority.as_deref()))
                .and_then(|p| p.parse().ok())
                .unwrap_or_default(),
        }
    }
}

/// Every requester's quota, resolved, plus the one anyone without a row gets.
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    pub by_requester: HashMap<String, Quota>,
    pub default: Quota,
}

impl Quotas {
    pub fn of(&self, requester: &str) -> Quota {
        self.by_requester.get(requester).copied().unwrap_or(self.default)
    }
}

/// Requester names end up in Kubernetes label values, so they follow that syntax: 1–63
/// characters of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub fn validate_requester_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "requester name {name:?} is not valid: use 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

impl Db {
    /// Creates or changes a requester's row (`*`: the defaults). Fields left `None` keep their
    /// stored value; `clear` names fields to set back to inheriting.
    pub async fn set_requester(&self, row: &RequesterRow, clear: &[&str]) -> Result<RequesterRow> {
        if row.name != DEFAULTS {
            validate_requester_name(&row.name).map_err(anyhow::Error::msg)?;
        }
        for field in clear {
            anyhow::ensure!(
                ["weight", "max_in_flight", "max_gpu_runners", "max_cycles", "max_deadline_secs", "priority"].contains(field),
                "unknown quota field {field:?}"
            );
        }
        if let Some(priority) = &row.priority {
            priority.parse::<Priority>().map_err(anyhow::Error::msg)?;
        }
        let cleared = |f: &str| clear.contains(&f);
        sqlx::query_as(
            "INSERT INTO requesters (name, weight, max_in_flight, max_gpu_runners, max_cycles, max_deadline_secs, priority)
             VALUES ($1, $2, $3, $4, $5, $6, $12)
             ON CONFLICT (name) DO UPDATE SET
                 weight = CASE WHEN $7 THEN NULL ELSE COALESCE(EXCLUDED.weight, requesters.weight) END,
                 max_in_flight = CASE WHEN $8 THEN NULL ELSE COALESCE(EXCLUDED.max_in_flight, requesters.max_in_flight) END,
                 max_gpu_runners = CASE WHEN $9 THEN NULL ELSE COALESCE(EXCLUDED.max_gpu_runners, requesters.max_gpu_runners) END,
                 max_cycles = CASE WHEN $10 THEN NULL ELSE COALESCE(EXCLUDED.max_cycles, requesters.max_cycles) END,
                 max_deadline_secs = CASE WHEN $11 THEN NULL ELSE COALESCE(EXCLUDED.max_deadline_secs, requesters.max_deadline_secs) END,
                 priority = CASE WHEN $13 THEN NULL ELSE COALESCE(EXCLUDED.priority, requesters.priority) END,
                 updated_at = now()
             RETURNING *",
        )
        .bind(&row.name)
        .bind(row.weight)
        .bind(row.max_in_flight)
        .bind(row.max_gpu_runners)
        .bind(row.max_cycles)
        .bind(row.max_deadline_secs)
        .bind(cleared("weight"))
        .bind(cleared("max_in_flight"))
        .bind(cleared("max_gpu_runners"))
        .bind(cleared("max_cycles"))
        .bind(cleared("max_deadline_secs"))
        .bind(&row.priority)
        .bind(cleared("priority"))
        .fetch_one(&self.pool)
        .await
        .with_context(|| format!("setting the quota of {}", row.name))
    }

    /// Removes a requester's row (it inherits every default again); false when there was none.
    pub async fn remove_requester(&self, name: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM requesters WHERE name = $1").bind(name).execute(&self.pool).await?.rows_affected();
        Ok(n > 0)
    }

    pub async fn list_requesters(&self) -> Result<Vec<RequesterRow>> {
        Ok(sqlx::query_as("SELECT * FROM requesters ORDER BY name = '*' DESC, name").fetch_all(&self.pool).await?)
    }

    /// Every requester's resolved quota.
    pub async fn quotas(&self) -> Result<Quotas> {
        let rows = self.list_requesters().await?;
        let defaults = rows.iter().find(|r| r.name == DEFAULTS);
        let by_requester =
            rows.iter().filter(|r| r.name != DEFAULTS).map(|r| (r.name.clone(), Quota::resolve(Some(r), defaults))).collect();
        Ok(Quotas { by_requester, default: Quota::resolve(None, defaults) })
    }

    /// One requester's resolved quota.
    pub async fn quota_of(&self, requester: &str) -> Result<Quota> {
        let rows: Vec<RequesterRow> =
            sqlx::query_as("SELECT * FROM requesters WHERE name = $1 OR name = '*'").bind(requester).fetch_all(&self.pool).await?;
        let find = |n: &str| rows.iter().find(|r| r.name == n);
        Ok(Quota::resolve(find(requester).filter(|_| requester != DEFAULTS), find(DEFAULTS)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requesters_own_settings_win_field_by_field() {
        let defaults = RequesterRow {
            name: "*".into(),
            max_in_flight: Some(10),
            max_cycles: Some(1_000),
            priority: Some("low".into()),
            ..Default::default()
        };
        let own = RequesterRow { name: "a".into(), weight: Some(3), max_in_flight: Some(2), ..Default::default() };
        let q = Quota::resolve(Some(&own), Some(&defaults));
        let expected = Quota {
            weight: 3,
            max_in_flight: Some(2),
            max_gpu_runners: None,
            max_cycles: Some(1_000),
            max_deadline_secs: None,
            priority: Priority::Low,
        };
        assert_eq!(q, expected);
        assert_eq!(Quota::resolve(None, None), Quota::default());
        assert_eq!(Quota::resolve(None, Some(&defaults)).max_in_flight, Some(10));
        let urgent = RequesterRow { name: "b".into(), priority: Some("high".into()), ..Default::default() };
        assert_eq!(Quota::resolve(Some(&urgent), Some(&defaults)).priority, Priority::High);
    }

    #[test]
    fn priorities_order_and_name_their_classes() {
        assert!(Priority::High > Priority::Normal && Priority::Normal > Priority::Low);
        assert_eq!("high".parse::<Priority>(), Ok(Priority::High));
        assert!("urgent".parse::<Priority>().is_err());
        assert_eq!(Priority::Normal.class_name(), None);
        assert_eq!(Priority::High.class_name(), Some("proofjobs-high"));
    }

    #[test]
    fn requester_names_are_label_safe() {
        for good in ["a", "team-a", "Team_A.prod", "0x1234abcd"] {
            assert!(validate_requester_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "a b", "a/b", "*", &"x".repeat(64)] {
            assert!(validate_requester_name(bad).is_err(), "{bad:?}");
        }
    }
}
