//! How the ledger's Lua runs in Redis: as a Function library (Redis 7+: `FUNCTION LOAD`,
//! `FCALL`, kept across restarts with the data), or, where Functions are missing or not
//! allowed, as one script (`SCRIPT LOAD`, `EVALSHA`, reloaded after NOSCRIPT).
//!
//! The script is made from the very same library text: `redis.register_function` is
//! replaced by a local registry, and a dispatcher at the end runs the function named in
//! `ARGV[1]`. So both flavours run identical ledger code.

use redis::Cmd;

use super::FUNCTION_LIBRARY;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavor {
    Functions,
    /// The script's SHA1, as `SCRIPT LOAD` returned it.
    Scripts {
        sha: String,
    },
}

/// The library as one script for `SCRIPT LOAD` / `EVAL`.
pub fn script_source() -> String {
    let body: String = FUNCTION_LIBRARY
        .lines()
        .filter(|line| !line.starts_with("#!lua"))
        .map(|line| line.replace("redis.register_function(", "register("))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "local registered = {{}}\n\
         local function register(name, fn) registered[name] = fn end\n\
         {body}\n\
         local args = {{}}\n\
         for i = 2, #ARGV do args[i - 1] = ARGV[i] end\n\
         return registered[ARGV[1]](KEYS, args)\n"
    )
}

/// `SCRIPT LOAD` of [`script_source`]; replies with the SHA1.
pub fn load_script() -> Cmd {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(script_source());
    cmd
}

impl Flavor {
    /// The command that (re)installs the ledger code.
    pub fn loader(&self) -> Cmd {
        match self {
            Flavor::Functions => super::load_functions(),
            Flavor::Scripts { .. } => load_script(),
        }
    }

    /// `cmd` (an `FCALL name numkeys keys… args…`) in this flavour.
    pub fn adapt(&self, cmd: Cmd) -> Cmd {
        let Flavor::Scripts { sha } = self else {
            return cmd;
        };
        let parts: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                // Ledger commands carry plain arguments only.
                _ => Vec::new(),
            })
            .collect();
        // FCALL name numkeys key… arg…  →  EVALSHA sha numkeys key… name arg…
        let numkeys: usize = parts
            .get(2)
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(sha.as_str()).arg(numkeys);
        for key in parts.iter().skip(3).take(numkeys) {
            evalsha.arg(key.as_slice());
        }
        if let Some(name) = parts.get(1) {
            evalsha.arg(name.as_slice());
        }
        for arg in parts.iter().skip(3 + numkeys) {
            evalsha.arg(arg.as_slice());
        }
        evalsha
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcall_becomes_evalsha_with_the_name_first_among_args() {
        let flavor = Flavor::Scripts { sha: "abc".into() };
        let mut fcall = redis::cmd("FCALL");
        fcall
            .arg("ticketd_stock")
            .arg(2)
            .arg("k1")
            .arg("k2")
            .arg("a1");
        let packed = String::from_utf8(flavor.adapt(fcall).get_packed_command()).unwrap();
        let words: Vec<&str> = packed
            .split("\r\n")
            .filter(|w| !w.starts_with(['*', '$']))
            .collect();
        assert_eq!(
            words[..7],
            ["EVALSHA", "abc", "2", "k1", "k2", "ticketd_stock", "a1"]
        );
    }

    #[test]
    fn the_script_registers_locally_and_dispatches() {
        let source = script_source();
        assert!(!source.contains("redis.register_function"));
        assert!(!source.contains("#!lua"));
        assert!(source.contains("register('ticketd_decide'"));
        assert!(source.ends_with("return registered[ARGV[1]](KEYS, args)\n"));
    }
}
