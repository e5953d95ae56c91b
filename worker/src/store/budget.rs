//! The worker's memory budget: bytes of pushed data held in memory. A push
//! reserves its size before its body is read off the socket, so when the
//! budget is short the producer's connection simply stops being read
//! (backpressure) while the flusher frees memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::StoreError;

/// A reservation against the budget; released on drop.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// A reservation of nothing (for empty bodies).
    pub fn empty() -> Self {
        Reservation { _permit: None }
    }

    /// Adds `other` to this reservation (both from the same budget).
    pub fn merge(&mut self, other: Reservation) {
        match (&mut self._permit, other._permit) {
            (_, None) => {}
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
        }
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self._permit.as_ref().map_or(0, |p| p.num_permits() as u64)
    }
}

#[derive(Debug)]
pub struct MemoryBudget {
    total: u64,
    semaphore: Arc<Semaphore>,
    peak: AtomicU64,
    /// Woken when a reservation has to wait: the flusher should free memory.
    pressure: Arc<Notify>,
}

impl MemoryBudget {
    pub fn new(total: u64) -> Self {
        let permits = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        MemoryBudget {
            total: permits as u64,
            semaphore: Arc::new(Semaphore::new(permits)),
            peak: AtomicU64::new(0),
            pressure: Arc::new(Notify::new()),
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn used(&self) -> u64 {
        self.total - self.semaphore.available_permits() as u64
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn pressure(&self) -> &Arc<Notify> {
        &self.pressure
    }

    /// Reserves `bytes`, waiting while the budget is short. Fails only if
    /// `bytes` exceeds the whole budget.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, StoreError> {
        if bytes == 0 {
            return Ok(Reservation::empty());
        }
        if bytes > self.total {
            return Err(StoreError::OverBudget {
                bytes,
                total: self.total,
            });
        }
        let n = u32::try_from(bytes).map_err(|_| StoreError::ReservationTooLarge { bytes })?;
        let permit = match Arc::clone(&self.semaphore).try_acquire_many_owned(n) {
            Ok(permit) => permit,
            Err(_) => {
                self.pressure.notify_one();
                Arc::clone(&self.semaphore)
                    .acquire_many_owned(n)
                    .await
                    .map_err(|_| StoreError::BudgetClosed)?
            }
        };
        self.peak.fetch_max(self.used(), Ordering::Relaxed);
        Ok(Reservation {
            _permit: Some(permit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use terrace_rpc::clock;

    #[tokio::test]
    async fn reservations_wait_for_released_memory() {
        let budget = Arc::new(MemoryBudget::new(100));
        let a = budget.reserve(60).await.expect("fits");
        assert_eq!(budget.used(), 60);
        assert!(matches!(
            budget.reserve(101).await,
            Err(StoreError::OverBudget {
                bytes: 101,
                total: 100
            })
        ));
        let waiter = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.reserve(50).await.map(|_| ()) })
        };
        clock::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "must wait while only 40 bytes are free"
        );
        drop(a);
        waiter.await.expect("join").expect("reserved after release");
        assert_eq!(budget.peak(), 60);
        assert_eq!(budget.used(), 0);
    }
}
