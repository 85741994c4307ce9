//! Delivery to push services (RFC 8030): one POST per message with its TTL, urgency and
//! topic, the VAPID authorization, the encrypted body. The [`Dispatcher`] takes jobs
//! without ever blocking the caller (a full queue drops the job and counts it), sends
//! them concurrently with a per-request timeout, retries what the push service or the
//! network says may succeed later (429, 5xx, connection errors; `Retry-After` honoured)
//! with exponential backoff, and reports subscriptions the service says are gone
//! (404, 410) so they can be deleted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::sync::{Semaphore, mpsc};

use crate::{PushError, SubscriptionKeys, VapidKey, encrypt};

/// How soon a push service should deliver (RFC 8030 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    VeryLow,
    Low,
    Normal,
    High,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

/// One message for one subscription.
#[derive(Debug, Clone)]
pub struct Job<K> {
    /// Who the subscription is, for [`Outcome`]s.
    pub key: K,
    pub endpoint: String,
    pub keys: SubscriptionKeys,
    /// The plaintext (encrypted once, before the first attempt).
    pub payload: Vec<u8>,
    /// How long the push service keeps the message for an offline device.
    pub ttl_secs: u32,
    pub urgency: Urgency,
    /// A newer message with the same topic replaces an undelivered older one (at most 32
    /// base64url characters).
    pub topic: Option<String>,
}

/// What one POST to a push service came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// 201 (or another 2xx): the service took it.
    Accepted,
    /// 404 or 410: the subscription no longer exists.
    Gone,
    /// Worth trying again (429, 5xx, network), after the service's `Retry-After` if given.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Refused for good (400, 401, 403, 413…).
    Rejected { status: u16, body: String },
}

/// Signs and sends single messages.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    vapid: VapidKey,
    subject: String,
}

impl Sender {
    /// `subject` is the contact push services may use (`mailto:` or `https:`).
    pub fn new(vapid: VapidKey, subject: &str, timeout: Duration) -> Result<Self, PushError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Sender {
            client,
            vapid,
            subject: subject.to_owned(),
        })
    }

    pub fn vapid(&self) -> &VapidKey {
        &self.vapid
    }

    /// One attempt with an already encrypted `body`.
    pub async fn post<K>(&self, job: &Job<K>, body: Vec<u8>) -> Result<Delivery, PushError> {
        let auth = self.vapid.authorization(&job.endpoint, &self.subject)?;
        let mut req = self
            .client
            .post(&job.endpoint)
            .header("TTL", job.ttl_secs.to_string())
            .header("Urgency", job.urgency.as_str())
            .header("Content-Encoding", "aes128gcm")
            .header("Content-Type", "application/octet-stream")
            .header("Authorization", auth)
            .body(body);
        if let Some(t) = &job.topic {
            req = req.header("Topic", t.as_str());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Delivery::Retry {
                    after: None,
                    why: crate_error_chain(&e),
                });
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Ok(match status {
            s if s.is_success() => Delivery::Accepted,
            StatusCode::NOT_FOUND | StatusCode::GONE => Delivery::Gone,
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => Delivery::Retry {
                after: retry_after,
                why: format!("push service answered {s}"),
            },
            s => {
                let body: String = resp
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                Delivery::Rejected {
                    status: s.as_u16(),
                    body,
                }
            }
        })
    }
}

fn crate_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How a job ended, for the owner of the subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<K> {
    Delivered {
        key: K,
    },
    /// The push service said the subscription is gone: delete it.
    Gone {
        key: K,
    },
    /// Given up (refused, or still failing after every retry).
    Failed {
        key: K,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Jobs waiting at most; more are dropped.
    pub queue: usize,
    /// Deliveries in flight at most.
    pub concurrency: usize,
    /// Attempts per job, the first one included.
    pub attempts: u32,
    /// Wait before the second attempt; doubles after each one.
    pub backoff: Duration,
    /// Longest wait between attempts (also caps `Retry-After`).
    pub max_backoff: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            queue: 1024,
            concurrency: 16,
            attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Counters of a dispatcher's life.
#[derive(Debug, Default)]
pub struct Stats {
    pub queued: AtomicU64,
    pub dropped: AtomicU64,
    pub delivered: AtomicU64,
    pub retries: AtomicU64,
    pub gone: AtomicU64,
    pub failed: AtomicU64,
}

/// Sends jobs in the background; cheap to clone.
pub struct Dispatcher<K> {
    tx: mpsc::Sender<Job<K>>,
    stats: Arc<Stats>,
}

impl<K> Clone for Dispatcher<K> {
    fn clone(&self) -> Self {
        Dispatcher {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<K: Clone + Send + Sync + 'static> Dispatcher<K> {
    /// Starts the dispatcher's task; `on_outcome` hears how every job ended.
    pub fn start(
        sender: Sender,
        config: DispatcherConfig,
        on_outcome: impl Fn(Outcome<K>) + Send + Sync + 'static,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job<K>>(config.queue.max(1));
        let stats = Arc::new(Stats::default());
        let on_outcome = Arc::new(on_outcome);
        let limit = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let st = stats.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let (sender, config, st, on_outcome) = (
                    sender.clone(),
                    config.clone(),
                    st.clone(),
                    on_outcome.clone(),
                );
                tokio::spawn(async move {
                    let _permit = permit;
                    let outcome = deliver(&sender, &config, &st, job).await;
                    match &outcome {
                        Outcome::Delivered { .. } => &st.delivered,
                        Outcome::Gone { .. } => &st.gone,
                        Outcome::Failed { .. } => &st.failed,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    on_outcome(outcome);
                });
            }
        });
        Dispatcher { tx, stats }
    }

    /// Queues a job; `false` (and counted as dropped) when the queue is full. Never waits.
    pub fn push(&self, job: Job<K>) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

async fn deliver<K: Clone>(
    sender: &Sender,
    config: &DispatcherConfig,
    stats: &Stats,
    job: Job<K>,
) -> Outcome<K> {
    let key = job.key.clone();
    let body = match encrypt(&job.keys, &job.payload) {
        Ok(b) => b,
        Err(e) => {
            return Outcome::Failed {
                key,
                reason: e.to_string(),
            };
        }
    };
    let mut wait = config.backoff;
    let mut last = String::new();
    for attempt in 1..=config.attempts.max(1) {
        match sender.post(&job, body.clone()).await {
            Ok(Delivery::Accepted) => return Outcome::Delivered { key },
            Ok(Delivery::Gone) => return Outcome::Gone { key },
            Ok(Delivery::Rejected { status, body }) => {
                return Outcome::Failed {
                    key,
                    reason: format!("push service refused the message ({status}): {body}"),
                };
            }
            Ok(Delivery::Retry { after, why }) => {
                last = why;
                if attempt < config.attempts {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    let pause = after.unwrap_or(wait).min(config.max_backoff);
                    tokio::time::sleep(pause).await;
                    wait = (wait * 2).min(config.max_backoff);
                }
            }
            Err(e) => {
                return Outcome::Failed {
                    key,
                    reason: e.to_string(),
                };
            }
        }
    }
    Outcome::Failed {
        key,
        reason: format!("gave up after {} attempts: {last}", config.attempts),
    }
}
