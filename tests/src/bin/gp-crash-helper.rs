//! Builds a cluster, starts a server in it, prints where, then sleeps: the
//! harness test `crashed_test_process_is_swept` SIGKILLs this process (no
//! unwinding, no Drop) and checks that children die and `sweep_stale`
//! removes the rest.

use std::time::Duration;

use anyhow::Result;
use gangplank_tests::Cluster;

fn main() -> Result<()> {
    let c = Cluster::new("crash", &[("node-a", &["pod-a1"]), ("node-b", &["pod-b1"])])?;
    let server = c.serve("pod-a1", &[80], &[])?;
    println!(
        "CLUSTER {} {} {}",
        c.id(),
        server.pid(),
        c.bpffs().display()
    );
    // Bounded: if nobody kills us, clean up normally.
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}
