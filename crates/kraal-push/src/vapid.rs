//! The daemon's Web Push identity (VAPID, RFC 8292): a P-256 key pair made once and kept
//! in the data directory. Browsers subscribe with its public key; every push carries a
//! JWT signed with it (ES256) whose audience is the push service's origin, so a push
//! service accepts messages for a subscription only from the server it was made for.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};

use crate::{PushError, b64, endpoint_origin, unb64};

/// How long a signed VAPID token is valid (the RFC allows at most 24 hours).
const TOKEN_LIFETIME_SECS: u64 = 12 * 3600;

#[derive(Clone)]
pub struct VapidKey {
    key: SigningKey,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VapidKey({})", self.public_key())
    }
}

impl VapidKey {
    pub fn generate() -> Self {
        VapidKey {
            key: SigningKey::random(&mut rand::thread_rng()),
        }
    }

    /// The key in `path` (base64url of the 32-byte private scalar), made there with mode
    /// 0600 when the file does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<Self, PushError> {
        let err = |reason: String| PushError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let raw = unb64(&text).ok_or_else(|| err("not base64url".into()))?;
                let key = SigningKey::from_slice(&raw)
                    .map_err(|_| err("not a P-256 private key".into()))?;
                Ok(VapidKey { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = Self::generate();
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(b64(&k.key.to_bytes()).as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| err(e.to_string()))?;
                std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
                Ok(k)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// The public key as browsers want it for `applicationServerKey`: base64url of the
    /// uncompressed point.
    pub fn public_key(&self) -> String {
        b64(self.key.verifying_key().to_encoded_point(false).as_bytes())
    }

    /// The `Authorization` header for a push to `endpoint`, signed now: `vapid t=JWT, k=KEY`.
    /// `subject` is a `mailto:` or `https:` contact for the push service's operator.
    pub fn authorization(&self, endpoint: &str, subject: &str) -> Result<String, PushError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.authorization_at(endpoint, subject, now + TOKEN_LIFETIME_SECS)
    }

    pub fn authorization_at(
        &self,
        endpoint: &str,
        subject: &str,
        exp: u64,
    ) -> Result<String, PushError> {
        let aud = endpoint_origin(endpoint)?;
        let header = b64(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = b64(serde_json::json!({"aud": aud, "exp": exp, "sub": subject})
            .to_string()
            .as_bytes());
        let input = format!("{header}.{claims}");
        let sig: Signature = self.key.sign(input.as_bytes());
        Ok(format!(
            "vapid t={input}.{}, k={}",
            b64(&sig.to_bytes()),
            self.public_key()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;

    #[test]
    fn tokens_verify_with_the_public_key_and_name_the_audience() {
        let k = VapidKey::generate();
        let h = k
            .authorization_at(
                "https://push.example.net/wpush/v2/abc",
                "mailto:me@example.com",
                1_900_000_000,
            )
            .unwrap();
        let rest = h.strip_prefix("vapid t=").unwrap();
        let (jwt, key) = rest.split_once(", k=").unwrap();
        assert_eq!(key, k.public_key());
        let mut parts = jwt.split('.');
        let (hd, cl, sig) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let claims: serde_json::Value = serde_json::from_slice(&unb64(cl).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["exp"], 1_900_000_000u64);
        assert_eq!(claims["sub"], "mailto:me@example.com");
        let vk = VerifyingKey::from_sec1_bytes(&unb64(key).unwrap()).unwrap();
        let sig = Signature::from_slice(&unb64(sig).unwrap()).unwrap();
        vk.verify(format!("{hd}.{cl}").as_bytes(), &sig).unwrap();
        assert!(vk.verify(format!("{hd}.{cl}x").as_bytes(), &sig).is_err());
    }

    #[test]
    fn the_key_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vapid.key");
        let a = VapidKey::load_or_create(&p).unwrap();
        let b = VapidKey::load_or_create(&p).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&p, "garbage!").unwrap();
        let e = VapidKey::load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("vapid.key"), "{e}");
    }
}
