//! The dispatcher against a push service on loopback that answers from a script: retries
//! with backoff until accepted, gone subscriptions reported, refusals not retried, a
//! service that never answers costs only its timeout, and a full queue never blocks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kraal_push::*;

#[derive(Default)]
struct Service {
    answers: Mutex<VecDeque<u16>>,
    seen: Mutex<Vec<(HeaderMap, usize)>>,
}

async fn push(State(s): State<Arc<Service>>, h: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    s.seen.lock().unwrap().push((h, body.len()));
    let code = s.answers.lock().unwrap().pop_front().unwrap_or(201);
    if code == 0 {
        // Never answer.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    StatusCode::from_u16(code).unwrap()
}

async fn service(answers: &[u16]) -> (String, Arc<Service>) {
    let s = Arc::new(Service::default());
    s.answers.lock().unwrap().extend(answers);
    let app = Router::new()
        .route("/push/{id}", post(push))
        .with_state(s.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}/push/sub"), s)
}

fn keys() -> SubscriptionKeys {
    SubscriptionKeys::from_b64(
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        "BTBZMqHH6r4Tts7J_aSIgg",
    )
    .unwrap()
}

fn job(endpoint: &str, key: u32) -> Job<u32> {
    Job {
        key,
        endpoint: endpoint.to_owned(),
        keys: keys(),
        payload: br#"{"title":"t"}"#.to_vec(),
        ttl_secs: 60,
        urgency: Urgency::High,
        topic: Some("session-1".into()),
    }
}

fn dispatcher(
    timeout_ms: u64,
) -> (
    Dispatcher<u32>,
    tokio::sync::mpsc::UnboundedReceiver<Outcome<u32>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sender = Sender::new(
        VapidKey::generate(),
        "mailto:t@example.com",
        Duration::from_millis(timeout_ms),
    )
    .unwrap();
    let config = DispatcherConfig {
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        attempts: 4,
        ..Default::default()
    };
    (
        Dispatcher::start(sender, config, move |o| {
            let _ = tx.send(o);
        }),
        rx,
    )
}

#[tokio::test]
async fn retries_until_accepted_and_sends_the_rfc_headers() {
    let (url, svc) = service(&[503, 429, 201]).await;
    let (d, mut rx) = dispatcher(2000);
    assert!(d.push(job(&url, 7)));
    let out = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, Outcome::Delivered { key: 7 });
    let seen = svc.seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "two retries, then accepted");
    let (h, len) = &seen[2];
    assert_eq!(h["ttl"], "60");
    assert_eq!(h["urgency"], "high");
    assert_eq!(h["topic"], "session-1");
    assert_eq!(h["content-encoding"], "aes128gcm");
    assert!(h["authorization"].to_str().unwrap().starts_with("vapid t="));
    assert_eq!(*len, 86 + 13 + 1 + 16, "header, payload, delimiter, tag");
    assert_eq!(
        d.stats().retries.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn gone_is_reported_and_refusals_are_not_retried() {
    let (url, svc) = service(&[410, 400]).await;
    let (d, mut rx) = dispatcher(2000);
    d.push(job(&url, 1));
    assert_eq!(rx.recv().await.unwrap(), Outcome::Gone { key: 1 });
    d.push(job(&url, 2));
    match rx.recv().await.unwrap() {
        Outcome::Failed { key: 2, reason } => assert!(reason.contains("400"), "{reason}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(
        svc.seen.lock().unwrap().len(),
        2,
        "no retry of a 410 or a 400"
    );
}

#[tokio::test]
async fn a_silent_service_costs_its_timeout_and_a_full_queue_never_blocks() {
    let (url, _svc) = service(&[0, 0, 0, 0]).await;
    let (d, mut rx) = dispatcher(200);
    let t0 = Instant::now();
    d.push(job(&url, 3));
    match tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Outcome::Failed { key: 3, reason } => assert!(reason.contains("4 attempts"), "{reason}"),
        o => panic!("{o:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // Pushing far more than the queue holds returns at once.
    let t0 = Instant::now();
    let accepted = (0..5000).filter(|i| d.push(job(&url, *i))).count();
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert!(accepted < 5000, "the queue is bounded");
    assert!(d.stats().dropped.load(std::sync::atomic::Ordering::Relaxed) > 0);
}
