//! A walk through ringloop's cancellation semantics, each step printing what happened:
//! propagation along the await chain, shield, cleanup after a cancel, gather vs TaskGroup on a
//! failing child, wait with a timeout, and a Semaphore capping concurrency.
//!
//! Run: `cargo run --example cancellation`

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use ringloop::sync::Semaphore;
use ringloop::{
    gather, shield, sleep, spawn, spawn_named, wait, Cancelled, ReturnWhen, Runtime, Task,
    TaskGroup,
};

#[derive(Debug)]
enum JobError {
    Cancelled(#[allow(dead_code)] Cancelled),
    Failed(#[allow(dead_code)] &'static str),
}

impl From<Cancelled> for JobError {
    fn from(c: Cancelled) -> Self {
        JobError::Cancelled(c)
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn propagation() {
    println!("\n1. cancellation follows the await chain");
    let inner = spawn_named("inner", async {
        let r = sleep(Duration::from_secs(3600)).await;
        println!("   inner: my sleep returned {r:?}");
        r
    });
    let inner_ref = inner.as_ref().clone();
    let outer = spawn_named("outer", async move {
        println!("   outer: awaiting inner");
        inner.await
    });
    sleep(ms(1)).await.ok();
    outer.cancel_with("user pressed ^C");
    println!("   outer ended with {:?}", outer.await.map(|_| ()));
    println!("   inner is cancelled too: {}", inner_ref.is_cancelled());
}

async fn shielding() {
    println!("\n2. shield: the caller is cancelled, the shielded work completes");
    let committed = Rc::new(Cell::new(false));
    let c = committed.clone();
    let caller = spawn(async move {
        shield(async move {
            sleep(ms(5)).await.ok();
            c.set(true);
        })
        .await
    });
    sleep(ms(1)).await.ok();
    caller.cancel();
    println!("   caller: {:?}", caller.await.map(|_| ()));
    sleep(ms(10)).await.ok();
    println!("   shielded commit finished anyway: {}", committed.get());
}

async fn cleanup() {
    println!("\n3. a task that cleans up (asynchronously) after a cancel, then lets it escape");
    let worker = spawn(async {
        let helper = spawn(async { sleep(Duration::from_secs(3600)).await });
        if let Err(cancelled) = sleep(Duration::from_secs(3600)).await {
            println!("   worker: cancelled ({cancelled}); cancelling my helper and flushing");
            helper.cancel();
            let _ = helper.await;
            sleep(ms(2)).await.ok(); // the flush
            println!("   worker: cleanup done");
            return Err(cancelled);
        }
        Ok(())
    });
    sleep(ms(1)).await.ok();
    worker.cancel_with("shutdown");
    let r = worker.await;
    println!(
        "   worker ended: cancelled={}",
        r.is_err_and(|e| e.is_cancelled())
    );
}

async fn gather_vs_group() {
    println!("\n4. gather vs TaskGroup on a failing child");
    let slow: Task<Result<(), Cancelled>> = spawn(async {
        let r = sleep(Duration::from_secs(3600)).await;
        sleep(ms(2)).await.ok();
        println!("   (gather's sibling finished its cleanup)");
        r
    });
    let failing: Task<Result<(), Cancelled>> = spawn(async {
        sleep(ms(1)).await?;
        panic!("child failed")
    });
    let r = gather([slow, failing]).await;
    println!(
        "   gather returned at once: {:?} (sibling cancelled, still cleaning up)",
        r.map(|_| ())
    );
    sleep(ms(5)).await.ok();

    let r = TaskGroup::<(), JobError>::scope(|tg| async move {
        tg.spawn(async {
            let r = sleep(Duration::from_secs(3600)).await;
            sleep(ms(2)).await.ok();
            println!("   (group's sibling finished its cleanup before the group returned)");
            r?;
            Ok(())
        });
        tg.spawn(async {
            sleep(ms(1)).await?;
            Err(JobError::Failed("child failed"))
        });
        Ok(())
    })
    .await;
    println!(
        "   TaskGroup returned after every child: {:?}",
        r.map(|_| ())
    );
}

async fn wait_with_timeout() {
    println!("\n5. wait with a timeout tells which tasks timed out (and cancels none)");
    let tasks: Vec<Task<()>> = [1u64, 2, 3_600_000]
        .into_iter()
        .map(|d| {
            spawn_named(format!("job-{d}ms"), async move {
                sleep(ms(d)).await.ok();
            })
        })
        .collect();
    let (done, pending) = wait(tasks, ReturnWhen::AllCompleted, Some(ms(20)))
        .await
        .expect("not cancelled");
    let names = |v: &[Task<()>]| v.iter().map(|t| t.name()).collect::<Vec<_>>();
    println!(
        "   done: {:?}, timed out: {:?}",
        names(&done),
        names(&pending)
    );
    for t in &pending {
        t.cancel();
    }
}

async fn semaphore_cap() {
    println!("\n6. a Semaphore caps concurrency: at most 3 of 10 queries in flight");
    let sem = Rc::new(Semaphore::new(3));
    let in_flight = Rc::new(Cell::new(0));
    let peak = Rc::new(Cell::new(0));
    let queries: Vec<Task<()>> = (0..10)
        .map(|_| {
            let (sem, in_flight, peak) = (sem.clone(), in_flight.clone(), peak.clone());
            spawn(async move {
                let _permit = sem.acquire().await.expect("not cancelled");
                in_flight.set(in_flight.get() + 1);
                peak.set(peak.get().max(in_flight.get()));
                sleep(ms(2)).await.ok();
                in_flight.set(in_flight.get() - 1);
            })
        })
        .collect();
    gather(queries).await.ok();
    println!("   peak concurrency: {}", peak.get());
}

fn main() -> std::io::Result<()> {
    // Task panics are reported by the runtime's exception handler below; the default hook would
    // print the same panic a second time, with a backtrace.
    std::panic::set_hook(Box::new(|_| {}));
    let rt = Runtime::builder()
        .exception_handler(|ctx| println!("   [exception handler] {ctx}"))
        .build()?;
    rt.block_on(async {
        propagation().await;
        shielding().await;
        cleanup().await;
        gather_vs_group().await;
        wait_with_timeout().await;
        semaphore_cap().await;
    });
    println!("\nstats: {:?}", rt.stats());
    Ok(())
}
