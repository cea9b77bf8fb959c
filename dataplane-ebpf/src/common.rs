//! What every XDP program of this crate needs: the one bounds-checked accessor for packet data,
//! the panic handler of a `no_std` program and the licence section.

use aya_ebpf::programs::XdpContext;

/// A pointer to a `T` at `offset` in the packet, if the packet is long enough to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Dual-licensed: the kernel requires a GPL-compatible licence for the helpers used here.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
