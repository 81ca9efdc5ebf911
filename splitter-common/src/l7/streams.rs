//! A connection's stream entries (`H2Conn::streams`): where a stream is followed, and how the
//! side that ends a call, or marks it, changes its entry when the other side's program may be
//! changing it at the same time on another CPU.

#[cfg(not(target_arch = "bpf"))]
use core::sync::atomic::{AtomicU64, Ordering};

use super::{Calls, H2_STREAMS, H2Stream};

/// The entries a stream may be followed in: client streams are odd and rise by two, so
/// concurrent calls take consecutive entries, each with the next as a second choice (a call
/// still open when both come round again leaves the newer one untracked). Two entries read, no
/// search: the kernel programs keep no pointer per entry.
#[inline(always)]
const fn stream_slots(id: u32) -> [usize; 2] {
    let first = (id >> 1) as usize;
    [first & (H2_STREAMS - 1), (first + 1) & (H2_STREAMS - 1)]
}
const _: () = assert!(H2_STREAMS.is_power_of_two());

/// Swaps `end_stream` tries: one, and one after each flag the server may add meanwhile.
const SWAPS: usize = 3;

/// Frees the entry of stream `id`, if it still holds it: true for the one side that ends the
/// call. The client's RST_STREAM and the server's last frame on a stream are read by two
/// programs, maybe at the same time on two CPUs (a deadline fires on both ends at once); the
/// entry's id and flags are swapped as one word, so only one of them counts the call's end.
/// The client's swap is tried again when the server changed the flags meanwhile: the server
/// is their only writer and only ever adds `ANSWERED`, then `HAD_DATA`, so a third swap always
/// finds them settled (and the server's own swap fails only when the client freed the entry).
///
/// # Safety
/// `stream` points to an entry valid for the call, which others touch only atomically or as
/// the kernel programs do (another CPU's program may write it meanwhile).
#[inline(always)]
pub(super) unsafe fn end_stream(stream: *mut H2Stream, id: u32) -> bool {
    // SAFETY: valid for this call (the caller's promise); `id` and `flags` are the entry's
    // first 8 bytes, 8-aligned (it holds a u64).
    unsafe { end_from(stream, id, load(stream.cast::<u64>())) }
}

/// `end_stream` from `seen`, the entry's id and flags as last read (maybe stale).
///
/// # Safety
/// As `end_stream`'s.
#[inline(always)]
unsafe fn end_from(stream: *mut H2Stream, id: u32, mut seen: u64) -> bool {
    for _ in 0..SWAPS {
        let (held, flags) = parts(seen);
        if held != id {
            return false;
        }
        // SAFETY: the caller's promise.
        let before = unsafe { compare_exchange(stream.cast::<u64>(), seen, word(0, flags)) };
        if before == seen {
            return true;
        }
        seen = before;
    }
    false
}

/// An entry's first 8 bytes, its id and flags, as one word.
#[inline(always)]
const fn word(id: u32, flags: u32) -> u64 {
    let ([a, b, c, d], [e, f, g, h]) = (id.to_ne_bytes(), flags.to_ne_bytes());
    u64::from_ne_bytes([a, b, c, d, e, f, g, h])
}

/// The id and flags of an entry's word.
#[inline(always)]
const fn parts(word: u64) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = word.to_ne_bytes();
    (
        u32::from_ne_bytes([a, b, c, d]),
        u32::from_ne_bytes([e, f, g, h]),
    )
}

/// Sets the flags of stream `id`'s entry from `had` to `flags` if the entry still holds that
/// stream: a client's reset may have freed it meanwhile, and its next call taken it.
///
/// # Safety
/// As `end_stream`'s.
#[inline(always)]
pub(super) unsafe fn set_flags(stream: *mut H2Stream, id: u32, had: u32, flags: u32) {
    // SAFETY: the caller's promise. The server's program is the flags' only writer, so the swap
    // fails only when the client freed the entry, and the new flags are then no longer wanted.
    unsafe { compare_exchange(stream.cast::<u64>(), word(id, had), word(id, flags)) };
}
const _: () = assert!(core::mem::offset_of!(H2Stream, flags) == 4);
const _: () = assert!(core::mem::align_of::<H2Stream>() == 8);

/// `*word`, read atomically.
///
/// # Safety
/// `word` is valid and 8-aligned for this call.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn load(word: *mut u64) -> u64 {
    // SAFETY: the caller's promise.
    unsafe { AtomicU64::from_ptr(word) }.load(Ordering::Acquire)
}

/// `*word`'s value before it was swapped for `new` where it held `current`.
///
/// # Safety
/// As `load`'s.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn compare_exchange(word: *mut u64, current: u64, new: u64) -> u64 {
    // SAFETY: the caller's promise.
    let word = unsafe { AtomicU64::from_ptr(word) };
    match word.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire) {
        Ok(before) | Err(before) => before,
    }
}

/// `load` in BPF: one 8-byte load, atomic on every architecture the kernel runs BPF on (LLVM
/// selects no atomic load for BPF's generic CPU).
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn load(word: *mut u64) -> u64 {
    // SAFETY: the caller's promise.
    unsafe { word.read_volatile() }
}

/// `compare_exchange` as BPF's `BPF_CMPXCHG` (a full barrier): Rust's BPF target has no
/// compare-and-swap of its own.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn compare_exchange(word: *mut u64, current: u64, new: u64) -> u64 {
    let mut before = current;
    // SAFETY: the caller's promise; the instruction swaps the word atomically, comparing it
    // with r0 and leaving its old value there.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) word,
            new = in(reg) new,
            inout("r0") before,
            options(nostack, preserves_flags)
        );
    }
    before
}

#[inline(always)]
pub(super) fn find_stream(conn: &Calls<'_>, id: u32) -> Option<usize> {
    if id == 0 {
        return None;
    }
    let [a, b] = stream_slots(id);
    if conn.streams[a].id == id {
        Some(a)
    } else if conn.streams[b].id == id {
        Some(b)
    } else {
        None
    }
}

#[inline(always)]
pub(super) fn free_stream(conn: &Calls<'_>, id: u32) -> Option<usize> {
    let [a, b] = stream_slots(id);
    if conn.streams[a].id == 0 {
        Some(a)
    } else if conn.streams[b].id == 0 {
        Some(b)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::l7::{ANSWERED, HAD_DATA};

    /// The server's first HEADERS or DATA marks its stream's entry, unless the client's reset
    /// freed the entry in between and its next call took it.
    #[test]
    fn the_server_marks_its_stream_not_the_next_call_in_its_entry() {
        let mut entry = H2Stream {
            id: 5,
            flags: 0,
            start_ns: 1,
        };
        // SAFETY: a local entry, valid for both calls.
        unsafe { set_flags(&raw mut entry, 5, 0, ANSWERED) };
        assert_eq!(entry.flags, ANSWERED);
        entry = H2Stream {
            id: 7,
            flags: 0,
            start_ns: 2,
        };
        // SAFETY: as above.
        unsafe { set_flags(&raw mut entry, 5, ANSWERED, ANSWERED | HAD_DATA) };
        assert_eq!((entry.id, entry.flags, entry.start_ns), (7, 0, 2));
    }

    /// The client's reset read the entry before the server marked it (on another CPU): its
    /// swap fails on the changed flags, and it tries again with what it found, which ends the
    /// call. A single swap would leave the stream followed, and its call never ended.
    #[test]
    fn a_reset_that_read_the_entry_before_the_server_marked_it_still_ends_it() {
        let mut entry = H2Stream {
            id: 9,
            flags: ANSWERED | HAD_DATA,
            start_ns: 3,
        };
        let before_the_marks = word(9, 0);
        // SAFETY: a local entry, valid for the call.
        assert!(unsafe { end_from(&raw mut entry, 9, before_the_marks) });
        assert_eq!((entry.id, entry.flags), (0, ANSWERED | HAD_DATA));
        // Another stream's: nothing happens.
        let mut other = H2Stream {
            id: 11,
            flags: 0,
            start_ns: 4,
        };
        // SAFETY: as above.
        assert!(!unsafe { end_from(&raw mut other, 9, before_the_marks) });
        assert_eq!(other.id, 11);
    }

    /// The client's reset and the server's last frame of one stream, read at the same time by
    /// programs on two CPUs: one of them ends the call, never both and never neither.
    #[test]
    fn a_stream_ended_by_both_sides_at_once_ends_once() {
        use std::{
            sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst},
            thread,
            time::{Duration, Instant},
        };
        const ROUNDS: u32 = 20_000;
        let entry = std::boxed::Box::into_raw(std::boxed::Box::new(H2Stream::default()));
        let at = entry as usize;
        let (round, ended, done) = (AtomicU32::new(0), AtomicUsize::new(0), AtomicU32::new(0));
        let deadline = Instant::now() + Duration::from_secs(20);
        let wait = |until: &dyn Fn() -> bool| {
            while !until() {
                assert!(Instant::now() < deadline, "a side never came");
                std::hint::spin_loop();
                thread::yield_now();
            }
        };
        thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for r in 1..=ROUNDS {
                        wait(&|| round.load(SeqCst) == r);
                        // SAFETY: the entry lives until both sides are done; it is only
                        // touched atomically while they run.
                        if unsafe { end_stream(at as *mut H2Stream, 2 * r + 1) } {
                            ended.fetch_add(1, SeqCst);
                        }
                        done.fetch_add(1, SeqCst);
                    }
                });
            }
            for r in 1..=ROUNDS {
                // SAFETY: both sides wait for the round before touching the entry.
                unsafe {
                    *entry = H2Stream {
                        id: 2 * r + 1,
                        flags: ANSWERED,
                        start_ns: 0,
                    };
                }
                round.store(r, SeqCst);
                wait(&|| done.load(SeqCst) == 2 * r);
                assert_eq!(ended.swap(0, SeqCst), 1, "round {r}");
                // SAFETY: both sides are done with this round.
                assert_eq!(unsafe { (*entry).id }, 0);
                assert_eq!(unsafe { (*entry).flags }, ANSWERED, "the flags stay");
            }
        });
        // SAFETY: from `Box::into_raw` above; nothing uses it any more.
        drop(unsafe { std::boxed::Box::from_raw(entry) });
    }
}
