//! `--auth-token-file`: the tokens a binary-protocol connection may present with AUTH
//! (protocol 1.1) before anything else. Compared in constant time, so how much of a
//! guess matched cannot be learned from how long the answer took.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
use ticketd_proto::MAX_TOKEN_LEN;

/// The accepted tokens. Its `Debug` never shows them.
#[derive(Clone)]
pub struct TokenSet {
    tokens: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.tokens.len())
    }
}

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {path} holds no token (one per line; blank lines and lines starting with # are skipped)")]
    Empty { path: PathBuf },
    #[error("the token file {path}, line {line}: a token is 1 to {MAX_TOKEN_LEN} bytes, this one is {len}")]
    TooLong {
        path: PathBuf,
        line: usize,
        len: usize,
    },
}

impl TokenSet {
    /// Reads one token per line (surrounding whitespace trimmed; blank lines and `#`
    /// comments skipped).
    pub fn load(path: &Path) -> Result<TokenSet, TokenFileError> {
        let text = std::fs::read(path).map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut tokens = Vec::new();
        for (index, line) in text.split(|&b| b == b'\n').enumerate() {
            let token = line.trim_ascii();
            if token.is_empty() || token.starts_with(b"#") {
                continue;
            }
            if token.len() > MAX_TOKEN_LEN {
                return Err(TokenFileError::TooLong {
                    path: path.to_owned(),
                    line: index + 1,
                    len: token.len(),
                });
            }
            tokens.push(token.to_vec());
        }
        if tokens.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(TokenSet { tokens })
    }

    /// Whether `candidate` is one of the tokens. Every token is compared, each in
    /// constant time for its length, whichever matches.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let mut found = subtle::Choice::from(0);
        for token in &self.tokens {
            found |= token.as_slice().ct_eq(candidate);
        }
        found.into()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn tokens_are_lines_and_only_exact_ones_pass() {
        let f = file("# gateways\nalpha-123\n\n  beta  \n");
        let set = TokenSet::load(f.path()).expect("loads");
        assert_eq!(set.len(), 2);
        assert!(set.accepts(b"alpha-123"));
        assert!(set.accepts(b"beta"));
        for wrong in [
            &b"alpha-12"[..],
            b"alpha-1234",
            b"ALPHA-123",
            b"",
            b"# gateways",
        ] {
            assert!(!set.accepts(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{set:?}"), "TokenSet(2 tokens)", "never printed");
    }

    #[test]
    fn empty_long_and_missing_files_are_refused() {
        let empty = file("# nothing\n\n");
        assert!(matches!(
            TokenSet::load(empty.path()),
            Err(TokenFileError::Empty { .. })
        ));
        let long = file(&"x".repeat(MAX_TOKEN_LEN + 1));
        assert!(matches!(
            TokenSet::load(long.path()),
            Err(TokenFileError::TooLong { line: 1, .. })
        ));
        assert!(matches!(
            TokenSet::load(Path::new("/nonexistent/tokens")),
            Err(TokenFileError::Read { .. })
        ));
    }
}
