//! Salts for the client hash: each rollout with client affinity draws another cohort of
//! clients for the canary.

/// A salt from the kernel's random source (the clock if that fails).
#[must_use]
pub fn fresh() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom writes at most the four bytes it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == 4 {
        u32::from_ne_bytes(bytes)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    }
}
