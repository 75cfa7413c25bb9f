//! Messages between shards. Each shard has one unbounded crossbeam channel and a
//! `mio::Waker`; a shard sends each peer at most one batch per loop pass and wakes it
//! once. The channels are unbounded on purpose: two shards blocking on each other's
//! full channel would deadlock. What bounds them is the per-connection in-flight cap.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use ticketd_proto::Response;

use crate::ledger::LedgerOp;

/// A connection on a shard, as another shard names it. The generation tells a live
/// connection apart from a later one that reused its slab slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub shard: usize,
    pub slot: usize,
    pub generation: u32,
}

#[derive(Debug)]
pub enum Message {
    /// Decide `op` (the receiver owns its user or hold) and reply to `reply_to`.
    Decide {
        reply_to: ConnRef,
        req_id: u64,
        op: LedgerOp,
    },
    /// The answer to a forwarded request.
    Reply { conn: ConnRef, response: Response },
}

pub type Batch = Vec<Message>;

/// How to reach one shard.
#[derive(Debug, Clone)]
pub struct Peer {
    pub sender: Sender<Batch>,
    pub waker: Arc<Waker>,
}

/// Outgoing batches of one shard, one per destination, sent at the end of a pass.
#[derive(Debug)]
pub struct Outbox {
    batches: Vec<Batch>,
}

impl Outbox {
    pub fn new(shards: usize) -> Self {
        Outbox {
            batches: (0..shards).map(|_| Vec::new()).collect(),
        }
    }

    pub fn push(&mut self, to: usize, message: Message) {
        self.batches[to].push(message);
    }

    /// Sends every non-empty batch and wakes its shard. A peer that has already exited
    /// (only during shutdown) is skipped: it owes nobody an answer any more.
    pub fn flush(&mut self, peers: &[Peer]) {
        for (batch, peer) in self.batches.iter_mut().zip(peers) {
            if batch.is_empty() {
                continue;
            }
            let batch = std::mem::take(batch);
            if peer.sender.send(batch).is_ok() {
                if let Err(e) = peer.waker.wake() {
                    tracing::warn!(error = %e, "could not wake a peer shard");
                }
            }
        }
    }
}

/// One shard's end of the mesh.
#[derive(Debug)]
pub struct Mailbox {
    pub inbox: Receiver<Batch>,
    pub peers: Arc<[Peer]>,
}
