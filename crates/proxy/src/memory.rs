//! Giving memory back to the system after one-off work.
//!
//! Decoding Envoy's descriptors (to read the bootstrap, or to render
//! `/config_dump`) allocates several megabytes of small objects. glibc keeps
//! the freed heap mapped, so without a trim an idle sidecar would carry that
//! peak forever, and idle footprint is one of the numbers a mesh is judged by.

/// Returns free heap pages to the kernel.
#[allow(unsafe_code)]
pub(crate) fn trim() {
    xds::descriptors::release();
    // SAFETY: malloc_trim only inspects and releases the allocator's own free
    // pages; it takes no pointers from us and is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}
