//! `aya::Pod` for the map types, so userspace can read and write them in maps.
#![expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]

use crate::{Counter, EcmpGroup, Iface, IfaceKey, NeighRequest, NextHop, Route};

// SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays, with explicit
// padding fields (the size asserts in lib.rs hold that), so every bit pattern is valid.
unsafe impl aya::Pod for Route {}
// SAFETY: as above.
unsafe impl aya::Pod for NextHop {}
// SAFETY: as above.
unsafe impl aya::Pod for EcmpGroup {}
// SAFETY: as above.
unsafe impl aya::Pod for IfaceKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Iface {}
// SAFETY: as above.
unsafe impl aya::Pod for Counter {}
// SAFETY: as above.
unsafe impl aya::Pod for NeighRequest {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::IfaceCacheEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::hooks::FilterRule {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::hooks::RateRule {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::hooks::RateKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::hooks::Bucket {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::hooks::HookConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::hooks::SteerRule {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::hooks::Sample {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::TalkerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::xmit::XmitStats {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::xmit::XmitConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::xmit::EgressHold {}
