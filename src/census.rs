//! An allocation census for memory measurements (cargo feature `alloc-census`, off in every
//! normal build): the global allocator wrapped so that it counts the blocks and bytes that are
//! live, by size class, and a thread that writes the counts to the file named by
//! `C10M_ALLOC_CENSUS` every half second.
//!
//! Why: a server's resident memory (what `bench/idle_memory.sh` and `bench/run.sh` read) is
//! the live heap plus whatever the allocator keeps resident around it: freed blocks in pages
//! still in use, pages not yet returned. The census tells the two apart, so a change in the
//! memory per connection can be traced to live data or to the allocator
//! (docs/measurements.md, "Live heap and resident memory").
//!
//! The file has one line per size class: `LIMIT BLOCKS REQUESTED_BYTES USABLE_BYTES`, where a
//! class holds the allocations of at most `LIMIT` bytes (and more than the line before's),
//! `REQUESTED_BYTES` is what callers asked for, `USABLE_BYTES` what mimalloc gave them.
//! The counters cost an atomic add per allocation and per free, which is why the feature is
//! for measurement builds only.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// The upper bound, in bytes, of each size class.
const LIMITS: [usize; 16] =
    [8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024, 4096, 65536, 1 << 20, usize::MAX];
const CLASSES: usize = LIMITS.len();

static BLOCKS: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
static REQUESTED: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
static USABLE: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

/// mimalloc, counted.
pub struct Counted;

fn count(ptr: *mut u8, size: usize, sign: i64) {
    let class = LIMITS.iter().position(|&limit| size <= limit).unwrap_or(CLASSES - 1);
    // SAFETY: `ptr` is a live block of mimalloc's (just returned by it, or about to be freed).
    let usable = unsafe { libmimalloc_sys::mi_usable_size(ptr as *const _) };
    BLOCKS[class].fetch_add(sign, Relaxed);
    REQUESTED[class].fetch_add(sign * size as i64, Relaxed);
    USABLE[class].fetch_add(sign * usable as i64, Relaxed);
}

// SAFETY: every call is passed to mimalloc unchanged; the counting reads only the pointer
// mimalloc returned or is given back.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is mimalloc's.
        let ptr = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !ptr.is_null() {
            count(ptr, layout.size(), 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is mimalloc's.
        let ptr = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(ptr, layout.size(), 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(ptr, layout.size(), -1);
        // SAFETY: the caller's contract is mimalloc's.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(ptr, layout.size(), -1);
        // SAFETY: the caller's contract is mimalloc's.
        let moved = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if moved.is_null() {
            count(ptr, layout.size(), 1);
        } else {
            count(moved, new_size, 1);
        }
        moved
    }
}

/// Starts the thread that writes the census to `$C10M_ALLOC_CENSUS`, when that is set.
pub fn start() {
    let Some(path) = std::env::var_os("C10M_ALLOC_CENSUS") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let mut partial = path.clone().into_os_string();
    partial.push(".partial");
    let spawned = std::thread::Builder::new().name("c10m-census".into()).spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mut text = String::new();
        for class in 0..CLASSES {
            text += &format!(
                "{} {} {} {}\n",
                LIMITS[class].min(1 << 30),
                BLOCKS[class].load(Relaxed),
                REQUESTED[class].load(Relaxed),
                USABLE[class].load(Relaxed)
            );
        }
        // Written whole, then renamed, so a reader never sees half a census.
        if std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, &path)).is_err() {
            eprintln!("alloc census: cannot write {}", path.display());
            return;
        }
    });
    if let Err(e) = spawned {
        eprintln!("alloc census: no thread: {e}");
    }
}
