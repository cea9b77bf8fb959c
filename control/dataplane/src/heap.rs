//! Returning freed heap memory to the kernel. Loading a full table builds large transient
//! structures (the kernel dump, the change list, the record batch); once they are freed, glibc
//! keeps the pages for reuse, and the daemon would sit at its peak for good.

#![expect(unsafe_code, reason = "malloc_trim(3) is a C function")]

/// Gives the heap's free pages back to the kernel (glibc's `malloc_trim`); a no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// This process's peak resident memory so far (`VmHWM` of `/proc/self/status`), in MiB: logged
/// with the steps of a large load, so that the step that set the peak can be told.
pub fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())?;
    Some(kib >> 10)
}
