//! The bpf(2) system call, for the commands aya does not offer: batched map writes
//! ([`crate::batch`]) and detaching a pinned link ([`crate::link`]).

#![expect(unsafe_code, reason = "the bpf(2) system call with a hand-built attribute block")]

use std::io;

/// Runs bpf(2) command `cmd` with `attr`, which must be the command's member of
/// `union bpf_attr` (a `#[repr(C)]` prefix of it); the kernel may write results into it.
pub(crate) fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid prefix of `bpf_attr` for `cmd` (the callers pair each command
    // with its member), and any pointer in it outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}
