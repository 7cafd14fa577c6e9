//! The two object tables of a connection.
//!
//! *Exports* are local objects the peer holds proxies to. Each entry counts
//! the references sent; the peer's batched release messages count them back
//! down, and the entry goes when the count reaches zero. An object is keyed by
//! its address, so the same object sent twice gets the same id (identity).
//!
//! *Imports* map the peer's object ids to the live proxy for each, held
//! weakly: the same remote object received twice yields the same proxy while
//! one is alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::proxy::ProxyInner;
use crate::remote::Remote;

/// A fast hasher, seeded per process (the peer picks the ids of imports).
type Hash = foldhash::fast::RandomState;

/// Id of the root object on each side; never counted, never released.
pub const ROOT_ID: u64 = 0;

struct Exported {
    obj: Arc<dyn Remote>,
    key: usize,
    refs: u64,
}

#[derive(Default)]
struct Exports {
    next_id: u64,
    by_id: HashMap<u64, Exported, Hash>,
    by_key: HashMap<usize, u64, Hash>,
}

/// Local objects held by the peer.
#[derive(Default)]
pub(crate) struct ExportTable {
    inner: Mutex<Exports>,
}

/// The identity key of an object: its address.
pub(crate) fn object_key(obj: &Arc<dyn Remote>) -> usize {
    Arc::as_ptr(obj) as *const () as usize
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent maps (every update
    // is a single insert or remove), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ExportTable {
    /// Counts one more reference sent to the peer and returns the object's id.
    /// `make` builds the object to store when `key` is not exported yet.
    /// Fails (with the limit) when `key` is new and `limit` objects are
    /// exported already.
    pub(crate) fn export_with(
        &self,
        key: usize,
        limit: usize,
        make: impl FnOnce() -> Arc<dyn Remote>,
    ) -> Result<u64, usize> {
        let mut t = lock(&self.inner);
        if let Some(&id) = t.by_key.get(&key) {
            if let Some(e) = t.by_id.get_mut(&id) {
                e.refs += 1;
                return Ok(id);
            }
        }
        if t.by_id.len() >= limit {
            return Err(limit);
        }
        t.next_id += 1;
        let id = t.next_id;
        t.by_id.insert(
            id,
            Exported {
                obj: make(),
                key,
                refs: 1,
            },
        );
        t.by_key.insert(key, id);
        Ok(id)
    }

    /// The object with id `id`, if the peer still holds it.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<dyn Remote>> {
        lock(&self.inner).by_id.get(&id).map(|e| e.obj.clone())
    }

    /// Counts `n` references released by the peer; returns the object if this
    /// was its last reference (the caller drops it outside the lock).
    pub(crate) fn release(&self, id: u64, n: u64) -> Option<Arc<dyn Remote>> {
        let mut t = lock(&self.inner);
        let entry = t.by_id.get_mut(&id)?;
        entry.refs = entry.refs.saturating_sub(n);
        if entry.refs > 0 {
            return None;
        }
        let gone = t.by_id.remove(&id)?;
        t.by_key.remove(&gone.key);
        Some(gone.obj)
    }

    /// Releases everything (the connection closed); returns the objects so
    /// the caller drops them outside the lock.
    pub(crate) fn clear(&self) -> Vec<Arc<dyn Remote>> {
        let mut t = lock(&self.inner);
        t.by_key.clear();
        t.by_id.drain().map(|(_, e)| e.obj).collect()
    }

    /// How many objects the peer holds.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).by_id.len()
    }
}

/// Distinct type names of imports kept for sharing; beyond this many (a
/// peer inventing names), each proxy gets its own copy.
const MAX_SHARED_NAMES: usize = 256;

/// Proxies to the peer's objects, by the peer's id.
#[derive(Default)]
pub(crate) struct ImportTable {
    inner: Mutex<Imports>,
}

#[derive(Default)]
struct Imports {
    live: HashMap<u64, Weak<ProxyInner>, Hash>,
    /// The type names proxies share (a proxy per object, a name per type).
    names: std::collections::HashSet<Arc<str>, Hash>,
}

impl Imports {
    fn name(&mut self, type_name: &str) -> Arc<str> {
        if let Some(name) = self.names.get(type_name) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(type_name);
        if self.names.len() < MAX_SHARED_NAMES {
            self.names.insert(name.clone());
        }
        name
    }
}

impl ImportTable {
    /// The live proxy for `id` with one more reference counted, or a new one
    /// built by `make` from the type's (shared) name.
    pub(crate) fn import(
        &self,
        id: u64,
        type_name: &str,
        make: impl FnOnce(Arc<str>) -> Arc<ProxyInner>,
    ) -> Arc<ProxyInner> {
        let mut t = lock(&self.inner);
        if let Some(live) = t.live.get(&id).and_then(Weak::upgrade) {
            live.add_ref();
            return live;
        }
        let fresh = make(t.name(type_name));
        t.live.insert(id, Arc::downgrade(&fresh));
        fresh
    }

    /// Forgets `id` if its entry is the proxy at `ptr` (a newer proxy for the
    /// same id may have replaced it).
    pub(crate) fn forget(&self, id: u64, ptr: *const ProxyInner) {
        let mut t = lock(&self.inner);
        if t.live
            .get(&id)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), ptr))
        {
            t.live.remove(&id);
        }
    }

    /// Forgets everything (the connection closed).
    pub(crate) fn clear(&self) {
        let mut t = lock(&self.inner);
        t.live.clear();
        t.names.clear();
    }

    /// How many live proxies this side holds.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner)
            .live
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_share_type_names_up_to_a_bound() {
        let mut imports = Imports::default();
        let a = imports.name("Worker");
        let b = imports.name("Worker");
        assert!(Arc::ptr_eq(&a, &b), "one name per type");
        // A peer inventing names fills the shared set only so far; the
        // names beyond still come back right, each a copy of its own.
        for i in 0..MAX_SHARED_NAMES * 2 {
            assert_eq!(&*imports.name(&format!("T{i}")), format!("T{i}"));
        }
        assert_eq!(imports.names.len(), MAX_SHARED_NAMES);
        let late = format!("T{}", MAX_SHARED_NAMES * 2 - 1);
        assert!(!Arc::ptr_eq(&imports.name(&late), &imports.name(&late)));
        assert!(Arc::ptr_eq(&imports.name("Worker"), &a));
    }
}
