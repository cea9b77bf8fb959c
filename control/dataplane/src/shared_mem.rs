//! BPF array maps created with `BPF_F_MMAPABLE`, mapped into this process so the control plane
//! writes entries with plain atomic stores instead of one system call each.
#![expect(unsafe_code, reason = "mmap of a BPF map and atomic access through its pointer")]

use std::{
    num::NonZeroUsize,
    os::fd::AsFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use sluice_core::dir24::Cells;

/// A `u32` array map, mapped shared and writable.
#[derive(Debug)]
pub struct MappedArray {
    ptr: NonNull<AtomicU32>,
    len: usize,
}

impl MappedArray {
    /// Maps `len` `u32` entries of the array map behind `fd`.
    pub fn map(fd: impl AsFd, len: usize) -> std::io::Result<Self> {
        let bytes = NonZeroUsize::new(len * 4).ok_or(std::io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh shared mapping of a BPF array (the kernel rejects maps without
        // BPF_F_MMAPABLE); nothing else in this process aliases it, and it is unmapped on drop.
        let ptr = unsafe {
            mmap(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }?;
        Ok(Self { ptr: ptr.cast(), len })
    }

    fn cell(&self, i: usize) -> &AtomicU32 {
        assert!(i < self.len, "entry {i} beyond the {} of the map", self.len);
        // SAFETY: in bounds (checked above) of a live mapping of `len` aligned u32s; the kernel
        // and the XDP program only ever access the entries as whole u32s.
        unsafe { &*self.ptr.as_ptr().add(i) }
    }
}

// SAFETY: the mapping is process-wide memory accessed only through atomics, so handing the
// owner to another thread is as safe as sharing an `&[AtomicU32]`.
unsafe impl Send for MappedArray {}

impl Cells for MappedArray {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, i: usize) -> u32 {
        self.cell(i).load(Ordering::Acquire)
    }
    fn set(&self, i: usize, value: u32) {
        self.cell(i).store(value, Ordering::Release);
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no reference into it outlives self.
        let _ = unsafe { munmap(self.ptr.cast(), self.len * 4) };
    }
}
