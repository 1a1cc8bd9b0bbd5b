//! Global allocator guard against hostile length prefixes.
//!
//! The codec crate pre-allocates arrays with the element count a request claims
//! (`Vec::with_capacity(n)`), so a 9-byte request can ask for hundreds of GiB and the
//! process would abort on allocation failure before decoding notices the request is
//! short. Huge allocations are therefore served by lazily-backed anonymous mappings
//! (`MAP_NORESERVE`): reserving address space costs nothing, decoding then fails on the
//! missing bytes, and the mapping is released. Smaller allocations go to the system
//! allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are served by `mmap`.
const HUGE: usize = 256 << 20;

/// The broker's global allocator.
pub struct GuardedAlloc;

unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE && layout.align() <= 4096 {
            map(layout.size())
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE && layout.align() <= 4096 {
            // Fresh anonymous mappings are already zeroed.
            map(layout.size())
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= HUGE && layout.align() <= 4096 {
            libc::munmap(ptr.cast(), layout.size());
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_huge = layout.size() >= HUGE && layout.align() <= 4096;
        let new_huge = new_size >= HUGE && layout.align() <= 4096;
        if !old_huge && !new_huge {
            return System.realloc(ptr, layout, new_size);
        }
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let new_ptr = self.alloc(new_layout);
        if !new_ptr.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new_ptr
    }
}

unsafe fn map(size: usize) -> *mut u8 {
    let p = libc::mmap(
        std::ptr::null_mut(),
        size,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_reservation_succeeds_and_round_trips() {
        let a = GuardedAlloc;
        unsafe {
            let layout = Layout::from_size_align(200 << 30, 8).expect("layout");
            let p = a.alloc(layout);
            assert!(
                !p.is_null(),
                "200 GiB of address space should be reservable"
            );
            *p = 7;
            let q = a.realloc(p, layout, 1024);
            assert_eq!(*q, 7);
            a.dealloc(q, Layout::from_size_align(1024, 8).expect("layout"));
        }
    }
}
