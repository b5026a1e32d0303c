//! The background merge of a `snapshot-merge` target: runs from resume until every exception
//! is back in the origin, the target is suspended or goes away, or a step fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::Snapshot;

pub struct Merge {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Merge {
    pub fn start(snap: Arc<Snapshot>) -> Merge {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("dmfs-merge".into())
            .spawn(move || run(&snap, &flag))
            .map_err(|e| log::error!("cannot start the merge thread: {e}"))
            .ok();
        Merge { stop, thread }
    }

    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Merge {
    /// Stops after the step in progress, as the kernel's `stop_merge` does.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(snap: &Snapshot, stop: &AtomicBool) {
    let cow = snap.cow.name();
    log::info!("merging snapshot {cow} into {}", snap.origin.name());
    while !stop.load(Ordering::SeqCst) {
        match snap.merge_step() {
            Ok(true) => {}
            Ok(false) => {
                log::info!("merge of snapshot {cow} finished");
                return;
            }
            Err(e) => {
                log::error!("{e}");
                snap.set_merge_failed();
                return;
            }
        }
    }
}
