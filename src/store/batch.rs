//! Natural batching of database statements: requests that arrive while a batch runs are
//! executed together in the next one, so concurrent commands share round trips. Nothing
//! waits for a batch to fill; under no load a batch holds one request.

use std::{future::Future, sync::Arc};

use sea_orm::DbErr;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::StoreError;

type Request<Q, A> = (Q, oneshot::Sender<Result<A, StoreError>>);

/// A queue of requests of one kind, executed in batches by a few tasks.
pub struct Batcher<Q, A> {
    tx: mpsc::UnboundedSender<Request<Q, A>>,
    name: &'static str,
}

impl<Q, A> Clone for Batcher<Q, A> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            name: self.name,
        }
    }
}

impl<Q, A> Batcher<Q, A>
where
    Q: Clone + Send + Sync + 'static,
    A: Send + 'static,
{
    /// Starts `runners` tasks that take up to `max_batch` waiting requests at a time and
    /// pass them to `run`, which answers each request in order (one answer per request).
    /// When a batch of several fails, each request is retried on its own, so that one bad
    /// row cannot fail the others. The tasks end when every handle is dropped.
    pub fn start<F, Fut>(name: &'static str, runners: usize, max_batch: usize, run: F) -> Self
    where
        F: Fn(Arc<[Q]>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<A>, StoreError>> + Send,
    {
        let (tx, rx) = mpsc::unbounded_channel::<Request<Q, A>>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..runners.max(1) {
            let (rx, run) = (rx.clone(), run.clone());
            tokio::spawn(async move {
                loop {
                    let mut batch = Vec::new();
                    {
                        let mut rx = rx.lock().await;
                        if rx.recv_many(&mut batch, max_batch.max(1)).await == 0 {
                            return;
                        }
                    }
                    let (requests, replies): (Vec<Q>, Vec<_>) = batch.into_iter().unzip();
                    let (n, started) = (requests.len(), std::time::Instant::now());
                    let answers = execute(&run, requests).await;
                    crate::ops::metrics::batch(name, n, started.elapsed());
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
            });
        }
        Self { tx, name }
    }

    /// Submits one request now (so requests queue in call order) and returns its answer.
    pub fn call(&self, request: Q) -> impl Future<Output = Result<A, StoreError>> + use<Q, A> {
        let (reply, answer) = oneshot::channel();
        let name = self.name;
        let stopped = move || StoreError::from(DbErr::Custom(format!("{name} queue stopped")));
        let sent = self.tx.send((request, reply)).is_ok();
        async move {
            if !sent {
                return Err(stopped());
            }
            answer.await.map_err(|_| stopped())?
        }
    }
}

/// Runs one batch; on failure of a batch of several, each request on its own.
async fn execute<Q, A, F, Fut>(run: &F, requests: Vec<Q>) -> Vec<Result<A, StoreError>>
where
    Q: Clone,
    F: Fn(Arc<[Q]>) -> Fut,
    Fut: Future<Output = Result<Vec<A>, StoreError>>,
{
    let n = requests.len();
    let all: Arc<[Q]> = requests.into();
    match run(all.clone()).await {
        Ok(answers) if answers.len() == n => answers.into_iter().map(Ok).collect(),
        Ok(answers) => {
            let got = answers.len();
            (0..n)
                .map(|_| {
                    Err(StoreError::from(DbErr::Custom(format!(
                        "batch answered {got} of {n} requests"
                    ))))
                })
                .collect()
        }
        Err(e) if n == 1 => vec![Err(e)],
        Err(_) => {
            let mut out = Vec::with_capacity(n);
            for q in all.iter() {
                let one: Arc<[Q]> = Arc::from(vec![q.clone()]);
                out.push(match run(one).await {
                    Ok(mut a) if a.len() == 1 => Ok(a.remove(0)),
                    Ok(a) => Err(StoreError::from(DbErr::Custom(format!(
                        "batch answered {} of 1 requests",
                        a.len()
                    )))),
                    Err(e) => Err(e),
                });
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_queued_during_a_batch_run_together_in_the_next() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let started = Arc::new(tokio::sync::Notify::new());
        let first_started = started.clone();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let opened = gate.clone();
        let b = Batcher::start("test", 1, 64, move |qs: Arc<[u32]>| {
            let (seen, started, gate) = (seen.clone(), started.clone(), gate.clone());
            async move {
                seen.lock().unwrap().push(qs.len());
                started.notify_one();
                gate.acquire().await.expect("gate").forget();
                Ok(qs.iter().map(|q| q * 10).collect())
            }
        });
        let first = b.call(0);
        let first = tokio::spawn(first);
        first_started.notified().await;
        let rest: Vec<_> = (1..20u32).map(|i| b.call(i)).collect();
        opened.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), 0);
        let answers = futures::future::join_all(rest).await;
        for (i, answer) in (1..20u32).zip(answers) {
            assert_eq!(answer.unwrap(), i * 10);
        }
        assert_eq!(*sizes.lock().unwrap(), [1, 19]);
    }

    #[tokio::test]
    async fn a_failing_batch_is_retried_one_by_one() {
        let b = Batcher::start("test", 2, 64, |qs: Arc<[i32]>| async move {
            if qs.iter().any(|q| *q < 0) {
                return Err(DbErr::Custom("negative".into()).into());
            }
            Ok(qs.to_vec())
        });
        let results = futures::future::join_all([1, -1, 2].map(|q| b.call(q))).await;
        assert_eq!(results[0].as_ref().ok(), Some(&1));
        assert!(results[1].is_err());
        assert_eq!(results[2].as_ref().ok(), Some(&2));
    }

    #[tokio::test]
    async fn a_short_answer_fails_every_request_of_the_batch() {
        let b = Batcher::start("test", 1, 64, |_: Arc<[i32]>| async move {
            Ok(Vec::<i32>::new())
        });
        let err = b.call(1).await.unwrap_err();
        assert!(err.to_string().contains("answered 0 of 1"), "{err}");
    }
}
