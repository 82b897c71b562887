//! Spawns nested tasks — a setup task, then per-"request" handlers that spawn helpers — and
//! prints the live task hierarchy as JSON, in the shape of asyncio's task-hierarchy dumps.
//!
//! Run: `cargo run --example task_tree`

use std::time::Duration;

use ringloop::{sleep, spawn_named, task_tree, yield_now, Cancelled, Runtime};

async fn helper(ms: u64) -> Result<(), Cancelled> {
    sleep(Duration::from_millis(ms)).await
}

async fn handle_request(n: u32) -> Result<u32, Cancelled> {
    let parse = spawn_named(format!("request-{n}/parse"), helper(50));
    let query = spawn_named(format!("request-{n}/db-query"), helper(100));
    parse.await.ok();
    query.await.ok();
    Ok(n)
}

fn main() -> std::io::Result<()> {
    let rt = Runtime::builder().keep_finished_tasks(true).build()?;
    rt.block_on(async {
        let setup = spawn_named("setup", async {
            let config = spawn_named("setup/load-config", helper(1));
            config.await.ok();
        });
        setup.await.ok();

        let server = spawn_named("server", async {
            let handlers: Vec<_> = (1..=2)
                .map(|n| spawn_named(format!("request-{n}"), handle_request(n)))
                .collect();
            for h in handlers {
                h.await.ok();
            }
        });

        // Let every task start and reach its first await, then take the snapshot.
        for _ in 0..3 {
            yield_now().await.ok();
        }
        println!(
            "live tasks while requests are in flight (finished ones kept for the post-mortem):"
        );
        println!("{}", task_tree().to_json_pretty());

        server.await.ok();
    });
    println!(
        "after block_on returned: {} tasks alive",
        rt.stats().tasks_alive
    );
    Ok(())
}
