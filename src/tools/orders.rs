//! `ticketd orders`: print every order in a data directory, and with `--follow` the new
//! ones as a running server makes them, so order creation downstream can be
//! asynchronous.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use crate::ids::IdText;
use crate::journal::feed::Feed;
use crate::journal::recovery::OrderRec;
use crate::journal::JournalError;

/// How often `--follow` looks for new orders.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line; ids as decimal strings (they exceed 2^53).
    Jsonl,
    /// A header line, then one line per order.
    Csv,
}

#[derive(Debug, Clone, clap::Args)]
pub struct OrdersArgs {
    /// The data dir a ticketd writes (or wrote) to.
    #[arg(long, value_name = "DIR", default_value = crate::config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Keep running and print new orders as they are made.
    #[arg(long)]
    pub follow: bool,
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
}

/// Prints the orders; returns only on an error or, without `--follow`, when done. A
/// closed stdout (`| head`) ends it quietly.
pub fn run(args: &OrdersArgs, out: &mut impl Write) -> Result<(), JournalError> {
    if !args.data_dir.is_dir() {
        return Err(JournalError::io(
            &args.data_dir,
            io::Error::new(io::ErrorKind::NotFound, "no such data dir"),
        ));
    }
    let mut feed = Feed::new(&args.data_dir);
    if args.format == Format::Csv && writeln!(out, "order_id,event,user,qty,unix_ms,time").is_err()
    {
        return Ok(());
    }
    // What is already there, oldest first.
    let mut first = Vec::new();
    feed.poll(&mut |order| first.push(order))?;
    first.sort_by_key(|o| (o.unix_ms, o.order_id));
    if write_all(out, args.format, &first).is_err() || !args.follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(FOLLOW_INTERVAL);
        let mut new = Vec::new();
        feed.poll(&mut |order| new.push(order))?;
        if write_all(out, args.format, &new).is_err() {
            return Ok(());
        }
    }
}

fn write_all(out: &mut impl Write, format: Format, orders: &[OrderRec]) -> io::Result<()> {
    for order in orders {
        let time =
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(order.unix_ms));
        match format {
            Format::Jsonl => writeln!(
                out,
                r#"{{"order_id":"{}","event":{},"user":"{}","qty":{},"unix_ms":{},"time":"{time}"}}"#,
                IdText(order.order_id),
                order.event_id,
                order.user,
                order.qty,
                order.unix_ms
            )?,
            Format::Csv => writeln!(
                out,
                "{},{},{},{},{},{time}",
                IdText(order.order_id),
                order.event_id,
                order.user,
                order.qty,
                order.unix_ms
            )?,
        }
    }
    out.flush()
}
