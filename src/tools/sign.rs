//! `ticketd sign`: prints a signed purchase link for the HTTP front (`--http-secret`), as
//! the site that logged the user in would issue it — for testing, and as the reference
//! for writing the site's side.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::signed_links::{LinkSigner, SecretError};

#[derive(Debug, Clone, clap::Args)]
pub struct SignArgs {
    /// The file holding the secret the node was started with (`--http-secret`).
    #[arg(long, value_name = "FILE")]
    pub http_secret: PathBuf,
    /// The event the link buys in.
    #[arg(long, value_name = "ID")]
    pub event: u32,
    /// The user the link buys for.
    #[arg(long, value_name = "ID")]
    pub user: u64,
    /// How long the link stays good.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Print a whole URL on this base (e.g. `http://127.0.0.1:8080`) instead of the path.
    #[arg(long, value_name = "URL")]
    pub base: Option<String>,
}

/// The link to print.
pub fn run(args: &SignArgs) -> Result<String, SecretError> {
    let signer = LinkSigner::load(&args.http_secret)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires = now.saturating_add(args.ttl.as_secs().max(1));
    let path = signer.link(args.event, args.user, expires);
    Ok(match &args.base {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => path,
    })
}
