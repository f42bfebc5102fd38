//! Admission control for model work: a fixed number of searches run at
//! once, a bounded number wait, and the rest are turned away at once (503)
//! instead of piling up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Workers plus a bounded waiting line.
pub struct Gate {
    workers: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
}

/// A place in the gate (running or waiting); given back when dropped.
pub struct Ticket {
    admitted: Arc<AtomicUsize>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// `workers` searches at once, `queue` more waiting.
    pub fn new(workers: usize, queue: usize) -> Self {
        Gate {
            workers: Arc::new(Semaphore::new(workers)),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: workers + queue,
        }
    }

    /// A place, or `None` when every worker is busy and the line is full.
    pub fn enter(&self) -> Option<Ticket> {
        let mut n = self.admitted.load(Ordering::Acquire);
        loop {
            if n >= self.capacity {
                return None;
            }
            match self
                .admitted
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(Ticket {
                        admitted: self.admitted.clone(),
                    })
                }
                Err(now) => n = now,
            }
        }
    }

    /// Waits for a worker.
    pub async fn worker(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed, so acquiring cannot fail.
        self.workers
            .clone()
            .acquire_owned()
            .await
            .expect("the gate's semaphore is never closed")
    }

    /// Searches admitted (running and waiting).
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Most searches admitted at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_bounded_and_places_come_back() {
        let g = Gate::new(2, 1);
        let a = g.enter().unwrap();
        let b = g.enter().unwrap();
        let c = g.enter().unwrap();
        assert!(
            g.enter().is_none(),
            "a fourth place beyond 2 workers + 1 waiting"
        );
        assert_eq!(g.admitted(), 3);
        drop(b);
        let d = g.enter();
        assert!(d.is_some());
        drop((a, c, d));
        assert_eq!(g.admitted(), 0);
    }
}
