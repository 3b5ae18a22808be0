//! The expiry scheduler (to be implemented).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    amqp::{Publisher, Topology},
    config::Settings,
    store::Store,
};

pub struct Scheduler {
    #[allow(dead_code)]
    store: Store,
    #[allow(dead_code)]
    publisher: Arc<Publisher>,
    #[allow(dead_code)]
    topology: Topology,
    #[allow(dead_code)]
    settings: Arc<Settings>,
}

impl Scheduler {
    pub fn new(
        store: Store,
        publisher: Arc<Publisher>,
        topology: Topology,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            store,
            publisher,
            topology,
            settings,
        }
    }

    pub async fn run(self, stop: CancellationToken) {
        stop.cancelled().await;
    }
}
