//! Unit tests of the scripted model server over real HTTP.

use super::*;
use serde_json::{Value, json};
use std::net::SocketAddr;

async fn post(addr: SocketAddr, body: Value) -> (u16, String) {
    post_to(addr, "/v1/messages", body).await
}

async fn post_to(addr: SocketAddr, path: &str, body: Value) -> (u16, String) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn turns_stream_in_order_then_run_out() {
    let s = Scenario::from_json(
        r#"{"turns": [
            {"respond": [{"text": "Hello world", "chunk": 5}, {"tool_use": {"name": "Bash", "input": {"command": "ls"}}}]},
            {"error": {"status": 529, "type": "overloaded_error", "message": "busy"}}
        ]}"#,
    )
    .unwrap();
    let m = ScriptedModel::start(s).unwrap();
    let (st, body) = post(m.addr, json!({"model": "m1", "messages": []})).await;
    assert_eq!(st, 200);
    let deltas: Vec<&str> = body.lines().filter(|l| l.contains("text_delta")).collect();
    assert_eq!(deltas.len(), 3, "Hello world in 5-char chunks: {body}");
    assert!(body.contains(r#""stop_reason":"tool_use""#));
    assert!(
        body.contains(r#""partial_json":"{\"command\":\"ls\"}""#),
        "{body}"
    );
    assert!(body.contains("toolu_scripted_0001"));
    let (st, body) = post(m.addr, json!({"model": "m1"})).await;
    assert_eq!(st, 529);
    assert!(body.contains("overloaded_error"));
    let (st, body) = post(m.addr, json!({})).await;
    assert_eq!(st, 500);
    assert!(body.contains("scenario exhausted"));
    assert_eq!(m.requests().len(), 3);
    assert_eq!(m.remaining(), 0);
}

#[tokio::test]
async fn responses_api_streams_text_and_function_calls() {
    let s = Scenario::from_json(
        r#"{"turns": [
            {"respond": [{"text": "Running it.", "chunk": 4}, {"tool_use": {"name": "shell", "input": {"command": ["ls"]}}}]},
            {"error": {"status": 400, "type": "invalid_request_error", "message": "bad"}}
        ]}"#,
    )
    .unwrap();
    let m = ScriptedModel::start(s).unwrap();
    let (st, body) = post_to(
        m.addr,
        "/v1/responses",
        json!({"model": "gpt", "stream": true, "input": []}),
    )
    .await;
    assert_eq!(st, 200);
    let names: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"response.created"));
    assert_eq!(names.last(), Some(&"response.completed"));
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "response.output_text.delta")
            .count(),
        3
    );
    assert!(names.contains(&"response.function_call_arguments.done"));
    assert!(
        body.contains(r#""arguments":"{\"command\":[\"ls\"]}""#),
        "{body}"
    );
    let seqs: Vec<u64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["sequence_number"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "sequence numbers have no gaps"
    );
    let (st, body) = post_to(m.addr, "/v1/responses", json!({})).await;
    assert_eq!(st, 400);
    assert!(body.contains("invalid_request_error"));
}
