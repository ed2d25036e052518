//! Acquire, extend and release a lock, then run work under an auto-extended lock.
//!
//! ```sh
//! cargo run --example quickstart --features testing      # 3 local servers
//! cargo run --example quickstart --features testing -- redis://127.0.0.1:7001 redis://127.0.0.1:7002 redis://127.0.0.1:7003
//! ```

mod common;

use std::time::Duration;

use dragonlock::{Redlock, RedlockOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nodes = common::Nodes::from_args_or_local(3)?;
    let redlock = Redlock::connect_with(
        &nodes.urls,
        RedlockOptions::default().key_prefix("dragonlock-example:"),
    )
    .await?;
    redlock.wait_for_quorum(Duration::from_secs(5)).await?;

    let mut lock = redlock
        .acquire("invoice:17", Duration::from_secs(10))
        .await?;
    println!(
        "locked {} with token {}, valid for {:?}",
        lock.resource(),
        lock.token(),
        lock.remaining()
    );
    lock.extend(Duration::from_secs(10)).await?;
    println!("extended: valid for {:?}", lock.remaining());
    // Release returns once a quorum confirmed; the other nodes get the request too.
    let confirmed = lock.release().await?;
    println!(
        "released: {confirmed} of {} nodes confirmed by the time the quorum of {} did \
         (the rest are released too; ReleaseWait::All waits for them)",
        redlock.nodes().len(),
        redlock.quorum()
    );

    match redlock
        .try_acquire_many(&["account:1", "account:2"], Duration::from_secs(5))
        .await
    {
        Ok(both) => println!(
            "both accounts locked; released ({} nodes confirmed)",
            both.release().await?
        ),
        Err(e) if e.is_busy() => println!("an account is busy"),
        Err(e) => return Err(e.into()),
    }

    let answer = redlock
        .with_lock(
            "report",
            Duration::from_secs(1),
            Some(Duration::from_secs(60)),
            |signal| async move {
                // Longer than the ttl: renewed every ttl/3 while this runs.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                assert!(!signal.is_lost());
                42
            },
        )
        .await?;
    println!("work under an auto-extended lock returned {answer}");
    Ok(())
}
