//! Budgets where every model request passes: the model gateway's spend recorded in the
//! store, and the check that holds a workspace's requests while the daily cap or its own
//! cap (a task's workspace: the task's cap) is reached, announced once per held request.

use kraal_core::WorkspaceId;
use kraal_proxy::{Metered, Spending};
use kraal_store::{BudgetRecord, SpendTotal, Store};

use crate::services::NoticeSlot;

pub struct StoreSpending {
    pub store: Store,
    pub notices: NoticeSlot,
}

/// Why `spent` is over `cap`, if it is.
pub fn over(cap: &BudgetRecord, spent: &SpendTotal, what: &str, raise: &str) -> Option<String> {
    if cap.usd_reached(spent) {
        return Some(format!(
            "{what} budget of ${:.4} is spent (${:.4} so far); raise it with `{raise} --usd N`, or remove it with `kraal budget rm`",
            cap.usd.unwrap_or_default(),
            spent.usd
        ));
    }
    if cap.tokens_reached(spent) {
        return Some(format!(
            "{what} budget of {} tokens is spent ({} so far); raise it with `{raise} --tokens N`",
            cap.tokens.unwrap_or_default(),
            spent.tokens()
        ));
    }
    None
}

impl Spending for StoreSpending {
    fn record(&self, m: Metered) {
        if let Err(e) = self.store.add_spend(
            &m.workspace,
            m.provider,
            &m.model,
            m.usage.input_tokens,
            m.usage.output_tokens,
            m.usd,
        ) {
            tracing::warn!(workspace = %m.workspace, "cannot record model spend: {e}");
        }
    }

    fn over_cap(&self, workspace: &str) -> Option<String> {
        if let Ok(Some(cap)) = self.store.budget("day")
            && let Ok(spent) = self.store.day_spend(&kraal_store::utc_day())
            && let Some(r) = over(&cap, &spent, "today's", "kraal budget set --day")
        {
            return Some(r);
        }
        if let Ok(Some(cap)) = self.store.budget(&format!("workspace:{workspace}"))
            && let Ok(spent) = self.store.workspace_spend(workspace)
        {
            let name = WorkspaceId::parse(workspace)
                .ok()
                .and_then(|id| self.store.get(&id).ok().flatten())
                .map(|w| w.name.to_string())
                .unwrap_or_else(|| workspace.to_owned());
            return over(
                &cap,
                &spent,
                &format!("workspace {name}'s"),
                &format!("kraal budget set --workspace {name}"),
            );
        }
        None
    }

    fn held(&self, workspace: &str, reason: &str) {
        let Ok(id) = WorkspaceId::parse(workspace) else {
            return;
        };
        let _ = self
            .store
            .add_event(&id, "warn", &format!("model request held: {reason}"));
        if let Some(tx) = self.notices.get() {
            let _ = tx.send(kraal_engine::Notice::BudgetHeld {
                workspace: id,
                reason: reason.to_owned(),
            });
        }
    }
}
