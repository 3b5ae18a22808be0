//! The statements concurrent commands share, each batched by its own [`Batcher`]: the
//! receipt with the group lease, lease retries, link reads, attempt markers and the
//! outcome commit (a group commit).

use std::{sync::Arc, time::Duration};

use entity::link;

use super::{
    Attempt, Begin, Begun, Completion, Deferral, FirstAttempt, GroupKey, Store, batch::Batcher,
};

/// The statements concurrent commands share (see [`Batcher`]): the receipt with the
/// group lease, lease retries, the link read, the attempt marker, the outcome commit and
/// deferrals.
/// A batch never holds two requests of one group (the in-process lane admits one command
/// per group and the group lease is held until the outcome commits), so concurrent
/// batches touch disjoint rows.
#[derive(Clone)]
pub struct Batches {
    /// Receipt and lease (and on PostgreSQL a first attempt) in one statement.
    pub begin: Batcher<Begin, Begun>,
    pub leases: Batcher<String, bool>,
    pub links: Batcher<GroupKey, Option<link::Model>>,
    pub attempts: Batcher<Attempt, bool>,
    /// Link read and attempt marker in one statement (see [`Store::first_attempt_many`]).
    pub first_attempts: Batcher<FirstAttempt, (bool, Option<link::Model>)>,
    /// Group commit: outcomes submitted while one batch commits are committed together
    /// in the next transaction, so concurrent commands share one wait for the disk.
    pub commits: Batcher<Arc<Completion>, bool>,
    /// Commands put to wait in the database (see [`Store::defer_many`]).
    pub deferrals: Batcher<Deferral, ()>,
}

const MAX_BATCH: usize = 128;

impl Batches {
    /// Starts the batching tasks; leases are taken for `owner` with `ttl`.
    pub fn start(store: &Store, owner: &str, ttl: Duration) -> Self {
        let begin = {
            let (store, owner) = (store.clone(), Arc::<str>::from(owner));
            Batcher::start("begin", 1, MAX_BATCH, move |batch: Arc<[Begin]>| {
                let (store, owner) = (store.clone(), owner.clone());
                async move { store.begin_many(&batch, &owner, ttl).await }
            })
        };
        let leases = {
            let (store, owner) = (store.clone(), Arc::<str>::from(owner));
            Batcher::start("lease", 1, MAX_BATCH, move |lanes: Arc<[String]>| {
                let (store, owner) = (store.clone(), owner.clone());
                async move { store.try_lease_many(&lanes, &owner, ttl).await }
            })
        };
        let links = {
            let store = store.clone();
            Batcher::start("link_get", 1, MAX_BATCH, move |keys: Arc<[GroupKey]>| {
                let store = store.clone();
                async move { store.link_get_many(&keys).await }
            })
        };
        let attempts = {
            let store = store.clone();
            Batcher::start("mark_executing", 1, MAX_BATCH, move |a: Arc<[Attempt]>| {
                let store = store.clone();
                async move { store.mark_executing_many(&a).await }
            })
        };
        let first_attempts = {
            let store = store.clone();
            Batcher::start(
                "first_attempt",
                1,
                MAX_BATCH,
                move |a: Arc<[FirstAttempt]>| {
                    let store = store.clone();
                    async move { store.first_attempt_many(&a).await }
                },
            )
        };
        let commits = {
            let store = store.clone();
            Batcher::start("commit", 2, MAX_BATCH, move |c: Arc<[Arc<Completion>]>| {
                let store = store.clone();
                async move {
                    let all: Vec<&Completion> = c.iter().map(|c| c.as_ref()).collect();
                    store.commit_batch(&all).await
                }
            })
        };
        let deferrals = {
            let (store, owner) = (store.clone(), Arc::<str>::from(owner));
            Batcher::start("defer", 1, MAX_BATCH, move |rows: Arc<[Deferral]>| {
                let (store, owner) = (store.clone(), owner.clone());
                async move {
                    store.defer_many(&rows, &owner).await?;
                    Ok(vec![(); rows.len()])
                }
            })
        };
        Self {
            begin,
            leases,
            links,
            attempts,
            first_attempts,
            commits,
            deferrals,
        }
    }
}
