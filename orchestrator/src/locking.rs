//! Locks on state shared by every flow, taken so that a panic elsewhere cannot poison them.
//!
//! A `std::sync::Mutex` is poisoned when a thread panics while holding it, and every later
//! `lock().expect(..)` then panics too: one bad input for one flow would turn every request of
//! every tenant into a 500 until restart. The maps guarded here stay consistent between
//! statements (no invariant spans a panic point), so the guard of a poisoned lock is taken as
//! it is.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering the guard if a panic poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_is_still_usable() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
