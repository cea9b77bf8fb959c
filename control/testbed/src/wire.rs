//! Raw frames on a namespace's interface: an `AF_PACKET` socket that sends frames as given
//! (addresses, checksums and all) and captures the frames the interface receives, for tests
//! that compare what crosses a router bit for bit.

#![expect(unsafe_code, reason = "AF_PACKET sockets through libc")]

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::netns::NetNs;

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

/// An `AF_PACKET` socket bound to one interface of a namespace.
#[derive(Debug)]
pub struct Wire {
    fd: OwnedFd,
    ifindex: i32,
}

impl Wire {
    /// Opens a socket on `ifname` in `ns` (created from a thread inside the namespace: a packet
    /// socket belongs to the namespace it was created in).
    pub fn open(ns: &NetNs, ifname: &str) -> anyhow::Result<Self> {
        let ns = NetNs::existing(ns.name());
        let ifname = ifname.to_owned();
        thread::spawn(move || -> anyhow::Result<Self> {
            ns.enter()?;
            let name = CString::new(ifname.clone())?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(io::Error::last_os_error()).context(format!("no interface {ifname}"));
            }
            let proto = i32::from(ETH_P_ALL.to_be());
            // SAFETY: plain socket creation; the descriptor is owned at once.
            let raw = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
            };
            if raw < 0 {
                return Err(io::Error::last_os_error()).context("AF_PACKET socket");
            }
            // SAFETY: a new descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let wire = Self { fd, ifindex: ifindex.cast_signed() };
            let addr = wire.addr();
            // SAFETY: a valid sockaddr_ll of the given size.
            let rc = unsafe {
                libc::bind(
                    wire.fd.as_raw_fd(),
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error()).context(format!("bind to {ifname}"));
            }
            Ok(wire)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the socket thread panicked"))?
    }

    fn addr(&self) -> libc::sockaddr_ll {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = self.ifindex;
        addr
    }

    /// Sends one frame as it is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next frame the interface received (frames it sent are skipped), or `None` after
    /// `timeout` without one.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd =
                libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&raw mut pfd, 1, ms) };
            if ready < 0 {
                return Err(io::Error::last_os_error());
            }
            if ready == 0 {
                return Ok(None);
            }
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: the buffer and the address are valid for their lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &raw mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
            if from.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            return Ok(Some(buf[..n.cast_unsigned()].to_vec()));
        }
    }

    /// Discards whatever was received so far.
    pub fn drain(&self) -> io::Result<()> {
        while self.recv(Duration::ZERO)?.is_some() {}
        Ok(())
    }
}
