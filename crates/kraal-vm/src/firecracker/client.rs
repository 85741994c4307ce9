//! HTTP/1.1 to Firecracker's API socket (hyper over a Unix stream): one request per
//! connection, errors carrying Firecracker's `fault_message`.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::api::Call;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the Firecracker API at {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Firecracker API {method} {path}: {message}")]
    Http {
        method: &'static str,
        path: String,
        message: String,
    },
    #[error("Firecracker API {method} {path} refused: {status}: {fault}")]
    Refused {
        method: &'static str,
        path: String,
        status: u16,
        fault: String,
    },
    #[error("Firecracker API {method} {path} did not answer within {secs} s")]
    Timeout {
        method: &'static str,
        path: String,
        secs: u64,
    },
}

/// Sends `call`; returns the response body (empty for 204).
pub async fn send(socket: &Path, call: &Call) -> Result<Vec<u8>, ApiError> {
    let limit = Duration::from_secs(60);
    tokio::time::timeout(limit, send_inner(socket, call))
        .await
        .map_err(|_| ApiError::Timeout {
            method: call.method,
            path: call.path.clone(),
            secs: limit.as_secs(),
        })?
}

async fn send_inner(socket: &Path, call: &Call) -> Result<Vec<u8>, ApiError> {
    let http = |e: &dyn std::fmt::Display| ApiError::Http {
        method: call.method,
        path: call.path.clone(),
        message: e.to_string(),
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ApiError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let body = if call.body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(call.body.to_string())
    };
    let req = hyper::Request::builder()
        .method(call.method)
        .uri(&call.path)
        .header("Host", "localhost")
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .body(Full::new(body))
        .map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| http(&e))?
        .to_bytes()
        .to_vec();
    if !status.is_success() {
        let fault = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["fault_message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(ApiError::Refused {
            method: call.method,
            path: call.path.clone(),
            status: status.as_u16(),
            fault,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stand-in API socket that records each raw request and answers 204, or 400 with a
    /// fault message for `/fail`.
    async fn serve(listener: tokio::net::UnixListener, n: usize) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..n {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let k = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..k]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some(h) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= h + 4 + len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            let answer = if text.starts_with("PUT /fail") {
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 38\r\n\r\n{\"fault_message\": \"drive is invalid\"}\n"
            } else {
                "HTTP/1.1 204 No Content\r\n\r\n"
            };
            s.write_all(answer.as_bytes()).await.unwrap();
            seen.push(text);
        }
        seen
    }

    #[tokio::test]
    async fn requests_reach_the_socket_and_faults_come_back() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("api.sock");
        let server = tokio::spawn(serve(tokio::net::UnixListener::bind(&sock).unwrap(), 2));
        let call = super::super::api::pause();
        assert!(send(&sock, &call).await.unwrap().is_empty());
        let fail = Call {
            method: "PUT",
            path: "/fail".into(),
            body: serde_json::json!({"drive_id": "x"}),
        };
        let e = send(&sock, &fail).await.unwrap_err().to_string();
        assert_eq!(
            e,
            "Firecracker API PUT /fail refused: 400: drive is invalid"
        );
        let seen = server.await.unwrap();
        assert!(seen[0].starts_with("PATCH /vm HTTP/1.1\r\n"), "{}", seen[0]);
        assert!(seen[0].ends_with("{\"state\":\"Paused\"}"), "{}", seen[0]);
        let e = send(&d.path().join("none.sock"), &call).await.unwrap_err();
        assert!(e.to_string().contains("cannot reach the Firecracker API"));
    }
}
