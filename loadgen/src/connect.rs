//! Opening client sockets: non-blocking connects from many loopback source addresses,
//! and plain-words explanations of why a connect failed.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Connections per loopback source address when spreading. Linux offers 28,232
/// ephemeral ports per (source, destination) pair, but its search for a free one in
/// connect() slows down as the range fills: at 20,000 per source, 100,000 connects
/// spent over a minute in the kernel and many missed their timeout. At 4,000 the range
/// stays sparse and the search short.
pub const CONNS_PER_SOURCE: u64 = 4_000;

/// The source address for global connection `conn`: 127.0.0.2, 127.0.0.3, … in turn
/// when the target is IPv4 loopback and spreading is on; otherwise the kernel's choice.
pub fn source_for(target: SocketAddr, conn: u64, sources: u32) -> Option<IpAddr> {
    let loopback_v4 = matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback());
    (loopback_v4 && sources > 0).then(|| {
        let n = 2 + (conn % u64::from(sources)) as u32; // 127.0.0.2 and up
        IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n))
    })
}

/// Starts a non-blocking connect. The socket is ready when it turns writable and
/// `peer_addr` succeeds.
pub fn start_connect(
    target: SocketAddr,
    source: Option<IpAddr>,
) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = source {
        // Defer the port choice to connect(), where the whole 4-tuple is known, so each
        // source address gets the full ephemeral range for each destination.
        set_bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

/// socket2 has no setter for this Linux option, so it is set with one `setsockopt`.
fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the fd is open and owned by `socket` for the whole call; the option value
    // points at a live c_int and the length given is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Names the limit or condition behind a connect error, for the report.
pub fn explain(error: &io::Error) -> String {
    let what = match error.raw_os_error() {
        Some(libc::EMFILE) => "EMFILE: this process's open-file limit (ulimit -n) is reached",
        Some(libc::ENFILE) => "ENFILE: the system-wide open-file limit is reached",
        Some(libc::EADDRNOTAVAIL) => {
            "EADDRNOTAVAIL: ephemeral ports exhausted for a source address (raise --source-addrs)"
        }
        Some(libc::EADDRINUSE) => "EADDRINUSE: no free port for a source address",
        Some(libc::ECONNREFUSED) => {
            "ECONNREFUSED: nothing listening, or the server's accept backlog is full (lower --connect-rate)"
        }
        Some(libc::ETIMEDOUT) => "ETIMEDOUT: the connect timed out",
        Some(libc::ECONNRESET) => "ECONNRESET: the server reset the connection",
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => "ENOBUFS/ENOMEM: kernel out of socket memory",
        _ => return format!("{error}"),
    };
    what.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_cycle_through_loopback_addresses_from_dot_two() {
        let target: SocketAddr = "127.0.0.1:7878".parse().unwrap();
        let ips: Vec<String> = (0..4)
            .map(|c| source_for(target, c, 3).unwrap().to_string())
            .collect();
        assert_eq!(ips, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"]);
        let remote: SocketAddr = "10.0.0.1:7878".parse().unwrap();
        assert_eq!(source_for(remote, 0, 3), None);
        assert_eq!(source_for(target, 0, 0), None);
    }

    #[test]
    fn errors_name_their_limit() {
        assert!(explain(&io::Error::from_raw_os_error(libc::EMFILE)).contains("open-file limit"));
        assert!(explain(&io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)).contains("ephemeral"));
    }
}
