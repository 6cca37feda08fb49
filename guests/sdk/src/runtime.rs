//! The runtime of a `no_std` guest: its allocator, panic handler and the two C symbols the
//! component ABI and the compiler expect, so that a built component imports nothing at all.
//!
//! A panic aborts with `unreachable`, which the host sees as a trap: it discards that instance
//! and reports a typed error. Nothing is printed, since a guest has no output stream.
#![allow(unsafe_code)]

#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

/// The canonical ABI's allocator export, on the same global allocator as the rest of the
/// guest. On `wasm32-wasip2` it normally comes from wasi-libc's `malloc`; a guest without the
/// standard library must not mix two allocators.
///
/// # Safety
/// Called only by the component runtime, with the canonical ABI's contract for `realloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, realloc};
    if new_len == 0 {
        // A zero-sized allocation needs no memory, only a well-aligned pointer.
        return align as *mut u8;
    }
    // SAFETY: the runtime passes a power-of-two `align` and, when `old_len` is not zero, a
    // pointer it got from this function with that same size and alignment.
    let ptr = unsafe {
        if old_len == 0 {
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(old, Layout::from_size_align_unchecked(old_len, align), new_len)
        }
    };
    if ptr.is_null() {
        // Out of memory: trap, as the ABI has no way to report it.
        core::arch::wasm32::unreachable()
    }
    ptr
}

// Slice and string comparisons compile to `memcmp`, which comes from the C library. Link
// wasi-libc's (it ships with the target and imports nothing) instead of hand-writing one.
#[link(name = "c")]
unsafe extern "C" {}
