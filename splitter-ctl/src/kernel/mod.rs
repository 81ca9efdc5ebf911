//! The data plane from user space: loading, attaching, adopting and detaching the programs
//! (`dataplane`), typed access to the pinned maps (`maps`), a config applied as a diff
//! (`apply`), closed flows swept out (`aging`), interface drivers (`netdev`), the devices the fast path may redirect to (`forward`) and the reply fast path's links
//! (`reply_links`), the lock that
//! serializes writers of a split word (`split_lock`), the programs' rare events forwarded
//! to the log (`reports`), and the maps' kernel memory (`memory`).

pub mod aging;
pub mod apply;
pub mod closer;
pub mod dataplane;
pub mod drains;
pub mod forward;
pub mod layout;
pub mod maps;
pub mod memory;
pub mod netdev;
pub mod reply_links;
pub mod reports;
pub mod split_lock;
pub mod split_maps;
