//! What the kernel says about a network interface, in the caller's network namespace.

use std::ffi::c_void;

/// `ETHTOOL_GDRVINFO`.
const GET_DRIVER_INFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DriverInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved: [u8; 12],
    counts: [u32; 5],
}

/// `struct ifreq` with its data pointer, padded to the kernel's size.
#[repr(C)]
struct InterfaceRequest {
    name: [u8; libc::IFNAMSIZ],
    data: *mut c_void,
    _pad: [u8; 16],
}

/// The driver behind `interface` (`veth`, `virtio_net`, `mlx5_core`...), as `ethtool -i`
/// reports it; `None` when the interface does not exist or does not say.
#[must_use]
pub fn driver(interface: &str) -> Option<String> {
    let bytes = interface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return None;
    }
    let mut info = DriverInfo {
        cmd: GET_DRIVER_INFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved: [0; 12],
        counts: [0; 5],
    };
    let mut request = InterfaceRequest {
        name: [0; libc::IFNAMSIZ],
        data: (&raw mut info).cast(),
        _pad: [0; 16],
    };
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a datagram socket, closed below; SIOCETHTOOL reads the name and writes at most
    // one `ethtool_drvinfo` through the data pointer, both of which outlive the call.
    let ok = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &raw mut request);
        libc::close(fd);
        rc == 0
    };
    if !ok {
        return None;
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    let name = String::from_utf8_lossy(&info.driver[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// Whether device `index` of the caller's namespace links to a device in another network
/// namespace, as the kernel's `RTM_GETLINK` answer says (`IFLA_LINK_NETNSID`, which it gives
/// only then). For a veth, the other end lives there. False when the device does not exist or
/// the kernel cannot be asked.
#[must_use]
pub fn links_elsewhere(index: u32) -> bool {
    let Ok(ifi_index) = i32::try_from(index) else {
        return false;
    };
    #[repr(C)]
    struct Request {
        header: libc::nlmsghdr,
        link: libc::ifinfomsg,
    }
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: libc::RTM_GETLINK,
            nlmsg_flags: libc::NLM_F_REQUEST as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        link: {
            // SAFETY: a plain C struct for which all zeroes is valid.
            let mut link: libc::ifinfomsg = unsafe { std::mem::zeroed() };
            link.ifi_family = libc::AF_UNSPEC as u8;
            link.ifi_index = ifi_index;
            link
        },
    };
    let mut answer = vec![0u8; 32 * 1024];
    // SAFETY: a netlink socket, closed below; send reads the request and recv writes at most
    // `answer.len()` bytes into it, both of which outlive the calls.
    let got = unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return false;
        }
        let sent = libc::send(fd, (&raw const request).cast(), size_of::<Request>(), 0);
        let got = if sent == size_of::<Request>() as isize {
            libc::recv(fd, answer.as_mut_ptr().cast(), answer.len(), 0)
        } else {
            -1
        };
        libc::close(fd);
        got
    };
    let Ok(got) = usize::try_from(got) else {
        return false;
    };
    link_attributes(&answer[..got.min(answer.len())]).any(|kind| kind == libc::IFLA_LINK_NETNSID)
}

/// The attribute types of the first message of a netlink answer when it is an
/// `RTM_NEWLINK`; none for an error or anything malformed.
fn link_attributes(answer: &[u8]) -> impl Iterator<Item = u16> {
    let header = size_of::<libc::nlmsghdr>();
    let start = header + size_of::<libc::ifinfomsg>();
    let u16_at = |at: usize| {
        answer
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let len = answer
        .get(..4)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let link = len >= start && len <= answer.len() && u16_at(4) == Some(libc::RTM_NEWLINK);
    let end = if link { len } else { 0 };
    let mut at = start;
    std::iter::from_fn(move || {
        if at + 4 > end {
            return None;
        }
        let size = usize::from(u16_at(at)?);
        let kind =
            u16_at(at + 2)? & !(libc::NLA_F_NESTED as u16 | libc::NLA_F_NET_BYTEORDER as u16);
        if size < 4 || at + size > end {
            return None;
        }
        at += (size + 3) & !3;
        Some(kind)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_cannot_take_are_refused_up_front() {
        assert_eq!(driver(""), None);
        assert_eq!(driver("a-name-longer-than-ifnamsiz"), None);
        assert_eq!(driver("nul\0name"), None);
        assert_eq!(driver("splitter-none0"), None, "no such interface");
    }

    /// An `RTM_NEWLINK` answer with `attributes` (type, payload).
    fn answer(kind: u16, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0u8; size_of::<libc::ifinfomsg>()];
        for (t, payload) in attributes {
            let size = 4 + payload.len();
            body.extend_from_slice(&(size as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(payload);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let len = size_of::<libc::nlmsghdr>() + body.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_link_answer_is_read_attribute_by_attribute_and_anything_else_is_empty() {
        let link = answer(
            libc::RTM_NEWLINK,
            &[
                (libc::IFLA_IFNAME, b"veth0\0"),
                (libc::IFLA_LINK_NETNSID, &[1, 0, 0, 0]),
            ],
        );
        let kinds: Vec<u16> = link_attributes(&link).collect();
        assert_eq!(kinds, [libc::IFLA_IFNAME, libc::IFLA_LINK_NETNSID]);
        let error = answer(
            libc::NLMSG_ERROR as u16,
            &[(libc::IFLA_LINK_NETNSID, &[0; 4])],
        );
        assert_eq!(link_attributes(&error).count(), 0);
        // Cut short: the header claims more than was read.
        assert_eq!(link_attributes(&link[..link.len() - 4]).count(), 0);
        // An attribute longer than its message ends the walk.
        let mut bad = link.clone();
        let first = size_of::<libc::nlmsghdr>() + size_of::<libc::ifinfomsg>();
        bad[first..first + 2].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(link_attributes(&bad).count(), 0);
    }

    #[test]
    fn loopback_links_nowhere_else() {
        // Index 1 is loopback in every namespace.
        assert!(!links_elsewhere(1));
        assert!(!links_elsewhere(u32::MAX));
    }
}
