//! Produced record sets are validated without panicking, and stamping keeps them valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use riffle_protocol::batch;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = batch::validate_produced(data) {
        let stamped = batch::stamped_copy(data, 42, 1);
        let again = batch::validate_produced(&stamped).expect("stamping keeps the CRC valid");
        assert_eq!(again.base_offset, 42);
        assert_eq!(again.record_count, h.record_count);
    }
});
