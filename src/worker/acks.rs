//! Acks of one consumer channel, folded: deliveries settled together whose tags leave no
//! unsettled delivery below them go out as one `basic.ack` with `multiple`, the others
//! one by one. Nothing is held back to make a run longer (a slow command would hold the
//! acks of later ones, and with them the prefetch window): a round acks exactly what was
//! settled since the last one.
//!
//! A multiple ack acknowledges every unacknowledged delivery up to its tag, so it must
//! never reach past a delivery still in progress, or one left unacknowledged on purpose
//! (interrupted by a shutdown, to be redelivered). Every delivery is registered before
//! its task starts and stays outstanding until settled, so the lowest outstanding tag
//! bounds the multiple ack. One acker serves one channel: tags restart on a new one (the
//! worker opens a new channel after a failure; lapin's automatic recovery, which would
//! reuse a channel with restarted tags, is not enabled), and an acker whose channel is
//! gone only logs failed acks (the broker redelivers, and the inbox absorbs the
//! duplicates).

use std::collections::BTreeSet;

use lapin::{Channel, options::BasicAckOptions};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::ops::metrics as m;

enum Note {
    Delivered(u64),
    Settled(u64),
}

/// The frames one round sends: at most one multiple ack, then single acks.
#[derive(Debug, Default, PartialEq)]
pub struct Round {
    pub multiple: Option<u64>,
    pub singles: Vec<u64>,
}

/// Removes `settled` from `outstanding` and says how to ack them: those below the lowest
/// delivery still outstanding by one multiple ack at the highest of them, the rest one
/// by one. Tags below the lowest outstanding one that were settled in earlier rounds
/// were acked then, so the multiple ack covers exactly this round's.
/// A tag not outstanding (never registered, or settled before) is dropped: acking a
/// tag twice would make the broker close the channel.
pub fn plan(outstanding: &mut BTreeSet<u64>, settled: &mut Vec<u64>) -> Round {
    settled.retain(|tag| outstanding.remove(tag));
    let low = outstanding.first().copied().unwrap_or(u64::MAX);
    settled.sort_unstable();
    let below = settled.partition_point(|t| *t < low);
    let round = Round {
        multiple: below.checked_sub(1).map(|i| settled[i]),
        singles: settled[below..].to_vec(),
    };
    settled.clear();
    round
}

/// The handle a consume loop and its delivery tasks hold.
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<Note>,
}

impl Acks {
    /// Starts the acker of `channel`; it ends once every handle is dropped and what was
    /// settled is acked.
    pub fn start(channel: Channel) -> (Self, impl Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, run(channel, rx))
    }

    /// Registers a delivery; call before its task can settle it.
    pub fn delivered(&self, tag: u64) {
        let _ = self.tx.send(Note::Delivered(tag));
    }

    /// The delivery is done with (its outcome committed, or its copy moved): ack it.
    pub fn settled(&self, tag: u64) {
        let _ = self.tx.send(Note::Settled(tag));
    }
}

async fn run(channel: Channel, mut rx: mpsc::UnboundedReceiver<Note>) {
    let mut outstanding = BTreeSet::new();
    let mut settled = Vec::new();
    let mut notes = Vec::new();
    while rx.recv_many(&mut notes, 1024).await > 0 {
        for note in notes.drain(..) {
            match note {
                Note::Delivered(tag) => {
                    outstanding.insert(tag);
                }
                Note::Settled(tag) => settled.push(tag),
            }
        }
        if settled.is_empty() {
            continue;
        }
        let before = outstanding.len();
        let round = plan(&mut outstanding, &mut settled);
        let acked = before - outstanding.len();
        let mut frames = Vec::with_capacity(round.singles.len() + 1);
        if let Some(tag) = round.multiple {
            frames.push(channel.basic_ack(tag, BasicAckOptions { multiple: true }));
        }
        for tag in round.singles {
            frames.push(channel.basic_ack(tag, BasicAckOptions::default()));
        }
        m::ack_frames(frames.len(), acked);
        // The frames cover disjoint deliveries: their order does not matter.
        let failed = futures::future::join_all(frames)
            .await
            .into_iter()
            .filter_map(Result::err);
        if let Some((count, e)) = failed.enumerate().last().map(|(i, e)| (i + 1, e)) {
            warn!(frames = count, error = %e, "ack failed; the broker will redeliver and the inbox absorbs it");
        }
    }
    debug!(outstanding = outstanding.len(), "acker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(tags: &[u64]) -> BTreeSet<u64> {
        tags.iter().copied().collect()
    }

    #[test]
    fn a_run_below_every_outstanding_delivery_is_one_multiple_ack() {
        let mut out = set(&[1, 2, 3, 4, 5]);
        let round = plan(&mut out, &mut vec![3, 1, 2]);
        assert_eq!(
            round,
            Round {
                multiple: Some(3),
                singles: vec![]
            }
        );
        assert_eq!(out, set(&[4, 5]));
    }

    #[test]
    fn tags_above_a_delivery_in_progress_are_acked_one_by_one() {
        let mut out = set(&[1, 2, 3, 4, 5]);
        let round = plan(&mut out, &mut vec![1, 3, 5]);
        assert_eq!(
            round,
            Round {
                multiple: Some(1),
                singles: vec![3, 5]
            }
        );
        assert_eq!(out, set(&[2, 4]));
        // Once 2 is settled, the multiple ack stops at it: 3 was acked already.
        let round = plan(&mut out, &mut vec![2]);
        assert_eq!(
            round,
            Round {
                multiple: Some(2),
                singles: vec![]
            }
        );
        assert_eq!(out, set(&[4]));
    }

    #[test]
    fn an_interrupted_delivery_is_never_covered() {
        // 1 is left unacknowledged (a shutdown interrupted it): it stays outstanding.
        let mut out = set(&[1, 2, 3]);
        let round = plan(&mut out, &mut vec![3, 2]);
        assert_eq!(
            round,
            Round {
                multiple: None,
                singles: vec![2, 3]
            }
        );
        assert_eq!(out, set(&[1]));
    }

    #[test]
    fn a_tag_settled_twice_or_never_delivered_is_acked_at_most_once() {
        let mut out = set(&[7, 8]);
        let round = plan(&mut out, &mut vec![8, 8, 9]);
        assert_eq!(
            round,
            Round {
                multiple: None,
                singles: vec![8]
            }
        );
        let round = plan(&mut out, &mut vec![8]);
        assert_eq!(round, Round::default());
        assert_eq!(out, set(&[7]));
    }
}
