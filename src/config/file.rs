//! `--config FILE`: the server's flags as a TOML file, for a configuration kept under
//! version control. Every key is a flag's long name (`listen = "0.0.0.0:7878"`,
//! `event = ["1:10000", "2:500:4"]`, `fsync = "batch"`, `share-port = true`; `_` may stand
//! for `-`), and the file's settings become command-line arguments placed before the
//! real ones — so clap parses and checks them exactly as it does flags, with the same
//! messages, and a flag given on the command line replaces the file's setting (for a
//! repeatable flag such as `--event`, all of the file's values).
//!
//! `ticketd --check-config` then prints the effective configuration ([`effective`]) in
//! the same form.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory};

use super::{AdminAddr, Cli, Config};

/// The files secrets were read from: `--check-config` names them, never their contents.
#[derive(Debug, Clone, Default)]
pub struct SecretPaths {
    pub http_secret: Option<PathBuf>,
    pub auth_token_file: Option<PathBuf>,
}

/// Flags that make no sense inside the file they would name.
const NOT_SETTINGS: [&str; 4] = ["config", "check-config", "help", "version"];

/// Why a `--config` file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("--config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--config {path}: not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error(
        "--config {path}: unknown setting `{key}` (keys are the flags' long names without \
         `--`, e.g. `listen = \"0.0.0.0:7878\"`; see --help)"
    )]
    Unknown { path: PathBuf, key: String },
    #[error("--config {path}: `{key}` {why}")]
    Value {
        path: PathBuf,
        key: String,
        why: &'static str,
    },
}

/// `argv` with the settings of the file `--config` names placed before its flags; `argv`
/// unchanged when it names none (or does not parse: the real parse then says why).
pub fn merge_config_file(argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
    let command = Cli::command();
    let Ok(matches) = command.clone().try_get_matches_from(&argv) else {
        return Ok(argv);
    };
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Toml {
            path: path.clone(),
            message: e.message().to_owned(),
        })?;
    let mut from_file = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|_| !NOT_SETTINGS.contains(&long.as_str()))
            .ok_or_else(|| ConfigFileError::Unknown {
                path: path.clone(),
                key: key.clone(),
            })?;
        if matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let refuse = |why| ConfigFileError::Value {
            path: path.clone(),
            key: key.clone(),
            why,
        };
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(on)) => {
                if *on {
                    from_file.push(OsString::from(format!("--{long}")));
                }
            }
            (ArgAction::SetTrue, _) => return Err(refuse("is a switch: true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    let text = scalar(item).ok_or_else(|| refuse("takes strings or numbers"))?;
                    from_file.push(OsString::from(format!("--{long}={text}")));
                }
            }
            (_, toml::Value::Array(_)) => return Err(refuse("takes one value, not a list")),
            (_, value) => {
                let text = scalar(value).ok_or_else(|| refuse("takes a string or a number"))?;
                from_file.push(OsString::from(format!("--{long}={text}")));
            }
        }
    }
    let mut merged = Vec::with_capacity(argv.len() + from_file.len());
    let mut given = argv.into_iter();
    merged.extend(given.next());
    merged.extend(from_file);
    merged.extend(given);
    Ok(merged)
}

fn fsync_name(mode: crate::journal::FsyncMode) -> &'static str {
    use crate::journal::FsyncMode;
    match mode {
        FsyncMode::Always => "always",
        FsyncMode::Batch => "batch",
        FsyncMode::Off => "off",
    }
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        _ => None,
    }
}

/// A TOML string.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn duration(d: std::time::Duration) -> String {
    quoted(&humantime::format_duration(d).to_string())
}

fn limit(d: Option<std::time::Duration>) -> String {
    d.map_or_else(|| quoted("off"), duration)
}

fn path(p: &Path) -> String {
    quoted(&p.display().to_string())
}

/// The configuration a start would use, as a `--config` file: every setting, defaults
/// resolved; secrets are named by their file, never printed; settings that are off are
/// comments.
pub fn effective(secrets: &SecretPaths, config: &Config) -> String {
    let mut out = String::from("# ticketd: the effective configuration (ticketd --check-config)\n");
    let mut line = |key: &str, value: Option<String>| {
        let _ = match value {
            Some(value) => writeln!(out, "{key} = {value}"),
            None => writeln!(out, "# {key}: not set"),
        };
    };
    line("listen", Some(quoted(&config.listen.to_string())));
    line("share-port", Some(config.share_port.to_string()));
    line("huge-pages", Some(config.huge_pages.to_string()));
    let events: Vec<String> = config
        .events
        .iter()
        .map(|e| quoted(&format!("{}:{}:{}", e.id, e.stock, e.per_user_limit)))
        .collect();
    line("event", Some(format!("[{}]", events.join(", "))));
    line("hold-ttl", Some(duration(config.hold_ttl)));
    line("shards", Some(config.shards.to_string()));
    line("max-frame", Some(config.max_frame.to_string()));
    line("max-conns", Some(config.max_conns.to_string()));
    line("node-id", Some(config.node_id.to_string()));
    line("http", config.http.map(|a| quoted(&a.to_string())));
    line(
        "admin",
        Some(match config.admin {
            AdminAddr::Off => quoted("off"),
            AdminAddr::Default(a) | AdminAddr::Given(a) => quoted(&a.to_string()),
        }),
    );
    line("http-anonymous", Some(config.http_anonymous.to_string()));
    line(
        "max-conns-per-ip",
        config.max_conns_per_ip.map(|n| n.to_string()),
    );
    line("rate-per-ip", config.rate_per_ip.map(|r| r.to_string()));
    line("header-timeout", Some(limit(config.timeouts.header)));
    line("idle-timeout", Some(limit(config.timeouts.idle_binary)));
    line("http-idle-timeout", Some(limit(config.timeouts.idle_http)));
    line("write-timeout", Some(limit(config.timeouts.write)));
    line("pass-budget", Some(duration(config.pass_budget)));
    line("http-secret", secrets.http_secret.as_deref().map(path));
    line(
        "auth-token-file",
        secrets.auth_token_file.as_deref().map(path),
    );
    match (&config.redis, &config.journal) {
        (Some(redis), _) => {
            // The address only: a password in the URL stays out of the output.
            line("redis", Some(quoted(&format!("redis://{}", redis.addr))));
            line("weight", Some(redis.share.weight.to_string()));
            line("total-weight", Some(redis.share.total_weight.to_string()));
            line("buffer", Some(redis.buffer.to_string()));
            line("redis-timeout", Some(duration(redis.timeout)));
            line("redis-depth", Some(redis.depth.to_string()));
            line("redis-scripts", Some(redis.scripts.to_string()));
        }
        (None, Some(journal)) => {
            line("data-dir", Some(path(&journal.data_dir)));
            line("fsync", Some(quoted(fsync_name(journal.fsync))));
            line("raise-totals", Some(journal.raise_totals.to_string()));
            line("segment-bytes", Some(journal.segment_bytes.to_string()));
        }
        (None, None) => {}
    }
    out
}
