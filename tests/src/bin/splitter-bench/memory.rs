//! The maps' kernel memory, as the kernel charges it: each pinned map's `memlock`, the number
//! `bpftool map show` prints (and `splitter-ctl status` shows), read from a running daemon's
//! pins with the default sizes. Not arithmetic on key and value sizes: the kernel adds its own
//! per-entry and per-CPU overhead.

use std::fmt::Write as _;

use splitter_ctl::{kernel::memory, model::error::chain};
use splitter_tests::testbed::Testbed;

/// The bench's test bed for this section: 198.18.204.0/24 and namespaces `sp204-*`.
const BED: u8 = 204;

pub fn section(server: &str, _quick: bool) -> Result<String, String> {
    let mut bed = Testbed::with_index(BED, server);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let maps = memory::of_pins(&bed.pin_dir).map_err(|e| chain(&e).to_string())?;
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let total: u64 = maps.iter().map(|m| m.bytes).sum();
    let mut out = String::new();
    let _ = writeln!(out, "### Kernel memory of the maps\n");
    let _ = writeln!(
        out,
        "Each pinned map's `memlock` (`/proc/self/fdinfo`, what `bpftool map show` prints), with the default sizes (`flow_table_per_cpu` = 16384 on each possible CPU): **{:.1} MiB** in all.\n",
        mib(total)
    );
    let _ = writeln!(out, "| map | entries | bytes | bytes per entry |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for map in &maps {
        let per_entry = map
            .bytes
            .checked_div(map.max_entries)
            .map_or_else(|| "-".to_owned(), |b| b.to_string());
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {per_entry} |",
            map.map, map.max_entries, map.bytes
        );
    }
    out.push('\n');
    Ok(out)
}
