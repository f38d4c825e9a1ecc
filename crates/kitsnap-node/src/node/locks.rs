//! Locks by name: work on one key (a mount name, a layer blob) is serialised, work on
//! different keys runs in parallel, and no lock outlives its last user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<AsyncMutex<()>>>>,
}

impl KeyedLocks {
    /// Waits for the lock of `key`; it is released when the guard drops.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(AsyncMutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_waits_other_key_does_not() {
        let locks = Arc::new(KeyedLocks::default());
        let a = locks.lock("a").await;
        // Another key is free while "a" is held.
        let b = tokio::time::timeout(Duration::from_secs(5), locks.lock("b")).await;
        assert!(b.is_ok());
        // The same key is not.
        let again = tokio::time::timeout(Duration::from_millis(100), locks.lock("a")).await;
        assert!(again.is_err());
        drop(a);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), locks.lock("a"))
                .await
                .is_ok()
        );
        drop(b);
        assert!(
            locks
                .map
                .lock()
                .unwrap()
                .values()
                .all(|w| w.strong_count() == 0)
        );
    }
}
