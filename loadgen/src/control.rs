//! A blocking side connection for STOCK before and after the run, and ORDERS after it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use ticketd_proto::{decode_response, Command, DecodeError, Request, Response, ResultBody, Status};

use crate::report::StockView;

const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why STOCK could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("{addr}: STOCK or ORDERS of event {event} answered {status}")]
    Status {
        addr: SocketAddr,
        event: u32,
        status: Status,
    },
    #[error("{addr}: AUTH answered {status} (check --auth-token-file)")]
    Auth { addr: SocketAddr, status: Status },
    #[error("{addr}: malformed STOCK answer: {error}")]
    Malformed {
        addr: SocketAddr,
        error: DecodeError,
    },
}

/// ORDERS of `event` for each of `users` at `addr`, pipelined on one connection: user ->
/// the order ids the server lists.
pub fn orders(
    addr: SocketAddr,
    event: u32,
    users: &[u64],
    token: Option<&[u8]>,
) -> Result<std::collections::HashMap<u64, Vec<u64>>, ControlError> {
    let commands: Vec<Command> = users
        .iter()
        .map(|&user| Command::Orders { event, user })
        .collect();
    let mut listed = std::collections::HashMap::new();
    for (response, &user) in exchange(addr, &commands, token)?.into_iter().zip(users) {
        match (response.status, response.result) {
            (Status::Ok, ResultBody::Orders(list)) => {
                listed.insert(user, list.0.iter().map(|&(id, _)| id).collect());
            }
            (status, _) => {
                return Err(ControlError::Status {
                    addr,
                    event,
                    status,
                })
            }
        }
    }
    Ok(listed)
}

/// The `req_id` of the AUTH a control connection opens with (when the run has a token).
const AUTH_REQ_ID: u64 = u64::MAX;

/// Sends `commands` pipelined on one blocking connection to `addr` (after an AUTH with
/// `token`, if any) and returns their answers in the same order.
fn exchange(
    addr: SocketAddr,
    commands: &[Command],
    token: Option<&[u8]>,
) -> Result<Vec<Response>, ControlError> {
    let io_error = |source| ControlError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, CONTROL_TIMEOUT).map_err(io_error)?;
    stream
        .set_read_timeout(Some(CONTROL_TIMEOUT))
        .map_err(io_error)?;
    let mut out = BytesMut::new();
    if let Some(token) = token {
        ticketd_proto::encode_auth(AUTH_REQ_ID, token, &mut out);
    }
    for (i, &command) in commands.iter().enumerate() {
        Request {
            req_id: i as u64,
            command,
        }
        .encode(&mut out);
    }
    stream.write_all(&out).map_err(io_error)?;
    let mut answers: Vec<Option<Response>> = vec![None; commands.len()];
    let mut received = 0;
    let mut input = BytesMut::new();
    let mut chunk = [0u8; 4096];
    // An ORDERS answer lists at most the per-user limit (a u16) of orders.
    let max_frame = 16 + 10 * u32::from(u16::MAX);
    while received < commands.len() {
        match decode_response(&input, max_frame) {
            Ok((response, used)) => {
                let _ = input.split_to(used);
                if response.req_id == AUTH_REQ_ID && response.status != Status::Ok {
                    return Err(ControlError::Auth {
                        addr,
                        status: response.status,
                    });
                }
                let slot = usize::try_from(response.req_id)
                    .ok()
                    .and_then(|i| answers.get_mut(i));
                if let Some(slot @ None) = slot {
                    *slot = Some(response);
                    received += 1;
                }
                continue;
            }
            Err(DecodeError::Incomplete) => {}
            Err(error) => return Err(ControlError::Malformed { addr, error }),
        }
        let n = stream.read(&mut chunk).map_err(io_error)?;
        if n == 0 {
            return Err(io_error(io::ErrorKind::UnexpectedEof.into()));
        }
        input.extend_from_slice(&chunk[..n]);
    }
    Ok(answers.into_iter().flatten().collect())
}

/// STOCK of `event` on each distinct server, summed (each is its own node).
pub fn stock(
    addrs: &[SocketAddr],
    event: u32,
    token: Option<&[u8]>,
) -> Result<StockView, ControlError> {
    let mut distinct = addrs.to_vec();
    distinct.sort();
    distinct.dedup();
    let mut sum = StockView {
        total: 0,
        remaining: 0,
    };
    for addr in distinct {
        let view = stock_one(addr, event, token)?;
        sum.total += view.total;
        sum.remaining += view.remaining;
    }
    Ok(sum)
}

fn stock_one(
    addr: SocketAddr,
    event: u32,
    token: Option<&[u8]>,
) -> Result<StockView, ControlError> {
    let answer = exchange(addr, &[Command::Stock { event }], token)?.pop();
    match answer.map(|r| (r.status, r.result)) {
        Some((Status::Ok, ResultBody::Stock { total, remaining })) => {
            Ok(StockView { total, remaining })
        }
        Some((status, _)) => Err(ControlError::Status {
            addr,
            event,
            status,
        }),
        None => Err(ControlError::Io {
            addr,
            source: io::ErrorKind::UnexpectedEof.into(),
        }),
    }
}
