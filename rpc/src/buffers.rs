//! Recycled large buffers: frame bodies received, read bodies assembled,
//! push batches built. A buffer is wrapped in `Bytes` (`Bytes::from_owner`)
//! and goes back to its pool when the last slice of it is dropped. Reusing
//! buffers keeps the allocator out of the data path: no page faults and
//! zeroing of fresh memory for every frame, and no freed memory stranded in
//! the allocator's arenas, so resident memory tracks what is really in use.
//!
//! Buffers come in size classes (multiples of 64 KiB up to 2 MiB, of 1 MiB
//! above). The pool never holds more than its limit in buffers, in use and
//! free together: a new buffer first evicts free buffers of other classes.

use std::sync::{Arc, Mutex};

const SMALL_STEP: usize = 64 * 1024;
const SMALL_MAX: usize = 2 * 1024 * 1024;
const LARGE_STEP: usize = 1024 * 1024;

/// The size of the class that holds `len` bytes.
pub fn class_size(len: usize) -> usize {
    let len = len.max(1);
    if len <= SMALL_MAX {
        len.div_ceil(SMALL_STEP) * SMALL_STEP
    } else {
        len.div_ceil(LARGE_STEP) * LARGE_STEP
    }
}

#[derive(Debug, Default)]
struct Free {
    /// Free buffers by class size.
    by_class: std::collections::BTreeMap<usize, Vec<Vec<u8>>>,
    /// Bytes of all buffers handed out and not dropped, plus free ones.
    allocated: usize,
    free_bytes: usize,
}

#[derive(Debug)]
pub struct BufferPool {
    limit: usize,
    free: Mutex<Free>,
}

/// A buffer of the pool holding `len` meaningful bytes; returns to the pool on drop.
#[derive(Debug)]
pub struct PooledBuf {
    data: Vec<u8>,
    len: usize,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl AsMut<[u8]> for PooledBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}

impl PooledBuf {
    /// Bytes the buffer can hold (its class size).
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Sets how many bytes are meaningful (at most the capacity).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.data.len(),
            "pooled buffer length past its capacity"
        );
        self.len = len;
    }

    /// The whole buffer, past the meaningful length too.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Freezes the first `len()` bytes into `Bytes` that return the buffer to
    /// its pool when their last slice is dropped.
    pub fn freeze(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self)
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.data));
    }
}

impl BufferPool {
    /// A pool holding at most `limit` bytes of buffers.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(BufferPool {
            limit,
            free: Mutex::new(Free::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().expect("buffer pool lock poisoned")
    }

    /// A buffer for `len` bytes (contents unspecified; callers overwrite them).
    /// Never fails: past the limit a buffer is still allocated, but not kept
    /// when it comes back. (The worker's memory budget reserves
    /// `class_size(len)` before taking a buffer, so its pool stays in bounds.)
    pub fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let class = class_size(len);
        let reused = {
            let mut free = self.lock();
            let reused = free.by_class.get_mut(&class).and_then(Vec::pop);
            if reused.is_some() {
                free.free_bytes -= class;
            } else {
                // Make room by dropping free buffers of other classes.
                while free.allocated + class > self.limit && free.free_bytes > 0 {
                    let Some((&size, list)) = free.by_class.iter_mut().find(|(_, l)| !l.is_empty())
                    else {
                        break;
                    };
                    list.pop();
                    free.free_bytes -= size;
                    free.allocated -= size;
                }
                free.allocated += class;
            }
            reused
        };
        let data = reused.unwrap_or_else(|| vec![0u8; class]);
        PooledBuf {
            data,
            len,
            pool: Arc::clone(self),
        }
    }

    fn give_back(&self, data: Vec<u8>) {
        let class = data.len();
        let mut free = self.lock();
        if free.allocated > self.limit {
            // Over the limit (a burst of rounding): let this one go.
            free.allocated -= class;
            return;
        }
        free.free_bytes += class;
        free.by_class.entry(class).or_default().push(data);
    }

    /// Bytes of buffers in use or free in the pool.
    pub fn allocated(&self) -> usize {
        self.lock().allocated
    }

    /// Bytes of buffers handed out and not yet given back.
    pub fn in_use(&self) -> usize {
        let free = self.lock();
        free.allocated - free.free_bytes
    }
}

/// The process-wide pool for buffers outside any memory budget: bodies
/// received by clients, producers' push batches, a worker's read bodies
/// (bounded by credits). Keeps at most 256 MiB of buffers.
pub fn shared_pool() -> &'static Arc<BufferPool> {
    static POOL: std::sync::OnceLock<Arc<BufferPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| BufferPool::new(256 * 1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up() {
        assert_eq!(class_size(0), 64 * 1024);
        assert_eq!(class_size(64 * 1024), 64 * 1024);
        assert_eq!(class_size(64 * 1024 + 1), 128 * 1024);
        assert_eq!(class_size(2 * 1024 * 1024 + 1), 3 * 1024 * 1024);
    }

    #[test]
    fn buffers_are_reused_and_the_pool_stays_within_its_limit() {
        let pool = BufferPool::new(1024 * 1024);
        let a = pool.take(100_000);
        assert_eq!(a.as_ref().len(), 100_000);
        let ptr = a.data.as_ptr();
        drop(a);
        let b = pool.take(120_000);
        assert_eq!(b.data.as_ptr(), ptr, "same class reuses the freed buffer");
        assert_eq!(pool.allocated(), 128 * 1024);
        drop(b);
        // A different class evicts the free 128 KiB buffer once the limit needs it.
        let big = pool.take(1024 * 1024 - 10);
        assert_eq!(pool.allocated(), 1024 * 1024);
        drop(big);
        assert_eq!(pool.allocated(), 1024 * 1024);
    }
}
