//! Detaching a pinned BPF link now, not eventually.
//!
//! Removing a link's pin from bpffs drops the last reference to it, but the kernel frees the
//! inode after an RCU grace period and releases the link from a work queue: for a moment after
//! `unlink` returns, the XDP program is still attached, and attaching another one to the
//! interface fails with `EBUSY`. `BPF_LINK_DETACH` (Linux 5.9+) detaches the program before the
//! call returns; the pin is then removed as before.

#![expect(unsafe_code, reason = "taking ownership of the file descriptor bpf(2) returns")]

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use crate::sys::bpf;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr`'s `obj_pin` member (for `BPF_OBJ_GET`).
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr`'s `link_detach` member.
#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Detaches the link pinned at `path` and removes the pin. A missing pin is `NotFound`.
/// Where the kernel cannot detach a link by itself (before 5.9, or a link type without detach),
/// the pin is removed and the kernel detaches the link when it releases it.
pub fn detach_pinned(path: &Path) -> io::Result<()> {
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut get = ObjAttr { pathname: name.as_ptr() as u64, ..ObjAttr::default() };
    let raw = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor, owned by nobody else.
    let fd =
        unsafe { OwnedFd::from_raw_fd(i32::try_from(raw).expect("file descriptors are small")) };
    let mut detach = LinkDetachAttr { link_fd: fd.as_raw_fd().cast_unsigned() };
    match bpf(BPF_LINK_DETACH, &mut detach) {
        Ok(_) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {}
        Err(e) => return Err(e),
    }
    std::fs::remove_file(path)
}
