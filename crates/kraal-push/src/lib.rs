//! Web Push: what a daemon needs to wake a locked phone. The application server's
//! identity is a P-256 key pair (VAPID, RFC 8292) that signs a short-lived JWT per push
//! service; each message is encrypted for one browser subscription (RFC 8291, the
//! `aes128gcm` content coding of RFC 8188) and POSTed to the subscription's endpoint
//! (RFC 8030). Delivery happens on its own tasks with retries and backoff, so whoever
//! produces notifications never waits for a push service.

mod deliver;
mod ece;
mod vapid;

pub use deliver::{Delivery, Dispatcher, DispatcherConfig, Job, Outcome, Sender, Stats, Urgency};
pub use ece::{MAX_PLAINTEXT, SubscriptionKeys, encrypt, encrypt_with};
pub use vapid::VapidKey;

use base64::Engine as _;

/// Why a push could not be prepared or sent.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("subscription key {field} is not valid: {reason}")]
    BadKey { field: &'static str, reason: String },
    #[error("push endpoint {endpoint:?} is not usable: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("the message is {len} bytes; a push message holds at most {MAX_PLAINTEXT}")]
    TooLarge { len: usize },
    #[error("VAPID key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("encryption failed")]
    Crypto,
    #[error("sending to the push service failed")]
    Http(#[from] reqwest::Error),
}

/// URL-safe base64 without padding (what Web Push uses for keys and JWTs).
pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Decodes URL-safe base64 with or without padding (browsers send either).
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .ok()
}

/// Checks that `endpoint` is where a push may go: an absolute `https://` URL, or
/// `http://` to a loopback address (a push service on the same machine, as in tests).
/// Returns its origin (`scheme://host[:port]`), which is the VAPID audience.
pub fn endpoint_origin(endpoint: &str) -> Result<String, PushError> {
    let bad = |reason: &str| PushError::BadEndpoint {
        endpoint: endpoint.chars().take(200).collect(),
        reason: reason.to_owned(),
    };
    if endpoint.len() > 2048 {
        return Err(bad("longer than 2048 characters"));
    }
    let url = reqwest::Url::parse(endpoint).map_err(|e| bad(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it must not carry credentials"));
    }
    let host = url.host().ok_or_else(|| bad("it has no host"))?;
    let loopback = match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => a.is_loopback(),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(bad("push services are reached over https")),
        other => return Err(bad(&format!("scheme {other:?} is not https"))),
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_or_loopback() {
        assert_eq!(
            endpoint_origin("https://fcm.googleapis.com/fcm/send/abc").unwrap(),
            "https://fcm.googleapis.com"
        );
        assert_eq!(
            endpoint_origin("http://127.0.0.1:8123/push/1").unwrap(),
            "http://127.0.0.1:8123"
        );
        for bad in [
            "http://push.example.com/x",
            "ftp://push.example.com/x",
            "not a url",
            "https://user:pw@push.example.com/x",
            "file:///etc/passwd",
        ] {
            assert!(endpoint_origin(bad).is_err(), "{bad}");
        }
        let long = format!("https://push.example.com/{}", "a".repeat(3000));
        assert!(endpoint_origin(&long).is_err());
    }

    #[test]
    fn base64_accepts_padding_and_round_trips() {
        assert_eq!(unb64("AQID").unwrap(), vec![1, 2, 3]);
        assert_eq!(unb64("AQI=").unwrap(), vec![1, 2]);
        assert_eq!(unb64(&b64(&[250, 251, 252])).unwrap(), vec![250, 251, 252]);
        assert!(unb64("***").is_none());
    }
}
