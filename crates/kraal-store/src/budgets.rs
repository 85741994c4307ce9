//! Spend through the model gateway (per workspace, UTC day, provider and model) and the
//! budget caps on it.

use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError, now};

/// A cap on spend.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRecord {
    /// `day` (the daemon per UTC day) or `workspace:<id>` (one workspace, all time).
    pub scope: String,
    pub usd: Option<f64>,
    pub tokens: Option<u64>,
    pub updated_at: String,
}

impl BudgetRecord {
    /// Its USD limit is spent.
    pub fn usd_reached(&self, spent: &SpendTotal) -> bool {
        self.usd.is_some_and(|u| spent.usd >= u)
    }

    /// Its token limit is spent.
    pub fn tokens_reached(&self, spent: &SpendTotal) -> bool {
        self.tokens.is_some_and(|t| spent.tokens() >= t)
    }

    /// One of its limits is spent: requests in its scope wait.
    pub fn reached(&self, spent: &SpendTotal) -> bool {
        self.usd_reached(spent) || self.tokens_reached(spent)
    }
}

/// Spend added up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpendTotal {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub usd: f64,
}

impl SpendTotal {
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// Today's date in UTC, as spend rows key it.
pub fn utc_day() -> String {
    let d = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn total(r: &rusqlite::Row<'_>) -> rusqlite::Result<SpendTotal> {
    Ok(SpendTotal {
        requests: r.get::<_, Option<i64>>(0)?.unwrap_or(0) as u64,
        input_tokens: r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64,
        output_tokens: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
        usd: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
    })
}

const SUMS: &str =
    "SELECT SUM(requests), SUM(input_tokens), SUM(output_tokens), SUM(usd) FROM spend";

impl Store {
    /// Adds one answer's usage to today's row of its workspace and model.
    pub fn add_spend(
        &self,
        workspace: &str,
        provider: &str,
        model: &str,
        input_tokens: u64,
        output_tokens: u64,
        usd: f64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO spend (workspace_id, day, provider, model, requests, input_tokens, output_tokens, usd)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7)
                 ON CONFLICT(workspace_id, day, provider, model) DO UPDATE SET
                   requests = requests + 1, input_tokens = input_tokens + excluded.input_tokens,
                   output_tokens = output_tokens + excluded.output_tokens, usd = usd + excluded.usd",
                params![
                    workspace,
                    utc_day(),
                    provider,
                    model,
                    input_tokens as i64,
                    output_tokens as i64,
                    usd
                ],
            )?;
            Ok(())
        })
    }

    /// Everything one workspace spent.
    pub fn workspace_spend(&self, workspace: &str) -> Result<SpendTotal, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("{SUMS} WHERE workspace_id = ?1"),
                [workspace],
                total,
            )?)
        })
    }

    /// Everything spent on a UTC day.
    pub fn day_spend(&self, day: &str) -> Result<SpendTotal, StoreError> {
        self.with(|c| Ok(c.query_row(&format!("{SUMS} WHERE day = ?1"), [day], total)?))
    }

    /// Spend per workspace (id → total), for the report.
    pub fn spend_by_workspace(&self) -> Result<Vec<(String, SpendTotal)>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT workspace_id, SUM(requests), SUM(input_tokens), SUM(output_tokens), SUM(usd)
                 FROM spend GROUP BY workspace_id ORDER BY SUM(usd) DESC",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        SpendTotal {
                            requests: r.get::<_, i64>(1)? as u64,
                            input_tokens: r.get::<_, i64>(2)? as u64,
                            output_tokens: r.get::<_, i64>(3)? as u64,
                            usd: r.get(4)?,
                        },
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Sets (replaces) a cap.
    pub fn set_budget(
        &self,
        scope: &str,
        usd: Option<f64>,
        tokens: Option<u64>,
    ) -> Result<BudgetRecord, StoreError> {
        let at = now();
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO budgets (scope, usd, tokens, updated_at) VALUES (?1, ?2, ?3, ?4)",
                params![scope, usd, tokens.map(|t| t as i64), at],
            )?;
            Ok(())
        })?;
        Ok(BudgetRecord {
            scope: scope.to_owned(),
            usd,
            tokens,
            updated_at: at,
        })
    }

    /// Removes a cap; whether there was one.
    pub fn remove_budget(&self, scope: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM budgets WHERE scope = ?1", [scope])? > 0))
    }

    pub fn budget(&self, scope: &str) -> Result<Option<BudgetRecord>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT scope, usd, tokens, updated_at FROM budgets WHERE scope = ?1",
                [scope],
                budget_row,
            )
            .optional()?)
        })
    }

    pub fn budgets(&self) -> Result<Vec<BudgetRecord>, StoreError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT scope, usd, tokens, updated_at FROM budgets ORDER BY scope")?;
            let rows = st
                .query_map([], budget_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }
}

fn budget_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BudgetRecord> {
    Ok(BudgetRecord {
        scope: r.get(0)?,
        usd: r.get(1)?,
        tokens: r.get::<_, Option<i64>>(2)?.map(|t| t as u64),
        updated_at: r.get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_adds_up_per_workspace_and_day_and_caps_are_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.add_spend("ws-a", "anthropic", "sonnet", 1000, 10, 0.01)
            .unwrap();
        s.add_spend("ws-a", "anthropic", "sonnet", 2000, 20, 0.02)
            .unwrap();
        s.add_spend("ws-b", "openai", "gpt-5", 5, 5, 0.5).unwrap();
        let a = s.workspace_spend("ws-a").unwrap();
        assert_eq!((a.requests, a.input_tokens, a.output_tokens), (2, 3000, 30));
        assert!((a.usd - 0.03).abs() < 1e-12);
        assert_eq!(s.workspace_spend("ws-none").unwrap(), SpendTotal::default());
        let day = s.day_spend(&utc_day()).unwrap();
        assert_eq!(day.requests, 3);
        assert_eq!(s.spend_by_workspace().unwrap()[0].0, "ws-b");
        s.set_budget("day", Some(1.0), None).unwrap();
        s.set_budget("day", Some(2.0), Some(100)).unwrap();
        let b = s.budget("day").unwrap().unwrap();
        assert_eq!((b.usd, b.tokens), (Some(2.0), Some(100)));
        assert!(s.remove_budget("day").unwrap());
        assert!(!s.remove_budget("day").unwrap());
        assert!(s.budgets().unwrap().is_empty());
    }
}
