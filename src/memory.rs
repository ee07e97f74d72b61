//! What the process does about its own memory, beyond allocating it.
//!
//! glibc's malloc (not musl's) keeps memory a burst freed: one heap per thread that ever
//! contended, and inside a heap only its top is ever given back. After a thousand agents join
//! at once, a server's live heap is about a third of its RSS; the rest is free memory pinned
//! between live allocations and abandoned in the other thread's heap. So: one heap for all
//! threads (tcache keeps small allocations per thread anyway), and free pages inside it go back
//! to the kernel once the resident size has grown past what the last trim left.
//!
//! An agent's private memory is half a MiB; most of its RSS is pages of the executable and of
//! libc that the kernel mapped while start-up code ran (argument parsing, joining, key
//! generation), and neighbours it mapped along with them. Once the first tunnel is up those
//! are unmapped, and only what the idle agent runs is mapped again, from the page cache.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the trimmer compares the resident size with what its last trim left.
const TRIM_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Growth of the resident size since the last trim that earns another trim.
const TRIM_REGROWTH_BYTES: u64 = 2 << 20;
/// From the first tunnel to unmapping start-up pages: the agent's first moments on the
/// tunnel (the server list, its file) are start-up too.
const STARTUP_SETTLE: Duration = Duration::from_secs(2);

/// A background task of this module; ends when dropped.
pub struct Task(Option<JoinHandle<()>>);

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// One malloc arena for every thread. Call before any thread starts: arenas that already
/// exist stay.
pub fn configure_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers and only changes malloc's tuning parameters under
    // malloc's own lock; glibc documents it as callable at any time (MT-Safe).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives free heap pages back to the kernel after bursts (glibc only). Must be called
/// inside the runtime.
pub fn spawn_trimmer() -> Task {
    Task(cfg!(all(target_os = "linux", target_env = "gnu")).then(|| tokio::spawn(trimmer())))
}

/// The mappings whose pages are the mapped files' bytes and nothing else, taken while the
/// process is single-threaded: the executable's and its libraries' code and constants.
pub struct FilePages(Vec<Mapping>);

// === impl FilePages ===

impl FilePages {
    /// Call before any thread starts, after the dynamic loader is done (any time in
    /// `main`): then every mapping found belongs to the executable or to a library loaded
    /// with it, and stays as it is for the process's life. Empty where `/proc` is missing.
    pub fn mapped_now() -> FilePages {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        FilePages(unmodified_file_mappings(&smaps).collect())
    }

    /// Unmaps these pages once `tunnel_up` first turns true and [`STARTUP_SETTLE`] has
    /// passed (Linux only). Must be called inside the runtime.
    pub fn release_once_up(self, mut tunnel_up: watch::Receiver<bool>) -> Task {
        Task(cfg!(target_os = "linux").then(|| {
            tokio::spawn(async move {
                if tunnel_up.wait_for(|up| *up).await.is_err() {
                    return;
                }
                tokio::time::sleep(STARTUP_SETTLE).await;
                match self.release() {
                    Ok(bytes) => tracing::debug!(
                        kib = bytes / 1024,
                        "unmapped the pages start-up touched in the executable and libraries"
                    ),
                    Err(e) => tracing::debug!(error = %e, "cannot unmap start-up pages"),
                }
            })
        }))
    }

    /// Drops the page-table entries of every mapping; the pages stay in the page cache and
    /// are mapped again on first touch. Returns the bytes of address space covered. Callable
    /// from a single-threaded process directly (the container monitor does, once started).
    pub fn release(&self) -> std::io::Result<u64> {
        // Only mappings that are, right now, still exactly what was recorded: the same
        // range of the same file, read-only, with no anonymous page.
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let still: Vec<Mapping> = unmodified_file_mappings(&smaps).collect();
        let mut released = 0;
        for m in self.0.iter().filter(|m| still.contains(m)) {
            let len = m.end - m.start;
            #[cfg(target_os = "linux")]
            // SAFETY: `m` was, while the process was single-threaded and after the loader
            // had finished, and is again just now, a whole private mapping of the same file
            // that is not writable and has no anonymous (copied-on-write) page: all its
            // pages hold exactly the file's bytes. Such mappings of the executable and of the
            // libraries loaded with it stay mapped for the process's life and nothing here
            // makes them writable (the loader's RELRO pages were written and are excluded).
            // A breakpoint a debugger or uprobe writes after the check would be dropped,
            // which loses the breakpoint, not memory the program relies on.
            // MADV_DONTNEED drops the page-table entries and the next access maps the same
            // bytes again from the file, as after the kernel's own reclaim.
            let rc = unsafe {
                libc::madvise(
                    m.start as usize as *mut libc::c_void,
                    len as usize,
                    libc::MADV_DONTNEED,
                )
            };
            #[cfg(not(target_os = "linux"))]
            let rc = 0;
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            released += len;
        }
        Ok(released)
    }
}

async fn trimmer() {
    let mut floor = resident_bytes();
    loop {
        tokio::time::sleep(TRIM_CHECK_EVERY).await;
        let (Some(now), Some(last)) = (resident_bytes(), floor) else {
            // No /proc: nothing to compare, and nothing to do.
            return;
        };
        if now > last + TRIM_REGROWTH_BYTES {
            let started = std::time::Instant::now();
            trim();
            floor = resident_bytes();
            tracing::debug!(
                before = now,
                after = floor,
                took = ?started.elapsed(),
                "gave free heap pages back to the kernel"
            );
        } else if now < last {
            floor = Some(now);
        }
    }
}

/// Gives free heap pages back to the kernel now (glibc only; a no-op elsewhere).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it walks malloc's free lists under each
    // arena's lock and only returns pages no allocation occupies (MT-Safe).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What malloc holds: bytes in live allocations, and bytes freed but kept (glibc only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heap {
    pub in_use: u64,
    pub free: u64,
}

/// malloc's own account of the heap; `None` where malloc is not glibc's. The difference
/// between RSS and `in_use` is what fragmentation costs.
pub fn heap() -> Option<Heap> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value; it reads
        // malloc's statistics under each arena's lock (MT-Safe since glibc 2.33).
        let info = unsafe { libc::mallinfo2() };
        Some(Heap {
            in_use: (info.uordblks + info.hblkhd) as u64,
            free: info.fordblks as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// The process's resident set size, from `/proc/self/statm` (in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * u64::try_from(page).ok()?)
}

/// One mapping from `/proc/<pid>/smaps`: its address range and the file's inode.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: u64,
    end: u64,
    inode: u64,
}

/// The file mappings in `smaps` that are private, not writable and have no anonymous
/// page: their memory is the file's bytes and nothing else.
fn unmodified_file_mappings(smaps: &str) -> impl Iterator<Item = Mapping> {
    let mut current: Option<(Mapping, bool)> = None;
    let mut found = Vec::new();
    for line in smaps.lines() {
        if let Some(anon) = line.strip_prefix("Anonymous:") {
            let untouched = anon.trim().strip_suffix("kB").map(str::trim) == Some("0");
            if let Some((m, eligible)) = current.take()
                && eligible
                && untouched
            {
                found.push(m);
            }
        } else if let Some(header) = mapping_header(line) {
            current = Some(header);
        }
    }
    found.into_iter()
}

/// `start-end perms offset dev inode path`: the mapping, and whether it is a private,
/// read-only mapping of a file.
fn mapping_header(line: &str) -> Option<(Mapping, bool)> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.as_bytes();
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start();
    let m = Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        inode,
    };
    let eligible = perms.len() == 4
        && perms[1] == b'-'
        && perms[3] == b'p'
        && inode != 0
        && path.starts_with('/');
    Some((m, eligible))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn mallocs_account_counts_a_live_allocation() {
        // The count is process-wide: tests on other threads free memory meanwhile, so one
        // of a few tries must see the block (a broken count never does).
        let mut seen = Vec::new();
        for _ in 0..5 {
            let before = heap().expect("glibc reports its heap").in_use;
            let block = vec![1u8; 8 << 20];
            let during = heap().expect("glibc reports its heap").in_use;
            drop(block);
            if during >= before + (8 << 20) {
                return;
            }
            seen.push((before, during));
        }
        panic!("no try saw an 8 MiB block: {seen:?}");
    }

    #[test]
    fn only_read_only_private_file_mappings_without_anonymous_pages_are_released() {
        let smaps = "\
5619c8a9b000-5619c8c4c000 r--p 00000000 fe:00 5373990                    /usr/bin/keelson
Rss:                1152 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
5619c8c4c000-5619c9084000 r-xp 001b0000 fe:00 5373990                    /usr/bin/keelson
Anonymous:             0 kB
5619c9084000-5619c90af000 r--p 005e7000 fe:00 5373990                    /usr/bin/keelson
Anonymous:           172 kB
5619c90af000-5619c90b5000 rw-p 00611000 fe:00 5373990                    /usr/bin/keelson
Anonymous:             0 kB
5619e6f2a000-5619e6f6c000 rw-p 00000000 00:00 0                          [heap]
Anonymous:           200 kB
7f6c58818000-7f6c5881a000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
7f6c5854b000-7f6c586a1000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f6c5854c000-7f6c5854d000 r--s 00000000 fe:00 4242                       /dev/shm/x
Anonymous:             0 kB
";
        let found: Vec<_> = unmodified_file_mappings(smaps).collect();
        assert_eq!(
            found,
            vec![
                Mapping {
                    start: 0x5619c8a9b000,
                    end: 0x5619c8c4c000,
                    inode: 5373990,
                },
                Mapping {
                    start: 0x5619c8c4c000,
                    end: 0x5619c9084000,
                    inode: 5373990,
                },
                Mapping {
                    start: 0x7f6c5854b000,
                    end: 0x7f6c586a1000,
                    inode: 326279,
                },
            ]
        );
    }

    #[test]
    fn releasing_file_pages_leaves_code_and_constants_working() {
        static TABLE: [u64; 4] = [1, 2, 3, 5];
        let before = format!("{TABLE:?}");
        // Other test threads are running: take only this executable's mappings (no thread
        // can unmap those), not the libraries'.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_str().unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = String::new();
        let mut keep = false;
        for line in smaps.lines() {
            if let Some((_, _)) = mapping_header(line) {
                keep = line.ends_with(exe);
            }
            if keep {
                ours.push_str(line);
                ours.push('\n');
            }
        }
        let pages = FilePages(unmodified_file_mappings(&ours).collect());
        assert!(!pages.0.is_empty(), "no mapping of {exe} found");
        assert!(pages.release().unwrap() > 0);
        assert_eq!(format!("{TABLE:?}"), before);
    }
}

/// The unit tests' allocator: the system's, counting the bytes each thread has live, so a
/// test can measure what a value costs in memory (not only how long its text is).
#[cfg(test)]
pub mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        // A const-initialised `Cell` has no destructor and never allocates, so touching it
        // from inside the allocator cannot recurse into the allocator.
        // Bytes and allocations live on this thread.
        static LIVE: Cell<(isize, isize)> = const { Cell::new((0, 0)) };
    }

    fn count(bytes: isize, allocations: isize) {
        // During thread teardown the slot may be gone; those bytes are nobody's measurement.
        let _ = LIVE.try_with(|live| {
            let (b, n) = live.get();
            live.set((b + bytes, n + allocations));
        });
    }

    // SAFETY: every method forwards to `System` with the caller's own arguments, so the
    // contract `GlobalAlloc` requires is `System`'s; counting touches only a thread-local
    // integer and neither allocates nor frees.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                count(layout.size() as isize, 1);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as for `alloc`.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                count(layout.size() as isize, 1);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
            unsafe { System.dealloc(ptr, layout) };
            count(-(layout.size() as isize), -1);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                count(new_size as isize - layout.size() as isize, 0);
            }
            p
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Runs `f` and says how many bytes what it returned (and anything else it left live)
    /// holds, as allocated on this thread.
    pub fn live_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let (value, bytes, _) = live(f);
        (value, bytes)
    }

    /// Runs `f` and says how many bytes and how many allocations what it returned (and
    /// anything else it left live) holds, on this thread. Each allocation also costs malloc
    /// a header and rounding, which the bytes do not show.
    pub fn live<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
        let before = LIVE.with(Cell::get);
        let value = f();
        let after = LIVE.with(Cell::get);
        let grown = |a: isize, b: isize| a.saturating_sub(b).max(0) as usize;
        (value, grown(after.0, before.0), grown(after.1, before.1))
    }
}
