//! HMAC-SHA256 signatures: events from systems without a token, single-use
//! resume URLs, and the requests `http` steps send out.
//!
//! A hook request carries `Tandem-Timestamp` (Unix seconds) and
//! `Tandem-Signature: v1=<hex>`, the HMAC of
//! `"{timestamp}.{run_id}.{event}.{body}"`: the run and event are signed
//! too, so a captured request cannot be replayed against another run.
//! Signatures are compared in constant time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tandem_model::RunId;

type HmacSha256 = Hmac<Sha256>;

/// The header with the signing time.
pub const TIMESTAMP_HEADER: &str = "tandem-timestamp";
/// The header with the signature.
pub const SIGNATURE_HEADER: &str = "tandem-signature";

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature headers are missing or malformed")]
    Malformed,
    #[error("the signature's timestamp is too far from now")]
    Stale,
    #[error("the resume URL has expired")]
    Expired,
    #[error("the signature does not match")]
    Mismatch,
}

/// Signs and checks with the server's workflow secret.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
    public_url: String,
    tolerance: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public_url", &self.public_url)
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// `public_url` is the server's address as callers reach it (resume
    /// URLs start with it); `tolerance` is how far a hook's timestamp may
    /// be from now.
    pub fn new(secret: &str, public_url: &str, tolerance: Duration) -> Self {
        Self {
            key: secret.as_bytes().to_vec(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            tolerance,
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        // HMAC takes a key of any length.
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(b".");
            }
            mac.update(part);
        }
        mac
    }

    fn sign(&self, parts: &[&[u8]]) -> String {
        hex::encode(self.mac(parts).finalize().into_bytes())
    }

    fn verify(&self, parts: &[&[u8]], signature_hex: &str) -> Result<(), SignatureError> {
        let signature = hex::decode(signature_hex).map_err(|_| SignatureError::Malformed)?;
        self.mac(parts)
            .verify_slice(&signature)
            .map_err(|_| SignatureError::Mismatch)
    }

    /// The `Tandem-Signature` value for a hook request.
    pub fn hook_signature(&self, timestamp: i64, run: RunId, event: &str, body: &[u8]) -> String {
        let (timestamp, run) = (timestamp.to_string(), run.to_string());
        format!(
            "v1={}",
            self.sign(&[timestamp.as_bytes(), run.as_bytes(), event.as_bytes(), body])
        )
    }

    /// Checks a hook request's headers against its run, event and body.
    pub fn verify_hook(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        run: RunId,
        event: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), SignatureError> {
        let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
            return Err(SignatureError::Malformed);
        };
        let signed_at: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::Malformed)?;
        let signature = signature
            .trim()
            .strip_prefix("v1=")
            .ok_or(SignatureError::Malformed)?;
        let skew = (now.timestamp() - signed_at).unsigned_abs();
        if skew > self.tolerance.as_secs() {
            return Err(SignatureError::Stale);
        }
        let run = run.to_string();
        self.verify(
            &[
                timestamp.trim().as_bytes(),
                run.as_bytes(),
                event.as_bytes(),
                body,
            ],
            signature,
        )
    }

    /// A URL that delivers `event` to `run` once, until `expires` (Unix
    /// seconds); `step` is the journal step that minted it.
    pub fn resume_url(&self, run: RunId, event: &str, step: i64, expires: i64) -> String {
        let signature = self.resume_signature(run, event, step, expires);
        format!(
            "{}/v1/hooks/workflows/{run}/events/{event}?step={step}&expires={expires}&sig={signature}",
            self.public_url
        )
    }

    fn resume_signature(&self, run: RunId, event: &str, step: i64, expires: i64) -> String {
        let (run, step, expires) = (run.to_string(), step.to_string(), expires.to_string());
        self.sign(&[
            b"resume",
            run.as_bytes(),
            event.as_bytes(),
            step.as_bytes(),
            expires.as_bytes(),
        ])
    }

    /// Checks a resume URL's query.
    pub fn verify_resume(
        &self,
        run: RunId,
        event: &str,
        step: i64,
        expires: i64,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<(), SignatureError> {
        let (run_s, step_s, expires_s) = (run.to_string(), step.to_string(), expires.to_string());
        self.verify(
            &[
                b"resume",
                run_s.as_bytes(),
                event.as_bytes(),
                step_s.as_bytes(),
                expires_s.as_bytes(),
            ],
            signature,
        )?;
        if now.timestamp() > expires {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }

    /// The `Tandem-Signature` of a request an `http` step sends: the HMAC of
    /// `"{timestamp}.{body}"`.
    pub fn outbound_signature(&self, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1={}",
            self.sign(&[timestamp.to_string().as_bytes(), body])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new("s3cret", "http://127.0.0.1:8080/", Duration::from_secs(300))
    }

    #[test]
    fn a_hook_signature_binds_time_run_event_and_body() {
        let s = signer();
        let run = RunId::new();
        let now = Utc::now();
        let t = now.timestamp();
        let sig = s.hook_signature(t, run, "decision", b"{\"ok\":true}");
        let ts = t.to_string();
        let check = |ts: &str, sig: &str, run, event, body: &[u8]| {
            s.verify_hook(Some(ts), Some(sig), run, event, body, now)
        };
        assert_eq!(check(&ts, &sig, run, "decision", b"{\"ok\":true}"), Ok(()));
        assert_eq!(
            check(&ts, &sig, run, "decision", b"{\"ok\":false}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&ts, &sig, RunId::new(), "decision", b"{\"ok\":true}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&ts, &sig, run, "other", b"{\"ok\":true}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&ts, "v1=zz", run, "decision", b"{\"ok\":true}"),
            Err(SignatureError::Malformed)
        );
        let old = (t - 301).to_string();
        let stale = s.hook_signature(t - 301, run, "decision", b"{}");
        assert_eq!(
            check(&old, &stale, run, "decision", b"{}"),
            Err(SignatureError::Stale)
        );
        let other = Signer::new("other", "http://x", Duration::from_secs(300));
        let forged = other.hook_signature(t, run, "decision", b"{}");
        assert_eq!(
            check(&ts, &forged, run, "decision", b"{}"),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_resume_url_is_signed_and_expires() {
        let s = signer();
        let run = RunId::new();
        let now = Utc::now();
        let expires = now.timestamp() + 60;
        let url = s.resume_url(run, "approved", 3, expires);
        assert!(url.starts_with(&format!(
            "http://127.0.0.1:8080/v1/hooks/workflows/{run}/events/approved?step=3&"
        )));
        let sig = url.rsplit("sig=").next().unwrap_or_default();
        assert_eq!(
            s.verify_resume(run, "approved", 3, expires, sig, now),
            Ok(())
        );
        assert_eq!(
            s.verify_resume(run, "approved", 4, expires, sig, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            s.verify_resume(run, "approved", 3, expires + 1, sig, now),
            Err(SignatureError::Mismatch)
        );
        let later = now + chrono::Duration::seconds(61);
        assert_eq!(
            s.verify_resume(run, "approved", 3, expires, sig, later),
            Err(SignatureError::Expired)
        );
    }
}
