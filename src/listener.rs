//! One SO_REUSEPORT listener per shard, all on the same port, so the kernel spreads
//! incoming connections across shards with no accept thread in between.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of each listener: a flash sale connects in bursts.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds `count` listeners on `addr`. When `addr` has port 0, the first listener picks
/// the port and the rest join it, so callers (tests) learn the port before any shard
/// runs and can connect at once.
pub fn bind_group(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let listener = bind_one(addr)?;
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Whether another socket already listens on `addr` (port 0: never). A plain bind (no
/// SO_REUSEPORT) fails while any process serves the port, even one that allows sharing.
pub fn is_served(addr: SocketAddr) -> bool {
    addr.port() != 0
        && matches!(TcpListener::bind(addr), Err(e) if e.kind() == io::ErrorKind::AddrInUse)
}

/// Holds `/tmp/ticketd-<port>-node-<id>.lock` (an advisory `flock`) while this process
/// serves `port` as node `node`, so two processes sharing a port cannot share a node id
/// (their order ids could collide). `Ok(None)` when the lock cannot be made at all.
pub fn claim_node_on_port(port: u16, node: u16) -> io::Result<Option<std::fs::File>> {
    let path = std::env::temp_dir().join(format!("ticketd-{port}-node-{node}.lock"));
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "node id {node} already serves port {port} (lock {})",
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(_)) => Ok(None),
    }
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}
