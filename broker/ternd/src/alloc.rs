//! The broker's global allocator: the system allocator, except that a
//! single allocation of [`RESERVE_ONLY_BYTES`] or more is mapped with
//! `MAP_NORESERVE` — address space reserved, memory committed only as it is
//! written.
//!
//! **Why.** Decoders of untrusted input (the `kafka-protocol` codec among
//! them) size a `Vec` from a count read off the wire before reading its
//! elements: a 12-byte Kafka request can claim two billion topics and ask
//! for hundreds of gigabytes at once. Linux refuses such an allocation
//! outright (more than RAM and swap), and Rust aborts the whole process on a
//! refused allocation — no `catch_unwind` can stop that. Reserved but
//! untouched, the same allocation costs nothing: the decoder fails at the
//! first missing element, frees it, and the request is refused as
//! malformed. Everything Tern itself allocates is far below the threshold
//! (batches are at most 8 MiB), so normal allocations are untouched.
//!
//! **Must never** be used for an allocation it cannot map with the
//! requested alignment (over a page): those go to the system allocator.
//! Assumes Linux's default overcommit policy (`vm.overcommit_memory` 0 or
//! 1); under policy 2 the kernel ignores `MAP_NORESERVE` and such a request
//! fails as before.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of at least this many bytes are reserved, not committed.
pub const RESERVE_ONLY_BYTES: usize = 1 << 30;

/// Page size assumed for alignment (x86-64 and aarch64 Linux: at least 4 KiB).
const PAGE: usize = 4096;

/// See the module documentation.
pub struct ReserveLargeAllocations;

fn reserve_only(layout: Layout) -> bool {
    layout.size() >= RESERVE_ONLY_BYTES && layout.align() <= PAGE
}

// SAFETY: every pointer is either from `System` (small or over-aligned
// layouts, told apart by the same `reserve_only(layout)` test on the way in
// and out, since `dealloc` receives the layout `alloc` did) or from `mmap`
// of `layout.size()` bytes, page-aligned, released by `munmap` of the same
// size.
unsafe impl GlobalAlloc for ReserveLargeAllocations {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !reserve_only(layout) {
            return System.alloc(layout);
        }
        let p = libc::mmap(
            std::ptr::null_mut(),
            layout.size(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if reserve_only(layout) {
            // Fresh anonymous mappings read as zeros.
            self.alloc(layout)
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if reserve_only(layout) {
            libc::munmap(ptr.cast(), layout.size());
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        if !reserve_only(layout) && !reserve_only(new_layout) {
            return System.realloc(ptr, layout, new_size);
        }
        let new = self.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim far beyond RAM and swap is granted (only reserved), usable
    /// where written, and released; small and over-aligned allocations go
    /// to the system allocator; growing across the threshold keeps the data.
    #[test]
    fn a_huge_claim_is_reserved_not_refused() {
        let a = ReserveLargeAllocations;
        unsafe {
            let huge = Layout::from_size_align(1 << 40, 8).unwrap();
            let p = a.alloc(huge);
            assert!(!p.is_null(), "1 TiB reservation refused");
            *p = 7;
            *p.add((1 << 40) - 1) = 9;
            assert_eq!((*p, *p.add((1 << 40) - 1)), (7, 9));
            a.dealloc(p, huge);

            let small = Layout::from_size_align(64, 8).unwrap();
            let q = a.alloc(small);
            q.write_bytes(5, 64);
            let grown = a.realloc(q, small, RESERVE_ONLY_BYTES);
            assert!(!grown.is_null());
            assert_eq!(*grown.add(63), 5);
            let back = a.realloc(
                grown,
                Layout::from_size_align(RESERVE_ONLY_BYTES, 8).unwrap(),
                128,
            );
            assert_eq!(*back.add(63), 5);
            a.dealloc(back, Layout::from_size_align(128, 8).unwrap());

            let zeroed = a.alloc_zeroed(huge);
            assert_eq!(*zeroed.add(12345), 0);
            a.dealloc(zeroed, huge);
        }
    }
}
