//! The kernel's rare events, reported to the daemon's log through aya-log: the last-resort pool
//! taking a flow, the new-flow guard steering a flow without an entry, the flow table refusing
//! an insert, a frame too short for the headers it claims. Never per packet: at most one record
//! per kind, CPU and `REPORT_EVERY_NS`, carrying how many more came meanwhile (a flood of
//! garbage costs a map lookup per packet on this path, and one record a second).
//!
//! `rare` is a subprogram of its own (`inline(never)`), so the packet path pays one call on a
//! rare branch and none of aya-log's formatting code.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use aya_log_ebpf::warn;
use splitter_common::{PLANE_COUNTERS, PlaneCounter, maps::REPORTS as REPORTS_NAME};

/// Least time between two records of one kind on one CPU.
const REPORT_EVERY_NS: u64 = 1_000_000_000;

/// When an event kind was last reported on this CPU, and how many were not reported since.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Reported {
    at_ns: u64,
    suppressed: u64,
}

/// `PlaneCounter` → its last report, per CPU. Written by this module only; not pinned (a new
/// program starts with a clean slate).
#[map(name = "REPORTS")]
static REPORTS: PerCpuArray<Reported> = PerCpuArray::with_max_entries(PLANE_COUNTERS, 0);
const _: () = assert!(matches!(REPORTS_NAME.as_bytes(), b"REPORTS"));

/// Reports `event` unless this CPU reported it less than `REPORT_EVERY_NS` ago.
#[inline(never)]
pub fn rare(event: PlaneCounter) {
    let Some(slot) = REPORTS.get_ptr_mut(event as u32) else {
        return;
    };
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
    let more = unsafe {
        if (*slot).at_ns != 0 && now.wrapping_sub((*slot).at_ns) < REPORT_EVERY_NS {
            (*slot).suppressed += 1;
            return;
        }
        let more = (*slot).suppressed;
        (*slot).at_ns = now;
        (*slot).suppressed = 0;
        more
    };
    match event {
        PlaneCounter::LastResort => warn!(
            &(),
            "a new flow went to the last-resort pool: neither blue nor green had a backend ({} more on this CPU since the last report)",
            more
        ),
        PlaneCounter::Guarded => warn!(
            &(),
            "the new-flow guard is tripping: a new flow over new_flow_rate_per_cpu was steered without a flow entry ({} more on this CPU since the last report)",
            more
        ),
        PlaneCounter::FlowInsertFailed => warn!(
            &(),
            "the flow table refused an entry; the flow was steered by hash ({} more on this CPU since the last report)",
            more
        ),
        PlaneCounter::Malformed => warn!(
            &(),
            "a frame too short for the headers it claims was passed untouched ({} more on this CPU since the last report)",
            more
        ),
        _ => {}
    }
}
