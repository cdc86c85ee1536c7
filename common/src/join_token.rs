//! Join tokens: what `lifeboatctl token create` prints and `lifeboat-agent enroll` consumes.
//!
//! Text form (version 1, do not modify): `lbjt1.<secret>.<ca_sha256>.<address>`, each part in
//! lowercase hex; `secret` is 32 random bytes, `ca_sha256` the SHA-256 of the controller CA's
//! DER certificate, `address` the UTF-8 controller URL. The controller stores only
//! SHA-256(secret) ([`JoinToken::secret_hash`]); the agent trusts the controller only if its CA
//! hashes to `ca_sha256` (no trust on first use). Tampering with the secret makes the token
//! unknown; tampering with the fingerprint or address makes the agent refuse the controller.
//! A token is a secret: never log it, never pass it as a command-line argument.

use thiserror::Error;

/// The text prefix of a version-1 token.
pub const PREFIX: &str = "lbjt1";
/// Longest accepted token text (guards parsing of hostile input).
pub const MAX_TOKEN_LEN: usize = 2048;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum JoinTokenError {
    #[error(
        "the join token is malformed ({0}); copy it again from `lifeboatctl token create` output"
    )]
    Malformed(&'static str),
}

/// A decoded join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: [u8; 32],
    pub ca_sha256: [u8; 32],
    pub address: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_sha256", &hex::encode(self.ca_sha256))
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex32(s: &str, what: &'static str) -> Result<[u8; 32], JoinTokenError> {
    let v = hex::decode(s).map_err(|_| JoinTokenError::Malformed(what))?;
    v.try_into().map_err(|_| JoinTokenError::Malformed(what))
}

impl JoinToken {
    /// A new token with a random secret.
    pub fn generate(ca_der: &[u8], address: &str) -> Self {
        let mut secret = [0u8; 32];
        crate::keys::fill_random(&mut secret);
        JoinToken {
            secret,
            ca_sha256: sha256(ca_der),
            address: address.to_owned(),
        }
    }

    /// Hex SHA-256 of the secret: what the controller stores and looks tokens up by.
    pub fn secret_hash(&self) -> String {
        hex::encode(sha256(&self.secret))
    }

    /// Whether `ca_der` is the CA this token pins.
    pub fn pins(&self, ca_der: &[u8]) -> bool {
        sha256(ca_der) == self.ca_sha256
    }

    /// The text form.
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX}.{}.{}.{}",
            hex::encode(self.secret),
            hex::encode(self.ca_sha256),
            hex::encode(self.address.as_bytes())
        )
    }

    /// Parses the text form (surrounding whitespace ignored).
    pub fn decode(text: &str) -> Result<Self, JoinTokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(JoinTokenError::Malformed("too long"));
        }
        let mut parts = text.split('.');
        if parts.next() != Some(PREFIX) {
            return Err(JoinTokenError::Malformed(
                "not a version-1 Lifeboat join token",
            ));
        }
        let (Some(secret), Some(ca), Some(addr), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoinTokenError::Malformed("wrong number of parts"));
        };
        let address =
            String::from_utf8(hex::decode(addr).map_err(|_| JoinTokenError::Malformed("address"))?)
                .map_err(|_| JoinTokenError::Malformed("address"))?;
        Ok(JoinToken {
            secret: hex32(secret, "secret")?,
            ca_sha256: hex32(ca, "CA fingerprint")?,
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tampering() {
        let t = JoinToken::generate(b"ca-der", "https://10.0.0.1:7443");
        let text = t.encode();
        let back = JoinToken::decode(&format!(" {text}\n")).expect("decode");
        assert_eq!(back, t);
        assert!(back.pins(b"ca-der"));
        assert!(!back.pins(b"other"));
        assert_ne!(t.secret_hash(), hex::encode(t.secret));
        assert!(
            !format!("{t:?}").contains(&hex::encode(t.secret)),
            "secret in Debug"
        );
        for bad in [
            "",
            "lbjt2.aa.bb.cc",
            &text[..text.len() - 1],
            &text.replacen("lbjt1.", "lbjt1.zz", 1),
            &format!("{text}.00"),
        ] {
            assert!(JoinToken::decode(bad).is_err(), "{bad:?}");
        }
    }
}
