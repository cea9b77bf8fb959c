//! Batched map writes (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`, Linux 5.6+): one system
//! call writes thousands of entries. A full table's route record is a million entries, and one
//! call each costs seconds.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries per system call: large enough that the call's own cost vanishes, small enough that
/// the kernel's copy of the keys stays small.
pub(crate) const CHUNK: usize = 8192;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i]` -> `values[i]` for every `i`. Stops at the first entry the kernel refuses;
/// the error says how many were written before it.
pub fn update<K: Copy, V: Copy>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        call(BPF_MAP_UPDATE_BATCH, fd, k.as_ptr().cast(), v.as_ptr().cast(), k.len())?;
    }
    Ok(())
}

/// Deletes every key; keys that are not there are skipped.
pub fn delete<K: Copy>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    for k in keys.chunks(CHUNK) {
        let mut rest = k;
        while !rest.is_empty() {
            match call(BPF_MAP_DELETE_BATCH, fd, rest.as_ptr().cast(), std::ptr::null(), rest.len())
            {
                Ok(()) => break,
                // The batch stops at a missing key: skip it and go on after it.
                Err(Partial { done, error }) if error.raw_os_error() == Some(libc::ENOENT) => {
                    rest = &rest[done + 1..];
                }
                Err(Partial { error, .. }) => return Err(error),
            }
        }
    }
    Ok(())
}

/// A batch the kernel stopped: `done` entries were processed before `error`.
#[derive(Debug)]
struct Partial {
    done: usize,
    error: io::Error,
}

impl From<Partial> for io::Error {
    fn from(p: Partial) -> Self {
        io::Error::new(p.error.kind(), format!("{} after {} entries", p.error, p.done))
    }
}

fn call(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> Result<(), Partial> {
    let mut attr = BatchAttr {
        keys: keys as u64,
        values: values as u64,
        count: u32::try_from(count).expect("chunks are small"),
        map_fd: fd.as_raw_fd().cast_unsigned(),
        ..BatchAttr::default()
    };
    // The key and value pointers cover `count` entries of the map's key and value sizes (the
    // caller's slices of the map's own key and value types), which the kernel only reads.
    crate::sys::bpf(cmd, &mut attr)
        .map_err(|error| Partial { done: attr.count as usize, error })?;
    Ok(())
}
