//! Wakes a pod's task when one of its containers' monitors changes its state files, so an
//! exit is noticed at once while an idle node reads no files between its periodic looks.
//!
//! One inotify instance per node (the kernel's default limit is 128 instances per user, so
//! one per pod would not do); one watch per container run's state directory. A monitor writes
//! its files by renaming a temporary file into place, so `IN_MOVED_TO` is the signal (a
//! close-after-write would wake the task twice per state change, once for the temporary file).
//!
//! Invariants:
//! - a wake-up is a hint, never the only way a change is seen: pod tasks still look at their
//!   containers periodically (kubelet's relist period), so a lost event (queue overflow, a
//!   watch added just after the file appeared, inotify unavailable) delays, never loses, an exit;
//! - a [`Watch`] removes its kernel watch when dropped; the table never keeps a waker whose
//!   watch the kernel has dropped (`IN_IGNORED`: the directory was deleted).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// The node's watcher; cheap to clone. Without inotify (an old kernel, or the limit reached)
/// it hands out no watches and pod tasks fall back to looking more often.
#[derive(Clone, Default)]
pub struct ExitWatch {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    fd: AsyncFd<Fd>,
    wakers: Mutex<HashMap<WatchDescriptor, Arc<Notify>>>,
}

/// `AsyncFd` wants `AsRawFd`; nix's `Inotify` offers only `AsFd`.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// One state directory being watched; dropping it stops the watch.
pub struct Watch {
    inner: Arc<Inner>,
    wd: WatchDescriptor,
    waker: Arc<Notify>,
}

impl ExitWatch {
    /// Starts the watcher's reader task (needs a tokio runtime). On failure the node runs on
    /// periodic looks alone, with a log line saying so.
    #[allow(unsafe_code)]
    pub fn start() -> ExitWatch {
        if tokio::runtime::Handle::try_current().is_err() {
            return ExitWatch::default();
        }
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "inotify is unavailable; container exits are noticed by polling");
                return ExitWatch::default();
            }
        };
        // SAFETY: `Fd` owns the inotify descriptor (an `OwnedFd` inside nix's `Inotify`) and
        // nothing else can close or replace it; `as_raw_fd` returns that one descriptor for
        // as long as the `AsyncFd` holds the `Fd`.
        let fd = match unsafe { AsyncFd::register(Fd(inotify)) }.map_err(|e| e.into_parts().1) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register inotify with the runtime; container exits are noticed by polling");
                return ExitWatch::default();
            }
        };
        let inner = Arc::new(Inner {
            fd,
            wakers: Mutex::new(HashMap::new()),
        });
        tokio::spawn(read_events(inner.clone()));
        ExitWatch { inner: Some(inner) }
    }

    /// Whether watches are handed out (otherwise callers poll faster).
    pub fn active(&self) -> bool {
        self.inner.is_some()
    }

    /// Watches `dir`; `waker` is notified whenever a file in it is written into place.
    /// `None` when inotify is off or the directory cannot be watched (the caller polls).
    pub fn watch(&self, dir: &Path, waker: Arc<Notify>) -> Option<Watch> {
        let inner = self.inner.as_ref()?;
        let flags = AddWatchFlags::IN_MOVED_TO;
        let wd = match inner.fd.get_ref().0.add_watch(dir, flags) {
            Ok(wd) => wd,
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot watch a container's state directory");
                return None;
            }
        };
        lock(&inner.wakers).insert(wd, waker.clone());
        Some(Watch {
            inner: inner.clone(),
            wd,
            waker,
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut wakers = lock(&self.inner.wakers);
        // The kernel may have dropped this watch already and handed its number to a newer
        // one: only remove what is still ours.
        if wakers
            .get(&self.wd)
            .is_some_and(|w| Arc::ptr_eq(w, &self.waker))
        {
            wakers.remove(&self.wd);
            drop(wakers);
            // EINVAL when the directory is already gone; nothing to undo then.
            let _ = self.inner.fd.get_ref().0.rm_watch(self.wd);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads events for the life of the node, waking the watchers they concern.
async fn read_events(strong: Arc<Inner>) {
    loop {
        let mut guard = match strong.fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "inotify failed; container exits are noticed by polling");
                return;
            }
        };
        match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
            Ok(Ok(events)) => {
                let mut wakers = lock(&strong.wakers);
                for e in events {
                    if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                        // Some events were lost: wake everyone; they look and find out.
                        wakers.values().for_each(|w| w.notify_one());
                        continue;
                    }
                    if e.mask.contains(AddWatchFlags::IN_IGNORED) {
                        if let Some(w) = wakers.remove(&e.wd) {
                            w.notify_one();
                        }
                        continue;
                    }
                    if let Some(w) = wakers.get(&e.wd) {
                        w.notify_one();
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read inotify events; container exits are noticed by polling");
                return;
            }
            Err(_would_block) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_file_renamed_into_place_wakes_its_watcher_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).expect("mkdir a");
        std::fs::create_dir(&b).expect("mkdir b");
        let w = ExitWatch::start();
        assert!(w.active());
        let (wa, wb) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let _ha = w.watch(&a, wa.clone()).expect("watch a");
        let _hb = w.watch(&b, wb.clone()).expect("watch b");
        std::fs::write(a.join("exit.json.tmp"), b"{}").expect("write");
        std::fs::rename(a.join("exit.json.tmp"), a.join("exit.json")).expect("rename");
        tokio::time::timeout(Duration::from_secs(5), wa.notified())
            .await
            .expect("the watcher of a was woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), wb.notified())
                .await
                .is_err(),
            "b's watcher was woken by a's file"
        );
    }

    #[tokio::test]
    async fn a_dropped_watch_wakes_nobody_and_a_deleted_dir_is_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        std::fs::create_dir(&a).expect("mkdir a");
        let w = ExitWatch::start();
        let wa = Arc::new(Notify::new());
        let h = w.watch(&a, wa.clone()).expect("watch a");
        drop(h);
        std::fs::write(a.join("exit.json"), b"{}").expect("write");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), wa.notified())
                .await
                .is_err()
        );
        let h = w.watch(&a, wa.clone()).expect("watch a again");
        std::fs::remove_dir_all(&a).expect("rm");
        tokio::time::timeout(Duration::from_secs(5), wa.notified())
            .await
            .expect("the deletion was noticed");
        let inner = w.inner.as_ref().expect("active");
        tokio::time::timeout(Duration::from_secs(5), async {
            while !lock(&inner.wakers).is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the table forgot the deleted directory's watch");
        drop(h);
    }
}
