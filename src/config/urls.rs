//! Addresses on the command line: `HOST:PORT` (names resolved) and the Redis URL with
//! its login.

use std::net::SocketAddr;

/// `HOST:PORT`, where HOST is an address or a name (`localhost:7878`), resolved to its
/// first address.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("`{text}`: {e} (expected HOST:PORT)"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

/// Where the Redis ledger is and how to log in to it: what `--redis URL` says.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisLogin {
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database number (`SELECT`), 0 by default.
    pub db: i64,
}

impl std::fmt::Debug for RedisLogin {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLogin")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

impl RedisLogin {
    /// Commands every new connection sends first: AUTH (with a password) and SELECT
    /// (for a database other than 0).
    pub fn commands(&self) -> Vec<redis::Cmd> {
        let mut commands = Vec::new();
        if let Some(password) = &self.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &self.username {
                auth.arg(user);
            }
            auth.arg(password);
            commands.push(auth);
        }
        if self.db != 0 {
            let mut select = redis::cmd("SELECT");
            select.arg(self.db);
            commands.push(select);
        }
        commands
    }

    /// The redis crate's connection settings for a blocking connection to `addr`.
    pub fn connection_info(&self, addr: SocketAddr) -> redis::RedisResult<redis::ConnectionInfo> {
        let mut settings = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        use redis::IntoConnectionInfo;
        redis::ConnectionAddr::Tcp(addr.ip().to_string(), addr.port())
            .into_connection_info()
            .map(|info| info.set_redis_settings(settings))
    }
}

/// `--redis`: the ledger's address and login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub addr: SocketAddr,
    pub login: RedisLogin,
}

/// `redis://[user][:password]@HOST:PORT[/db]` (what the redis crate accepts), or just
/// `HOST:PORT`, resolved to an address. `rediss://` (TLS) and Unix sockets are refused
/// with a message until they are supported.
pub fn parse_redis_url(text: &str) -> Result<RedisUrl, String> {
    use redis::IntoConnectionInfo;
    if text.starts_with("rediss://") {
        return Err(format!(
            "`{text}`: rediss:// (TLS) is not supported yet; use redis:// on a trusted \
             network, or a TLS tunnel"
        ));
    }
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("redis://{text}")
    };
    let info = with_scheme.as_str().into_connection_info().map_err(|e| {
        format!("`{text}`: {e} (expected redis://[user][:password]@HOST:PORT[/db])")
    })?;
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        _ => return Err(format!("`{text}`: only redis://HOST:PORT is supported")),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| format!("`{text}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))?;
    let settings = info.redis_settings();
    Ok(RedisUrl {
        addr,
        login: RedisLogin {
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        },
    })
}
