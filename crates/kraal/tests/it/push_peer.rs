//! A Web Push service on loopback, written here from the RFCs (not kraal's code): it takes
//! POSTs to `/push/{name}` as a push service does (RFC 8030), checks the VAPID
//! authorization (RFC 8292: an ES256 JWT for this origin, signed by the key it names),
//! decrypts the `aes128gcm` body with the subscription's private key and auth secret
//! (RFC 8291) and keeps the plaintext. What it answers depends on the name: `gone…`
//! answers 410, `dead…` never answers, anything else 201. Decrypted messages can also be
//! read back as JSON at `GET /mailbox/{name}` (for the browser test).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine as _;
use p256::ecdsa::signature::Verifier;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::Value;

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .expect("base64url")
}

/// A browser's subscription keys.
pub struct Keys {
    secret: p256::SecretKey,
    pub auth: [u8; 16],
}

impl Keys {
    pub fn new() -> Keys {
        let mut auth = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut auth);
        Keys {
            secret: p256::SecretKey::random(&mut rand::thread_rng()),
            auth,
        }
    }

    pub fn p256dh(&self) -> String {
        b64(self.secret.public_key().to_encoded_point(false).as_bytes())
    }

    pub fn auth_b64(&self) -> String {
        b64(&self.auth)
    }

    /// RFC 8291 §3: undoes the encryption of one `aes128gcm` record.
    pub fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        if body.len() < 21 {
            return Err("body shorter than the aes128gcm header".into());
        }
        let salt = &body[..16];
        let rs = u32::from_be_bytes(body[16..20].try_into().unwrap());
        let idlen = body[20] as usize;
        let as_public = &body[21..21 + idlen];
        let sealed = &body[21 + idlen..];
        if rs < 18 || sealed.len() > rs as usize {
            return Err(format!(
                "record size {rs} does not hold {} bytes",
                sealed.len()
            ));
        }
        let peer = p256::PublicKey::from_sec1_bytes(as_public).map_err(|e| e.to_string())?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        let ua_public = self.secret.public_key().to_encoded_point(false);
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(ua_public.as_bytes());
        info.extend_from_slice(as_public);
        let mut ikm = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(&self.auth), shared.raw_secret_bytes())
            .expand(&info, &mut ikm)
            .map_err(|e| e.to_string())?;
        let prk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), &ikm);
        let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .unwrap();
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .unwrap();
        let mut plain = aes_gcm::Aes128Gcm::new_from_slice(&cek)
            .unwrap()
            .decrypt(aes_gcm::Nonce::from_slice(&nonce), sealed)
            .map_err(|_| "the record does not decrypt with the subscription's keys".to_string())?;
        while plain.last() == Some(&0) {
            plain.pop();
        }
        if plain.pop() != Some(2) {
            return Err("the last record does not end with the 0x02 delimiter".into());
        }
        Ok(plain)
    }
}

/// RFC 8292: checks `vapid t=JWT, k=KEY` for `audience`; returns the claims.
pub fn verify_vapid(header: &str, audience: &str) -> Result<Value, String> {
    let rest = header
        .strip_prefix("vapid ")
        .ok_or("not a vapid authorization")?;
    let mut t = None;
    let mut k = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("t=") {
            t = Some(v);
        } else if let Some(v) = part.strip_prefix("k=") {
            k = Some(v);
        }
    }
    let (t, k) = (t.ok_or("no t=")?, k.ok_or("no k=")?);
    let parts: Vec<&str> = t.split('.').collect();
    if parts.len() != 3 {
        return Err("the JWT does not have three parts".into());
    }
    let head: Value = serde_json::from_slice(&unb64(parts[0])).map_err(|e| e.to_string())?;
    if head["alg"] != "ES256" {
        return Err(format!("JWT alg {}", head["alg"]));
    }
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&unb64(k)).map_err(|e| e.to_string())?;
    let sig = p256::ecdsa::Signature::from_slice(&unb64(parts[2])).map_err(|e| e.to_string())?;
    key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .map_err(|_| "the JWT signature does not verify".to_string())?;
    let claims: Value = serde_json::from_slice(&unb64(parts[1])).map_err(|e| e.to_string())?;
    if claims["aud"] != audience {
        return Err(format!("aud {} is not {audience}", claims["aud"]));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims["exp"].as_u64().ok_or("no exp")?;
    if exp <= now || exp > now + 24 * 3600 {
        return Err(format!("exp {exp} is not within 24 h from now ({now})"));
    }
    let sub = claims["sub"].as_str().unwrap_or("");
    if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
        return Err(format!("sub {sub:?} is not a mailto: or https: contact"));
    }
    Ok(claims)
}

/// One message the service took.
#[derive(Debug, Clone)]
pub struct Received {
    pub name: String,
    pub headers: HashMap<String, String>,
    /// The decrypted payload, parsed.
    pub payload: Value,
    pub vapid_claims: Value,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<String, Arc<Keys>>,
    received: Vec<Received>,
    /// Requests that could not be taken (bad crypto, bad VAPID): each one fails the test.
    problems: Vec<String>,
    /// Requests per name, including ones answered with an error or never answered.
    hits: HashMap<String, usize>,
}

pub struct PushPeer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

type Shared = Arc<Mutex<Inner>>;

async fn take(
    State((inner, origin)): State<(Shared, String)>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let keys = {
        let mut i = inner.lock().unwrap();
        *i.hits.entry(name.clone()).or_default() += 1;
        i.keys.get(&name).cloned()
    };
    if name.starts_with("dead") {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if name.starts_with("gone") {
        return StatusCode::GONE.into_response();
    }
    let fail = |why: String| {
        inner
            .lock()
            .unwrap()
            .problems
            .push(format!("{name}: {why}"));
        (StatusCode::BAD_REQUEST, why).into_response()
    };
    let Some(keys) = keys else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let h: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    if h.get("content-encoding").map(String::as_str) != Some("aes128gcm") {
        return fail("Content-Encoding is not aes128gcm".into());
    }
    if h.get("ttl").and_then(|t| t.parse::<u64>().ok()).is_none() {
        return fail("no TTL".into());
    }
    let claims = match verify_vapid(
        h.get("authorization").map(String::as_str).unwrap_or(""),
        &origin,
    ) {
        Ok(c) => c,
        Err(e) => return fail(format!("VAPID: {e}")),
    };
    let plain = match keys.decrypt(&body) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let payload: Value = match serde_json::from_slice(&plain) {
        Ok(v) => v,
        Err(e) => return fail(format!("payload is not JSON: {e}")),
    };
    inner.lock().unwrap().received.push(Received {
        name,
        headers: h,
        payload,
        vapid_claims: claims,
    });
    (StatusCode::CREATED, [("location", "/message/1")]).into_response()
}

async fn mailbox(
    State((inner, _)): State<(Shared, String)>,
    Path(name): Path<String>,
) -> axum::Json<Vec<Value>> {
    let i = inner.lock().unwrap();
    axum::Json(
        i.received
            .iter()
            .filter(|r| r.name == name)
            .map(|r| r.payload.clone())
            .collect(),
    )
}

impl PushPeer {
    pub fn start() -> PushPeer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let inner: Shared = Arc::default();
        let app = Router::new()
            .route("/push/{name}", post(take))
            .route("/mailbox/{name}", get(mailbox))
            .with_state((inner.clone(), format!("http://{addr}")));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        PushPeer {
            addr,
            inner,
            _stop: tx,
        }
    }

    /// A subscription endpoint named `name`, with fresh keys.
    pub fn subscription(&self, name: &str) -> (String, Arc<Keys>) {
        let k = Arc::new(Keys::new());
        self.inner
            .lock()
            .unwrap()
            .keys
            .insert(name.to_owned(), k.clone());
        (format!("http://{}/push/{name}", self.addr), k)
    }

    pub fn received(&self, name: &str) -> Vec<Received> {
        let i = self.inner.lock().unwrap();
        assert!(
            i.problems.is_empty(),
            "the push service refused messages: {:?}",
            i.problems
        );
        i.received
            .iter()
            .filter(|r| r.name == name)
            .cloned()
            .collect()
    }

    pub fn hits(&self, name: &str) -> usize {
        self.inner
            .lock()
            .unwrap()
            .hits
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Waits (at most a minute) for a message to `name` whose payload satisfies `cond`.
    pub fn wait_for(&self, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(r) = self.received(name).into_iter().find(|r| cond(&r.payload)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no push to {name} for {what}; got {:?}",
                self.received(name)
                    .iter()
                    .map(|r| r.payload.clone())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
