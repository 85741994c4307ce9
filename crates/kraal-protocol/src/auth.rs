//! Challenge-response authentication of the host to the guest agent.
//!
//! The guest sends a random nonce; the host answers with HMAC-SHA256(token, nonce). The
//! token itself never crosses the link, so a process that can sniff the private link
//! cannot replay it.

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failed: wrong token")]
    BadMac,
    #[error("authentication failed: malformed answer")]
    Malformed,
}

/// The guest's greeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub version: u32,
    pub nonce: String,
}

impl Challenge {
    pub fn new() -> Self {
        let mut n = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut n);
        Challenge {
            version: crate::PROTOCOL_VERSION,
            nonce: hex::encode(n),
        }
    }
}

impl Default for Challenge {
    fn default() -> Self {
        Self::new()
    }
}

pub fn compute_mac(token: &str, nonce: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("hmac accepts any key length");
    mac.update(nonce.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub fn verify_mac(token: &str, nonce: &str, answer: &str) -> Result<(), AuthError> {
    let expected = compute_mac(token, nonce);
    if answer.len() != expected.len() {
        return Err(AuthError::Malformed);
    }
    if bool::from(expected.as_bytes().ct_eq(answer.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::BadMac)
    }
}
