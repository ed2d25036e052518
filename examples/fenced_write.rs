//! A fenced write: why a lock alone does not protect a resource from a holder that paused, and
//! how fencing tokens do.
//!
//! Two clients (each its own `Redlock` and connections, as two processes would have) write to
//! a toy store that remembers the highest fencing token it has accepted and refuses anything
//! lower. Client A takes the lock and writes, then stalls (a GC pause, a swapped-out process)
//! past its lock's validity. Client B takes the lock, which A's expiry freed, and writes. A
//! wakes up and writes without checking its lock: the store refuses it, because A's token is
//! lower than B's.
//!
//! ```sh
//! cargo run --example fenced_write --features testing                  # 3 local servers
//! cargo run --example fenced_write --features testing -- redis://127.0.0.1:7001 …
//! ```
//!
//! With URLs of your own: fencing keeps one small counter key per resource on every node for
//! good (`dragonlock-example:fenced:ledger:dragonlock-fence` here).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dragonlock::{Redlock, RedlockOptions};

/// A short ttl, so that A's lock runs out while A is stalled.
const TTL: Duration = Duration::from_millis(300);

/// The resource's side: the highest token accepted per key, and the data.
#[derive(Default)]
struct FencedStore {
    highest: HashMap<String, u64>,
    data: HashMap<String, String>,
}

impl FencedStore {
    /// Writes `value` under `key` if `token` is at least the highest one seen for `key`.
    fn write(&mut self, key: &str, value: &str, token: u64) -> Result<(), String> {
        let highest = self.highest.entry(key.to_string()).or_insert(0);
        if token < *highest {
            return Err(format!(
                "refused: token {token} is lower than {highest}, which a newer holder used"
            ));
        }
        *highest = token;
        self.data.insert(key.to_string(), value.to_string());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nodes = common::Nodes::from_args_or_local(3)?;
    let options = RedlockOptions::default()
        .key_prefix("dragonlock-example:fenced:")
        .fencing(true);
    let client_a = Redlock::connect_with(&nodes.urls, options.clone()).await?;
    let client_b = Redlock::connect_with(&nodes.urls, options).await?;
    client_a.wait_for_quorum(Duration::from_secs(5)).await?;
    client_b.wait_for_quorum(Duration::from_secs(5)).await?;
    let store = Arc::new(Mutex::new(FencedStore::default()));

    // A takes the lock and writes with its token.
    let lock_a = client_a.acquire("ledger", TTL).await?;
    let token_a = lock_a.fencing_token().expect("fencing is on");
    store
        .lock()
        .unwrap()
        .write("ledger", "written by A", token_a)?;
    println!("A: locked with token {token_a}, wrote");

    // A stalls past its validity, still holding its `Lock` (no release happens).
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    println!(
        "A: stalled for {:?}; is_valid() = {}",
        TTL + Duration::from_millis(100),
        lock_a.is_valid()
    );

    // B takes the lock, now free on the nodes, and writes with its larger token.
    let lock_b = client_b.acquire("ledger", Duration::from_secs(5)).await?;
    let token_b = lock_b.fencing_token().expect("fencing is on");
    store
        .lock()
        .unwrap()
        .write("ledger", "written by B", token_b)?;
    println!("B: locked with token {token_b}, wrote");

    // A wakes up and writes without checking `lock_a.is_valid()`: the store refuses.
    let stale = store
        .lock()
        .unwrap()
        .write("ledger", "written by A, late", token_a);
    match &stale {
        Ok(()) => println!("A: the stale write went through"),
        Err(e) => println!("A: {e}"),
    }
    assert!(stale.is_err(), "the store must refuse the stale writer");
    assert_eq!(
        store.lock().unwrap().data["ledger"],
        "written by B",
        "B's write must stand"
    );

    // B releases. A's release finds the lock gone: an error, so A learns it outlived its lock.
    lock_b.release().await?;
    match lock_a.release().await {
        Err(e) if e.is_not_held() => println!("A: release says the lock was not held: {e}"),
        other => return Err(format!("A's release should be NotHeld: {other:?}").into()),
    }
    Ok(())
}
