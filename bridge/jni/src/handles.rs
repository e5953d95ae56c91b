//! Generation-checked handle tables: what Java holds instead of pointers.
//!
//! A handle is a `long`: `kind << 56 | generation << 32 | (slot + 1)`. Looking
//! one up checks the kind (a producer handle passed where a consumer is
//! expected), the slot, and the generation (a handle whose object was closed,
//! even if the slot was reused since). Any mismatch is an error — thrown as a
//! Java exception — never a dangling pointer. `0` is never a valid handle.

use std::sync::{Arc, Mutex};

use crate::error::{NativeError, NativeResult};

/// What a handle points at; encoded in its top byte.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum HandleKind {
    Master = 1,
    Producer = 2,
    Consumer = 3,
    Placer = 4,
}

/// A decoded handle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Handle {
    pub kind: u8,
    pub generation: u32,
    pub slot: u32,
}

const GENERATION_MASK: u32 = 0x00FF_FFFF;

impl Handle {
    pub fn encode(self) -> i64 {
        (i64::from(self.kind) << 56)
            | (i64::from(self.generation & GENERATION_MASK) << 32)
            | (i64::from(self.slot) + 1)
    }

    pub fn decode(raw: i64) -> Option<Handle> {
        let slot_plus_one = (raw & 0xFFFF_FFFF) as u32;
        if raw <= 0 || slot_plus_one == 0 {
            return None;
        }
        Some(Handle {
            kind: (raw >> 56) as u8,
            generation: ((raw >> 32) as u32) & GENERATION_MASK,
            slot: slot_plus_one - 1,
        })
    }
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<Arc<T>>,
}

#[derive(Debug)]
struct Slots<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

/// Objects owned by Rust and named by Java through handles. Lookups clone an
/// `Arc`, so an object being used by one thread while another closes its
/// handle lives until the last user is done.
#[derive(Debug)]
pub struct HandleTable<T> {
    kind: HandleKind,
    inner: Mutex<Slots<T>>,
}

impl<T> HandleTable<T> {
    pub const fn new(kind: HandleKind) -> Self {
        HandleTable {
            kind,
            inner: Mutex::new(Slots {
                slots: Vec::new(),
                free: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots<T>> {
        // The table's invariants hold between statements, so a panic while it
        // was held (there is no code that can panic under it) leaves it usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `value` and returns its handle.
    pub fn insert(&self, value: T) -> i64 {
        let mut inner = self.lock();
        let value = Some(Arc::new(value));
        let slot = match inner.free.pop() {
            Some(slot) => {
                let entry = &mut inner.slots[slot as usize];
                entry.value = value;
                slot
            }
            None => {
                let slot = u32::try_from(inner.slots.len()).expect("fewer than 2^32 live handles");
                inner.slots.push(Slot {
                    generation: 1,
                    value,
                });
                slot
            }
        };
        Handle {
            kind: self.kind as u8,
            generation: inner.slots[slot as usize].generation,
            slot,
        }
        .encode()
    }

    fn check(&self, raw: i64) -> NativeResult<Handle> {
        let handle = Handle::decode(raw)
            .filter(|h| h.kind == self.kind as u8)
            .ok_or_else(|| {
                NativeError::invalid(format!("{raw:#x} is not a {:?} handle", self.kind))
            })?;
        Ok(handle)
    }

    fn stale(&self, raw: i64) -> NativeError {
        NativeError::closed(format!("{:?} handle {raw:#x} was closed", self.kind))
    }

    /// The object behind `raw`.
    pub fn get(&self, raw: i64) -> NativeResult<Arc<T>> {
        let handle = self.check(raw)?;
        let inner = self.lock();
        match inner.slots.get(handle.slot as usize) {
            Some(Slot {
                generation,
                value: Some(value),
            }) if *generation & GENERATION_MASK == handle.generation => Ok(Arc::clone(value)),
            _ => Err(self.stale(raw)),
        }
    }

    /// Takes the object out; the handle (and every copy of it) is stale from now on.
    pub fn remove(&self, raw: i64) -> NativeResult<Arc<T>> {
        let handle = self.check(raw)?;
        let mut inner = self.lock();
        let taken = match inner.slots.get_mut(handle.slot as usize) {
            Some(slot)
                if slot.generation & GENERATION_MASK == handle.generation
                    && slot.value.is_some() =>
            {
                slot.generation = (slot.generation + 1) & GENERATION_MASK;
                if slot.generation == 0 {
                    slot.generation = 1;
                }
                slot.value.take()
            }
            _ => None,
        };
        match taken {
            Some(value) => {
                inner.free.push(handle.slot);
                Ok(value)
            }
            None => Err(self.stale(raw)),
        }
    }

    /// Number of live handles.
    pub fn len(&self) -> usize {
        self.lock()
            .slots
            .iter()
            .filter(|s| s.value.is_some())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::NativeErrorKind;

    #[test]
    fn handles_roundtrip_and_go_stale_when_removed() {
        let table = HandleTable::new(HandleKind::Producer);
        let a = table.insert("a".to_string());
        assert!(a > 0);
        assert_eq!(*table.get(a).expect("live"), "a");
        assert_eq!(*table.remove(a).expect("live"), "a");
        assert_eq!(
            table.get(a).expect_err("stale").kind,
            NativeErrorKind::Closed
        );
        assert_eq!(
            table.remove(a).expect_err("stale").kind,
            NativeErrorKind::Closed
        );
        // The slot is reused with a new generation: the old handle stays stale.
        let b = table.insert("b".to_string());
        assert_ne!(a, b);
        assert_eq!(
            Handle::decode(a).map(|h| h.slot),
            Handle::decode(b).map(|h| h.slot)
        );
        assert_eq!(
            table.get(a).expect_err("stale").kind,
            NativeErrorKind::Closed
        );
        assert_eq!(*table.get(b).expect("live"), "b");
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn foreign_and_garbage_handles_are_rejected() {
        let producers = HandleTable::new(HandleKind::Producer);
        let consumers: HandleTable<u32> = HandleTable::new(HandleKind::Consumer);
        let p = producers.insert(1u32);
        assert_eq!(
            consumers.get(p).expect_err("wrong kind").kind,
            NativeErrorKind::InvalidArgument
        );
        for raw in [
            0,
            -1,
            i64::MIN,
            1,
            0x0200_0001_0000_0000,
            p + (1 << 32),
            p + 5,
        ] {
            assert!(producers.get(raw).is_err(), "{raw:#x} must not resolve");
        }
    }

    #[test]
    fn an_object_in_use_outlives_its_handle() {
        let table = HandleTable::new(HandleKind::Consumer);
        let h = table.insert(vec![1u8, 2, 3]);
        let in_use = table.get(h).expect("live");
        drop(table.remove(h).expect("live"));
        assert_eq!(*in_use, vec![1, 2, 3]);
    }
}
