//! Shared agent logins, kept on the host: a Claude subscription login (access + refresh
//! token, as `claude /login` leaves them in `~/.claude/.credentials.json`) is stored as
//! the encrypted secret `claude-login` and refreshed here before it expires, so every
//! workspace's agents use one login through the model gateway and none ever holds it.

use std::time::Duration;

use kraal_store::{ClaudeLogin, SecretKey, Store};
use serde::Deserialize;

/// Claude Code's public OAuth client.
pub const CLAUDE_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// Refresh this long before the access token expires.
const MARGIN_MS: i64 = 5 * 60 * 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// Refreshes `login` at `url` (the OAuth token endpoint).
async fn refresh(
    http: &reqwest::Client,
    url: &str,
    login: &ClaudeLogin,
) -> Result<ClaudeLogin, String> {
    let resp = http
        .post(url)
        .json(&serde_json::json!({
            "grant_type": "refresh_token",
            "refresh_token": login.refresh_token,
            "client_id": CLAUDE_CLIENT_ID,
        }))
        .send()
        .await
        .map_err(|e| format!("token endpoint unreachable: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!(
            "token endpoint answered {status}: {}",
            body.chars().take(300).collect::<String>()
        ));
    }
    let t: TokenResponse = resp
        .json()
        .await
        .map_err(|e| format!("token endpoint answered nonsense: {e}"))?;
    Ok(ClaudeLogin {
        access_token: t.access_token,
        refresh_token: t
            .refresh_token
            .unwrap_or_else(|| login.refresh_token.clone()),
        expires_at: now_ms() + t.expires_in.unwrap_or(3600) * 1000,
    })
}

/// Keeps the stored Claude login fresh: checks every few seconds, refreshes when it is
/// about to expire, and retries failures with backoff.
pub fn spawn_refresher(store: Store, key: SecretKey, url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = match reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("no HTTP client for login refresh: {e}");
                return;
            }
        };
        let mut backoff = Duration::from_secs(5);
        loop {
            let mut wait = Duration::from_secs(5);
            if let Some(login) = store.claude_login(&key)
                && login.expires_at - now_ms() < MARGIN_MS
            {
                match refresh(&http, &url, &login).await {
                    Ok(new) => match store.put_claude_login(&key, &new, "login:claude") {
                        Ok(()) => {
                            let _ = store.audit(
                                "daemon",
                                "token.refresh",
                                "claude",
                                &format!("valid for {} s", (new.expires_at - now_ms()) / 1000),
                            );
                            tracing::info!("Claude login refreshed");
                            backoff = Duration::from_secs(5);
                        }
                        Err(e) => tracing::warn!("cannot store the refreshed Claude login: {e}"),
                    },
                    Err(e) => {
                        tracing::warn!("refreshing the Claude login failed: {e}");
                        let _ = store.audit("daemon", "token.refresh.failed", "claude", &e);
                        wait = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(300));
                    }
                }
            }
            tokio::time::sleep(wait).await;
        }
    })
}
