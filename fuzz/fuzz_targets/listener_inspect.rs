//! The listener filters read the first bytes of every connection before any
//! authentication: ClientHello and HTTP detection must accept anything.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = proxy::listener::inspect::sniff(data, true, true);
    let _ = proxy::listener::inspect::sniff(data, false, true);
});
