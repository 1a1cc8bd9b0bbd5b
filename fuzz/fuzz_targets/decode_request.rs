//! Any byte string given as a request frame decodes or is rejected, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The broker's allocator: hostile array counts reserve address space instead of aborting.
#[global_allocator]
static ALLOC: riffle_protocol::alloc::GuardedAlloc = riffle_protocol::alloc::GuardedAlloc;

fuzz_target!(|data: &[u8]| {
    let _ = riffle_protocol::decode_request(bytes::Bytes::copy_from_slice(data));
});
