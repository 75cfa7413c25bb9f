//! Signed purchase links for the HTTP front (`--http-secret FILE`): the site that logged
//! the user in issues `GET /buy/ticket?event=E&user=U&expires=T&sig=S`, where `S` is the
//! hex HMAC-SHA256, under the shared secret, of `E:U:T` (T in Unix seconds). Without a
//! good signature, or after T, the answer is 403 and nothing is sold: a bot cannot buy
//! as a user it did not log in as, nor keep a link past its expiry. (Within its expiry a
//! link may be retried; the per-user limit makes a retry safe.)

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// The secret; its `Debug` never shows it.
#[derive(Clone)]
pub struct LinkSigner {
    secret: Vec<u8>,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner(..)")
    }
}

/// Why a secret file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the secret in {path} is {len} bytes; use at least {MIN_SECRET_LEN} (e.g. `head -c 32 /dev/urandom | base64`)")]
    TooShort { path: PathBuf, len: usize },
}

/// What a link lacks, when it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// `user`, `event`, `expires` or `sig` is missing, or `sig` is not 64 hex digits.
    Incomplete,
    /// The signature does not match the link.
    Forged,
    /// It expired.
    Expired,
}

impl LinkRefusal {
    pub fn message(self) -> &'static str {
        match self {
            LinkRefusal::Incomplete => {
                "a signed link is required: event, user, expires and sig (issued by the site)"
            }
            LinkRefusal::Forged => "the link's signature does not match",
            LinkRefusal::Expired => "the link has expired",
        }
    }
}

/// A link's parts as the query gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkParts {
    pub event: Option<u32>,
    pub user: Option<u64>,
    pub expires: Option<u64>,
    pub sig: Option<[u8; 32]>,
}

impl LinkSigner {
    /// Reads the secret (surrounding whitespace trimmed).
    pub fn load(path: &Path) -> Result<LinkSigner, SecretError> {
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.to_owned(),
            source,
        })?;
        let secret = bytes.trim_ascii().to_vec();
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                path: path.to_owned(),
                len: secret.len(),
            });
        }
        Ok(LinkSigner { secret })
    }

    fn mac(&self, event: u32, user: u64, expires: u64) -> HmacSha256 {
        // Any key length is accepted by HMAC; this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("{event}:{user}:{expires}").as_bytes());
        mac
    }

    /// The signature of a link, as 64 hex digits.
    pub fn sign(&self, event: u32, user: u64, expires: u64) -> String {
        hex::encode(self.mac(event, user, expires).finalize().into_bytes())
    }

    /// The path of a link for `user` to buy in `event`, good until `expires`.
    pub fn link(&self, event: u32, user: u64, expires: u64) -> String {
        format!(
            "/buy/ticket?event={event}&user={user}&expires={expires}&sig={}",
            self.sign(event, user, expires)
        )
    }

    /// The event and user a link may buy for, at `now_unix` seconds. The signature is
    /// checked in constant time.
    pub fn verify(&self, parts: LinkParts, now_unix: u64) -> Result<(u32, u64), LinkRefusal> {
        let (Some(event), Some(user), Some(expires), Some(sig)) =
            (parts.event, parts.user, parts.expires, parts.sig)
        else {
            return Err(LinkRefusal::Incomplete);
        };
        self.mac(event, user, expires)
            .verify_slice(&sig)
            .map_err(|_| LinkRefusal::Forged)?;
        if now_unix >= expires {
            return Err(LinkRefusal::Expired);
        }
        Ok((event, user))
    }
}

/// `sig=` as 32 bytes, from exactly 64 hex digits.
pub fn parse_sig(text: &str) -> Option<[u8; 32]> {
    let mut sig = [0u8; 32];
    hex::decode_to_slice(text, &mut sig).ok()?;
    Some(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LinkSigner {
        LinkSigner {
            secret: b"0123456789abcdef-test-secret".to_vec(),
        }
    }

    fn parts(event: u32, user: u64, expires: u64, sig: &str) -> LinkParts {
        LinkParts {
            event: Some(event),
            user: Some(user),
            expires: Some(expires),
            sig: parse_sig(sig),
        }
    }

    #[test]
    fn a_link_verifies_until_it_expires_and_any_change_is_forged() {
        let s = signer();
        let sig = s.sign(1, 42, 1_000);
        assert_eq!(sig.len(), 64);
        assert_eq!(s.verify(parts(1, 42, 1_000, &sig), 999), Ok((1, 42)));
        assert_eq!(
            s.verify(parts(1, 42, 1_000, &sig), 1_000),
            Err(LinkRefusal::Expired)
        );
        for (event, user, expires) in [(2, 42, 1_000), (1, 43, 1_000), (1, 42, 2_000)] {
            assert_eq!(
                s.verify(parts(event, user, expires, &sig), 999),
                Err(LinkRefusal::Forged),
                "{event} {user} {expires}"
            );
        }
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).expect("hex");
        assert_eq!(
            s.verify(parts(1, 42, 1_000, &flipped), 999),
            Err(LinkRefusal::Forged)
        );
        let other = LinkSigner {
            secret: b"another-secret-of-enough-length".to_vec(),
        };
        assert_eq!(
            other.verify(parts(1, 42, 1_000, &sig), 999),
            Err(LinkRefusal::Forged)
        );
    }

    #[test]
    fn incomplete_links_and_bad_signatures_are_refused() {
        let s = signer();
        let sig = s.sign(1, 42, 1_000);
        let mut p = parts(1, 42, 1_000, &sig);
        p.user = None;
        assert_eq!(s.verify(p, 0), Err(LinkRefusal::Incomplete));
        assert_eq!(parse_sig(&sig[..62]), None, "too short");
        assert_eq!(parse_sig(&format!("{}zz", &sig[..62])), None, "not hex");
        assert_eq!(
            s.link(1, 42, 1_000),
            format!("/buy/ticket?event=1&user=42&expires=1000&sig={sig}")
        );
        assert_eq!(format!("{s:?}"), "LinkSigner(..)");
    }
}
