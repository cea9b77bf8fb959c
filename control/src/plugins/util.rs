//! Small helpers the plugin host shares with the rest of the product (the API, provisioning,
//! the testbed): hexadecimal, the SHA-256 that manifests carry, wall-clock milliseconds; and
//! for the host itself, cutting a plugin's text to size and a caught panic's message.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Bytes from hexadecimal, or `None`.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The SHA-256 of a component, as manifests carry it.
pub fn sha256_hex(wasm: &[u8]) -> String {
    hex(&Sha256::digest(wasm))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `s` cut to at most `max` bytes, at a character boundary: a plugin's text may put a
/// multi-byte character across any limit, and `String::truncate` panics inside one.
pub(super) fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    // A character is at most 4 bytes, and 0 is a boundary: this ends within 3 steps.
    let end = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    s.get(..end).unwrap_or_default()
}

/// `s` cut to at most `max` bytes as [`clip`] does, ending in `…` when something was cut.
pub(super) fn clip_marked(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut out = clip(s, max.saturating_sub('…'.len_utf8())).to_owned();
    out.push('…');
    out
}

/// What a caught panic said (its payload is a `&str` or a `String` but for `panic_any`), on
/// one line: it becomes a reason an operator reads in a list.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_never_splits_a_character() {
        for ch in ['a', 'é', '€', '𝄞'] {
            for before in 0..8 {
                let s = format!("{}{ch}{}", "x".repeat(before), "y".repeat(3));
                for max in 0..=s.len() + 1 {
                    let c = clip(&s, max);
                    assert!(c.len() <= max && s.starts_with(c), "{s:?} at {max}: {c:?}");
                    // As long as it can be: short of `max` by less than a character.
                    assert!(c.len() == s.len() || max - c.len() < ch.len_utf8(), "{s:?} {max}");
                    let m = clip_marked(&s, max.max(3));
                    assert!(m.len() <= max.max(3), "{s:?} at {max}: {m:?}");
                }
            }
        }
        assert_eq!(clip("€", 2), "");
        assert_eq!(clip_marked("abcdef", 5), "ab…");
        assert_eq!(clip_marked("abc", 5), "abc");
    }

    #[test]
    fn a_panic_message_is_one_line() {
        let caught = std::panic::catch_unwind(|| assert_eq!(1 + 1, 3, "arithmetic"));
        let message = panic_message(&*caught.expect_err("it panicked"));
        assert!(message.starts_with("assertion `left == right` failed: arithmetic left: 2"));
        assert!(!message.contains('\n'), "{message}");
        let caught = std::panic::catch_unwind(|| std::panic::panic_any(7u8));
        assert_eq!(panic_message(&*caught.expect_err("it panicked")), "a panic without a message");
    }
}
