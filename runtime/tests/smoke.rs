use ringloop_runtime::*;
use std::time::Duration;

#[test]
fn smoke() {
    let rt = Runtime::new().unwrap();
    let v = rt.block_on(async {
        let t = spawn(async {
            sleep(Duration::from_millis(5)).await.unwrap();
            5
        });
        let c = spawn(async {
            sleep(Duration::from_secs(3600)).await?;
            Ok::<_, Cancelled>(1)
        });
        sleep(Duration::from_millis(1)).await.unwrap();
        assert!(c.cancel_with("bye"));
        let e = c.await.unwrap_err();
        assert_eq!(e.cancel_message(), Some("bye"));
        let p = spawn(async { panic!("boom") });
        assert!(p.await.unwrap_err().is_panic());
        // detached task still alive at end -> cancelled by block_on
        let _d = spawn(async { sleep(Duration::from_secs(3600)).await });
        t.await.unwrap()
    });
    assert_eq!(v, 5);
    let s = rt.stats();
    println!("{s:?}");
    assert_eq!(s.tasks_alive, 0);
}
