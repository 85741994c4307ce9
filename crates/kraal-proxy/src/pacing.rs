//! Pacing of model requests that share one credential (one API key, one subscription
//! login): the gateway reads the provider's rate-limit headers from every answer
//! (Anthropic's `anthropic-ratelimit-*`, the subscription's `anthropic-ratelimit-unified-*`,
//! OpenAI's `x-ratelimit-*`, `retry-after` on a 429) and, when a window has no requests
//! left, holds the next ones until it resets instead of letting every parallel session run
//! into the limit at once. Nothing fails here: a request waits, then goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, StatusCode};

/// The longest a request is held for one window (a reset further away is not trusted).
const MAX_HOLD: Duration = Duration::from_secs(300);

/// What one credential's limits look like now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateWindow {
    /// `anthropic`, `openai` or `google`.
    pub provider: String,
    /// `api key …abcd` or `subscription` (never the credential itself).
    pub credential: String,
    pub requests_limit: Option<u64>,
    pub requests_remaining: Option<u64>,
    /// When the request window resets.
    pub requests_reset: Option<SystemTime>,
    pub tokens_limit: Option<u64>,
    pub tokens_remaining: Option<u64>,
    pub tokens_reset: Option<SystemTime>,
    /// The subscription's window (`allowed`, `allowed_warning`, `rejected`).
    pub unified_status: Option<String>,
    pub unified_reset: Option<SystemTime>,
    /// Utilization of the subscription's windows by name (`5h`, `7d`), 0 to 1.
    pub unified_utilization: Vec<(String, f64)>,
    /// Requests sent so far, and of those held here first.
    pub requests: u64,
    pub paced: u64,
    /// Answers that were 429 (the limit was hit despite pacing: another client shares it).
    pub limited: u64,
    /// Requests waiting here now.
    pub waiting: u64,
    /// Requests on their way now.
    pub in_flight: u64,
}

#[derive(Default)]
struct Window {
    info: RateWindow,
    /// Requests left in the window by our own count (the header's, less what was sent
    /// since), and when the window resets.
    left: Option<u64>,
    reset: Option<Instant>,
    /// After a 429: nothing goes before this.
    blocked_until: Option<Instant>,
    /// A new window's requests are all spent and no answer has told when it resets yet:
    /// since when (requests wait for an answer, at most [`BLIND_WAIT`]).
    blind_since: Option<Instant>,
}

/// How long requests wait for an answer that tells a spent window's reset.
const BLIND_WAIT: Duration = Duration::from_secs(5);

/// Rate-limit windows by credential.
#[derive(Default)]
pub struct Pacer {
    windows: Mutex<HashMap<String, Window>>,
}

/// A request admitted through the pacer; dropping it ends its in-flight count.
pub struct Permit {
    pacer: Arc<Pacer>,
    key: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(w) = self.pacer.windows.lock().unwrap().get_mut(&self.key) {
            w.info.in_flight = w.info.in_flight.saturating_sub(1);
        }
    }
}

/// The pacer's key and label for a credential: a digest, never the value.
pub fn credential_key(provider: &str, credential: &str, subscription: bool) -> (String, String) {
    use sha2::Digest;
    let d = sha2::Sha256::digest(credential.as_bytes());
    let key = format!("{provider}:{}", hex::encode(&d[..8]));
    let label = if subscription {
        "subscription".to_owned()
    } else {
        let tail: String = credential
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("api key …{tail}")
    };
    (key, label)
}

impl Pacer {
    pub fn new() -> Arc<Self> {
        Arc::new(Pacer::default())
    }

    /// Waits until a request on `key` may go: not while a 429's `retry-after` runs, and
    /// not while the window has no requests left (until it resets). Returns how long it
    /// waited.
    pub async fn admit(
        self: &Arc<Self>,
        key: &str,
        provider: &str,
        label: &str,
    ) -> (Permit, Duration) {
        let t0 = Instant::now();
        let mut counted_wait = false;
        loop {
            let wait = {
                let mut all = self.windows.lock().unwrap();
                let w = all.entry(key.to_owned()).or_insert_with(|| Window {
                    info: RateWindow {
                        provider: provider.to_owned(),
                        credential: label.to_owned(),
                        ..Default::default()
                    },
                    ..Default::default()
                });
                let now = Instant::now();
                if w.reset.is_some_and(|r| r <= now) {
                    // A new window: as many requests as the limit (those waiting for the
                    // reset must not all go at once); the next answer tells the rest.
                    w.left = w.info.requests_limit;
                    w.reset = None;
                }
                let blind = w.left == Some(0) && w.reset.is_none();
                if !blind {
                    w.blind_since = None;
                } else if w.blind_since.is_none() {
                    w.blind_since = Some(now);
                }
                let wait = match (w.blocked_until, w.left, w.reset) {
                    (Some(b), _, _) if b > now => Some(b - now),
                    (_, Some(0), Some(r)) => Some(r - now),
                    (_, Some(0), None) if w.blind_since.is_some_and(|t| now < t + BLIND_WAIT) => {
                        Some(Duration::from_millis(50))
                    }
                    _ => None,
                };
                match wait {
                    None => {
                        if counted_wait {
                            w.info.waiting = w.info.waiting.saturating_sub(1);
                        }
                        w.blocked_until = None;
                        w.left = w.left.map(|l| l.saturating_sub(1));
                        w.info.requests += 1;
                        w.info.in_flight += 1;
                        None
                    }
                    Some(d) => {
                        if !counted_wait {
                            counted_wait = true;
                            w.info.paced += 1;
                            w.info.waiting += 1;
                        }
                        Some(d.min(MAX_HOLD))
                    }
                }
            };
            match wait {
                None => {
                    return (
                        Permit {
                            pacer: self.clone(),
                            key: key.to_owned(),
                        },
                        t0.elapsed(),
                    );
                }
                // Woken a little after the reset, in small steps so a fresher answer
                // (another request's) is seen.
                Some(d) => tokio::time::sleep(d.min(Duration::from_millis(250)) + jitter()).await,
            }
        }
    }

    /// Reads an answer's rate-limit headers into the window of `key`.
    pub fn observe(&self, key: &str, status: StatusCode, h: &HeaderMap) {
        let mut all = self.windows.lock().unwrap();
        let Some(w) = all.get_mut(key) else {
            return;
        };
        let now = Instant::now();
        let wall = SystemTime::now();
        let num = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let anthropic = h
            .keys()
            .any(|k| k.as_str().starts_with("anthropic-ratelimit-"));
        let (rl, rr, rs, tl, tr, ts) = if anthropic {
            (
                num("anthropic-ratelimit-requests-limit"),
                num("anthropic-ratelimit-requests-remaining"),
                text("anthropic-ratelimit-requests-reset").and_then(|v| parse_reset(v, wall)),
                num("anthropic-ratelimit-tokens-limit"),
                num("anthropic-ratelimit-tokens-remaining"),
                text("anthropic-ratelimit-tokens-reset").and_then(|v| parse_reset(v, wall)),
            )
        } else {
            (
                num("x-ratelimit-limit-requests"),
                num("x-ratelimit-remaining-requests"),
                text("x-ratelimit-reset-requests").and_then(|v| parse_reset(v, wall)),
                num("x-ratelimit-limit-tokens"),
                num("x-ratelimit-remaining-tokens"),
                text("x-ratelimit-reset-tokens").and_then(|v| parse_reset(v, wall)),
            )
        };
        let i = &mut w.info;
        i.requests_limit = rl.or(i.requests_limit);
        i.tokens_limit = tl.or(i.tokens_limit);
        if tr.is_some() {
            i.tokens_remaining = tr;
            i.tokens_reset = ts;
        }
        let reset = rs
            .and_then(|at| at.duration_since(wall).ok())
            .map(|d| now + d);
        // An answer to a request sent in a window that has reset since (its reset lies in
        // the past) tells nothing about the window now: our own count stands.
        let stale = rs.is_some() && reset.is_none();
        if let Some(r) = rr.filter(|_| !stale) {
            i.requests_remaining = Some(r);
            i.requests_reset = rs;
            // Our own count goes down with every request sent; a header can only make it
            // lower (answers to earlier requests arrive late), unless the window is new.
            let new_window = match (reset, w.reset) {
                (Some(a), Some(b)) => a > b + Duration::from_millis(500),
                _ => true,
            };
            let left = r.saturating_sub(i.in_flight.saturating_sub(1));
            w.left = Some(if new_window {
                left
            } else {
                w.left.map_or(left, |l| l.min(left))
            });
            w.reset = reset.or(w.reset);
        }
        if let Some(s) = text("anthropic-ratelimit-unified-status") {
            i.unified_status = Some(s.to_owned());
            i.unified_reset =
                text("anthropic-ratelimit-unified-reset").and_then(|v| parse_reset(v, wall));
            i.unified_utilization = h
                .iter()
                .filter_map(|(k, v)| {
                    let name = k
                        .as_str()
                        .strip_prefix("anthropic-ratelimit-unified-")?
                        .strip_suffix("-utilization")?;
                    let u = v.to_str().ok()?.trim().parse::<f64>().ok()?;
                    Some((name.to_owned(), u))
                })
                .collect();
            i.unified_utilization.sort_by(|a, b| a.0.cmp(&b.0));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            i.limited += 1;
            let retry = text("retry-after")
                .and_then(|v| parse_reset(v, wall))
                .and_then(|at| at.duration_since(wall).ok())
                .or_else(|| w.reset.map(|r| r.saturating_duration_since(now)))
                .unwrap_or(Duration::from_secs(1));
            w.blocked_until = Some(now + retry.min(MAX_HOLD));
        }
    }

    /// Every window seen so far.
    pub fn windows(&self) -> Vec<RateWindow> {
        let mut v: Vec<RateWindow> = self
            .windows
            .lock()
            .unwrap()
            .values()
            .map(|w| w.info.clone())
            .collect();
        v.sort_by(|a, b| (&a.provider, &a.credential).cmp(&(&b.provider, &b.credential)));
        v
    }
}

/// Up to 50 ms, so the requests a reset releases do not all leave in the same instant.
fn jitter() -> Duration {
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(u64::from(n % 50))
}

/// A reset as the providers send it: RFC 3339 (Anthropic), seconds (`retry-after`, and
/// epoch seconds for the subscription's reset), or a Go duration (`6m0s`, `1.5s`, `20ms`;
/// OpenAI).
fn parse_reset(v: &str, now: SystemTime) -> Option<SystemTime> {
    let v = v.trim();
    if let Ok(n) = v.parse::<u64>() {
        // Epoch seconds are large; a delay in seconds is not.
        return Some(if n > 1_000_000_000 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(n)
        } else {
            now + Duration::from_secs(n)
        });
    }
    if let Ok(t) = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339) {
        let secs = t.unix_timestamp_nanos();
        return (secs >= 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(secs as u64));
    }
    go_duration(v).map(|d| now + d)
}

fn go_duration(v: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = v.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += n * unit;
        any = true;
    }
    (any && num.is_empty() && total.is_finite()).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn resets_parse_in_each_providers_syntax() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s: &str| parse_reset(s, now).unwrap().duration_since(now).unwrap();
        assert_eq!(at("6m0s"), Duration::from_secs(360));
        assert_eq!(at("1.5s"), Duration::from_millis(1500));
        assert_eq!(at("20ms"), Duration::from_millis(20));
        assert_eq!(at("30"), Duration::from_secs(30));
        assert_eq!(at("1800000060"), Duration::from_secs(60));
        assert_eq!(at("2027-01-15T08:00:20Z"), {
            let t = time::macros::datetime!(2027-01-15 08:00:20 UTC).unix_timestamp() as u64;
            Duration::from_secs(t - 1_800_000_000)
        });
        for bad in ["soon", "5x", "", "m"] {
            assert!(parse_reset(bad, now).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_empty_window_holds_requests_until_it_resets() {
        let p = Pacer::new();
        let (permit, waited) = p.admit("k", "openai", "api key …abcd").await;
        assert!(waited < Duration::from_millis(50));
        p.observe(
            "k",
            StatusCode::OK,
            &headers(&[
                ("x-ratelimit-limit-requests", "2".into()),
                ("x-ratelimit-remaining-requests", "0".into()),
                ("x-ratelimit-reset-requests", "600ms".into()),
            ]),
        );
        drop(permit);
        let (_p2, waited) = p.admit("k", "openai", "api key …abcd").await;
        assert!(
            waited >= Duration::from_millis(500),
            "went before the reset: {waited:?}"
        );
        let w = &p.windows()[0];
        assert_eq!((w.requests, w.paced, w.requests_limit), (2, 1, Some(2)));
        assert_eq!(w.credential, "api key …abcd");
    }

    /// An answer that was on its way while the window reset describes the old window; it
    /// must not leave the new one spent (the next request would then wait blind).
    #[tokio::test]
    async fn a_late_answer_from_a_window_that_has_reset_leaves_the_new_one_alone() {
        let p = Pacer::new();
        let at = |d: Duration| {
            time::OffsetDateTime::from(SystemTime::now() + d)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let answer = |remaining: &str, reset: &str| {
            headers(&[
                ("anthropic-ratelimit-requests-limit", "2".into()),
                ("anthropic-ratelimit-requests-remaining", remaining.into()),
                ("anthropic-ratelimit-requests-reset", reset.into()),
            ])
        };
        let old_reset = at(Duration::from_millis(200));
        let (p1, _) = p.admit("k", "anthropic", "api key …abcd").await;
        p.observe("k", StatusCode::OK, &answer("1", &old_reset));
        drop(p1);
        // The window's last request goes; its answer is slow.
        let (p2, _) = p.admit("k", "anthropic", "api key …abcd").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The window has reset: a request of the new one goes.
        let (p3, waited) = p.admit("k", "anthropic", "api key …abcd").await;
        assert!(waited < Duration::from_millis(100), "{waited:?}");
        // Now the old window's answer arrives: none left, reset in the past.
        p.observe("k", StatusCode::OK, &answer("0", &old_reset));
        drop(p2);
        let (_p4, waited) = p.admit("k", "anthropic", "api key …abcd").await;
        assert!(
            waited < Duration::from_millis(500),
            "the new window's second request waited {waited:?}"
        );
        drop(p3);
    }

    /// When a window resets, the requests that waited for it do not all go at once: no
    /// more than its limit before an answer tells what is left.
    #[tokio::test]
    async fn a_new_window_admits_no_more_than_its_limit_at_once() {
        let p = Pacer::new();
        let (permit, _) = p.admit("k", "anthropic", "api key …abcd").await;
        p.observe(
            "k",
            StatusCode::OK,
            &headers(&[
                ("anthropic-ratelimit-requests-limit", "2".into()),
                ("anthropic-ratelimit-requests-remaining", "0".into()),
                (
                    "anthropic-ratelimit-requests-reset",
                    time::OffsetDateTime::from(SystemTime::now() + Duration::from_millis(300))
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap(),
                ),
            ]),
        );
        drop(permit);
        // Five wait for the reset; only two may go before an answer comes.
        let admitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut held = Vec::new();
        for _ in 0..5 {
            let (p, admitted) = (p.clone(), admitted.clone());
            held.push(tokio::spawn(async move {
                let permit = p.admit("k", "anthropic", "api key …abcd").await;
                admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Held (in flight, unanswered) until the test ends.
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(permit);
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 2);
        // With no answer at all, the others go after the blind wait.
        tokio::time::sleep(BLIND_WAIT).await;
        assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 5);
        for h in held {
            h.abort();
        }
    }

    #[tokio::test]
    async fn a_429_holds_everyone_for_its_retry_after_and_the_subscription_is_shown() {
        let p = Pacer::new();
        let (a, _) = p.admit("s", "anthropic", "subscription").await;
        p.observe(
            "s",
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[
                ("retry-after", "1".into()),
                ("anthropic-ratelimit-unified-status", "rejected".into()),
                ("anthropic-ratelimit-unified-reset", "1900000000".into()),
                ("anthropic-ratelimit-unified-5h-utilization", "1.0".into()),
                ("anthropic-ratelimit-unified-7d-utilization", "0.42".into()),
            ]),
        );
        drop(a);
        let t0 = Instant::now();
        let both = futures::future::join(
            p.admit("s", "anthropic", "subscription"),
            p.admit("s", "anthropic", "subscription"),
        )
        .await;
        assert!(both.0.1 >= Duration::from_millis(900) && both.1.1 >= Duration::from_millis(900));
        assert!(t0.elapsed() < Duration::from_secs(3));
        let w = &p.windows()[0];
        assert_eq!(w.limited, 1);
        assert_eq!(w.unified_status.as_deref(), Some("rejected"));
        assert_eq!(
            w.unified_utilization,
            vec![("5h".to_owned(), 1.0), ("7d".to_owned(), 0.42)]
        );
        // Another credential is not held by this one's limit.
        let (_o, waited) = p.admit("other", "anthropic", "api key …wxyz").await;
        assert!(waited < Duration::from_millis(50));
    }

    #[test]
    fn the_label_never_holds_the_credential() {
        let (k, l) = credential_key("anthropic", "sk-ant-secret-value-1234", false);
        assert!(!k.contains("secret") && l == "api key …1234", "{k} {l}");
        let (_, l) = credential_key("anthropic", "oauth-token", true);
        assert_eq!(l, "subscription");
    }
}
