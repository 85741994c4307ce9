//! Message encryption for Web Push (RFC 8291): an ephemeral ECDH key agreement with the
//! browser's P-256 key, mixed with its authentication secret, gives a content key and
//! nonce for one `aes128gcm` record (RFC 8188) whose header carries the salt and the
//! ephemeral public key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand::RngCore;
use sha2::Sha256;

use crate::{PushError, unb64};

/// Record size written in the header; one record carries the whole message.
const RECORD_SIZE: u32 = 4096;

/// Largest plaintext that fits one record (record size minus the AEAD tag and the padding
/// delimiter). Push services accept at least 4096 bytes of body.
pub const MAX_PLAINTEXT: usize = RECORD_SIZE as usize - 16 - 1 - 86;

/// The two keys of a browser's push subscription (`getKey('p256dh')`, `getKey('auth')`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionKeys {
    /// The user agent's public key, an uncompressed P-256 point (65 bytes).
    pub p256dh: Vec<u8>,
    /// The authentication secret (16 bytes).
    pub auth: Vec<u8>,
}

impl SubscriptionKeys {
    /// From the base64url strings a browser's `PushSubscription.toJSON()` gives.
    pub fn from_b64(p256dh: &str, auth: &str) -> Result<Self, PushError> {
        let p = unb64(p256dh).ok_or(PushError::BadKey {
            field: "p256dh",
            reason: "not base64url".into(),
        })?;
        let a = unb64(auth).ok_or(PushError::BadKey {
            field: "auth",
            reason: "not base64url".into(),
        })?;
        let keys = SubscriptionKeys { p256dh: p, auth: a };
        keys.validate()?;
        Ok(keys)
    }

    pub fn validate(&self) -> Result<(), PushError> {
        if self.auth.len() != 16 {
            return Err(PushError::BadKey {
                field: "auth",
                reason: format!("{} bytes; it must be 16", self.auth.len()),
            });
        }
        if self.p256dh.len() != 65 || self.p256dh[0] != 4 {
            return Err(PushError::BadKey {
                field: "p256dh",
                reason: "not an uncompressed P-256 point (65 bytes starting with 0x04)".into(),
            });
        }
        PublicKey::from_sec1_bytes(&self.p256dh).map_err(|_| PushError::BadKey {
            field: "p256dh",
            reason: "not a point on P-256".into(),
        })?;
        Ok(())
    }
}

/// Encrypts `plaintext` for `keys` with a fresh salt and ephemeral key.
pub fn encrypt(keys: &SubscriptionKeys, plaintext: &[u8]) -> Result<Vec<u8>, PushError> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let ephemeral = SecretKey::random(&mut rand::thread_rng());
    encrypt_with(keys, plaintext, &salt, &ephemeral)
}

/// [`encrypt`] with a given salt and application-server key (for test vectors).
pub fn encrypt_with(
    keys: &SubscriptionKeys,
    plaintext: &[u8],
    salt: &[u8; 16],
    as_secret: &SecretKey,
) -> Result<Vec<u8>, PushError> {
    keys.validate()?;
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(PushError::TooLarge {
            len: plaintext.len(),
        });
    }
    let ua_public = PublicKey::from_sec1_bytes(&keys.p256dh).map_err(|_| PushError::Crypto)?;
    let as_public = as_secret.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_public.as_affine());

    // IKM = HKDF(auth secret, ECDH secret, "WebPush: info" || 0 || ua_public || as_public)
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(&keys.p256dh);
    key_info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&keys.auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| PushError::Crypto)?;

    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|_| PushError::Crypto)?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|_| PushError::Crypto)?;

    // One record: the plaintext, then the last-record delimiter 0x02 (no padding).
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(2);
    let sealed = Aes128Gcm::new_from_slice(&cek)
        .map_err(|_| PushError::Crypto)?
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &record,
                aad: b"",
            },
        )
        .map_err(|_| PushError::Crypto)?;

    let key_id = as_public.as_bytes();
    let mut body = Vec::with_capacity(16 + 4 + 1 + key_id.len() + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(key_id.len() as u8);
    body.extend_from_slice(key_id);
    body.extend_from_slice(&sealed);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64;

    /// RFC 8291, Appendix A: the whole exchange with fixed keys and salt.
    #[test]
    fn matches_the_rfc_8291_test_vector() {
        let keys = SubscriptionKeys::from_b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "BTBZMqHH6r4Tts7J_aSIgg",
        )
        .unwrap();
        let as_secret =
            SecretKey::from_slice(&unb64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw").unwrap())
                .unwrap();
        let salt: [u8; 16] = unb64("DGv6ra1nlYgDCS1FRnbzlw").unwrap().try_into().unwrap();
        let body = encrypt_with(
            &keys,
            b"When I grow up, I want to be a watermelon",
            &salt,
            &as_secret,
        )
        .unwrap();
        assert_eq!(
            b64(&body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn bad_keys_and_oversized_messages_are_refused() {
        assert!(SubscriptionKeys::from_b64("AAAA", "BTBZMqHH6r4Tts7J_aSIgg").is_err());
        let mut not_on_curve = vec![4u8];
        not_on_curve.extend([1u8; 64]);
        assert!(SubscriptionKeys::from_b64(&b64(&not_on_curve), "BTBZMqHH6r4Tts7J_aSIgg").is_err());
        let keys = SubscriptionKeys::from_b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "short",
        );
        assert!(keys.is_err());
        let keys = SubscriptionKeys::from_b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "BTBZMqHH6r4Tts7J_aSIgg",
        )
        .unwrap();
        assert!(matches!(
            encrypt(&keys, &vec![b'x'; MAX_PLAINTEXT + 1]),
            Err(PushError::TooLarge { .. })
        ));
        let a = encrypt(&keys, b"same").unwrap();
        let b = encrypt(&keys, b"same").unwrap();
        assert_ne!(a, b, "every message gets its own salt and ephemeral key");
    }
}
