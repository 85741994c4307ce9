//! The CLI's client for the daemon API, over the Unix socket or TCP with a bearer token.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use kraal_api::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

pub type Conn = Either<UnixStream, TcpStream>;

#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the kraal daemon at {endpoint}")]
    DaemonDown {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("talking to the daemon failed: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: Endpoint,
    token: Option<String>,
}

impl Client {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        Client { endpoint, token }
    }

    pub async fn connect(&self) -> Result<Conn, ClientError> {
        let down = |source| ClientError::DaemonDown {
            endpoint: self.endpoint.to_string(),
            source,
        };
        Ok(match &self.endpoint {
            Endpoint::Unix(p) => Either::Left(UnixStream::connect(p).await.map_err(down)?),
            Endpoint::Tcp(a) => Either::Right(TcpStream::connect(a).await.map_err(down)?),
        })
    }

    fn host(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(_) => "localhost".to_owned(),
            Endpoint::Tcp(a) => a.clone(),
        }
    }

    /// Sends a request; returns the response of a 2xx answer, an `Api` error otherwise.
    async fn request(
        &self,
        method: Method,
        path: &str,
        accept: Option<&str>,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let (bytes, ctype) = body.unwrap_or((Vec::new(), "application/json"));
        self.request_with(method, path, accept, ctype, Full::new(Bytes::from(bytes)))
            .await
    }

    /// [`Client::request`] with any request body (streamed uploads).
    async fn request_with<B>(
        &self,
        method: Method,
        path: &str,
        accept: Option<&str>,
        ctype: &str,
        body: B,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let conn = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.host());
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let req = req
            .header("content-type", ctype)
            .body(body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let body = collect(resp).await?;
            return Err(api_error(status, &body));
        }
        Ok(resp)
    }

    /// GETs `path` and returns the body as it arrives (downloads).
    pub async fn get_stream(&self, path: &str) -> Result<hyper::body::Incoming, ClientError> {
        Ok(self
            .request(Method::GET, path, None, None)
            .await?
            .into_body())
    }

    /// POSTs a streamed body of type `ctype` and returns the answer as it arrives.
    pub async fn post_body<B>(
        &self,
        path: &str,
        ctype: &str,
        body: B,
    ) -> Result<hyper::body::Incoming, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Ok(self
            .request_with(
                Method::POST,
                path,
                Some("application/x-ndjson"),
                ctype,
                body,
            )
            .await?
            .into_body())
    }

    /// Sends a request; returns the status and body of a 2xx answer, an `Api` error otherwise.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let resp = self.request(method, path, None, body).await?;
        let status = resp.status();
        Ok((status, collect(resp).await?))
    }

    /// Opens a long-lived GET (a server-sent-event stream) and returns its body as it
    /// arrives.
    pub async fn open_stream(&self, path: &str) -> Result<hyper::body::Incoming, ClientError> {
        let resp = self
            .request(Method::GET, path, Some("text/event-stream"), None)
            .await?;
        Ok(resp.into_body())
    }

    /// POSTs JSON and returns the body as it arrives (for streamed answers).
    pub async fn post_stream<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<hyper::body::Incoming, ClientError> {
        let b = (
            serde_json::to_vec(body).expect("serializes"),
            "application/json",
        );
        let resp = self
            .request(Method::POST, path, Some("application/x-ndjson"), Some(b))
            .await?;
        Ok(resp.into_body())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (_, body) = self.raw(Method::GET, path, None).await?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("bad response: {e}")))
    }

    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let b = body.map(|b| {
            (
                serde_json::to_vec(b).expect("serializes"),
                "application/json",
            )
        });
        let (_, body) = self.raw(method, path, b).await?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("bad response: {e}")))
    }

    /// Opens a WebSocket to `path`. HTTP errors before the upgrade come back as `Api`.
    pub async fn websocket(
        &self,
        path: &str,
    ) -> Result<tokio_tungstenite::WebSocketStream<Conn>, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let conn = self.connect().await?;
        let mut req = format!("ws://{}{path}", self.host())
            .into_client_request()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(t) = &self.token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("valid header"),
            );
        }
        match tokio_tungstenite::client_async(req, conn).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                match serde_json::from_slice::<ApiError>(&body) {
                    Ok(e) => Err(ClientError::Api {
                        status,
                        code: e.code,
                        message: e.message,
                    }),
                    Err(_) => Err(ClientError::Api {
                        status,
                        code: "http_error".into(),
                        message: format!("HTTP {status}"),
                    }),
                }
            }
            Err(e) => Err(ClientError::Protocol(e.to_string())),
        }
    }
}

async fn collect(resp: hyper::Response<hyper::body::Incoming>) -> Result<Bytes, ClientError> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .to_bytes())
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let (code, message) = match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => (e.code, e.message),
        Err(_) => (
            "http_error".to_owned(),
            format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
        ),
    };
    ClientError::Api {
        status: status.as_u16(),
        code,
        message,
    }
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads an NDJSON response (image builds, backups, restores) and hands each line, with
/// its newline, to `on_line`; an error from it ends the reading.
pub async fn ndjson_lines(
    mut body: hyper::body::Incoming,
    mut on_line: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("the daemon closed the stream: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            on_line(&line)?;
        }
    }
    Ok(())
}
