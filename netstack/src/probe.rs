//! Whether an address answers from inside a namespace: an ICMP echo (how an overlay
//! tells a peer that is up from one that is not), one of a given size that may not be
//! fragmented (a path MTU probe), and a DNS lookup (what a pod's resolver would get).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::netns::{Netns, NetnsError};

/// An echo request: type 8, code 0, the checksum, our id and `seq`, and `data` bytes
/// of payload (at least 8).
fn echo_request(id: u16, seq: u16, data: usize) -> Vec<u8> {
    let mut p = vec![0u8; 8 + data.max(8)];
    p[0] = 8;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"minipod!");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends an echo request to `to` every 200 ms from inside `ns` until a reply comes or
/// `within` passes; whether one came. Needs a raw socket (root in the namespace).
pub fn answers(ns: &Netns, to: Ipv4Addr, within: Duration) -> Result<bool, NetnsError> {
    echo(ns, to, 8, false, within)
}

/// Whether `to` answers an echo whose IP packet is `size` bytes and may not be
/// fragmented (the sender's link refusing it counts as no answer).
pub fn fits(ns: &Netns, to: Ipv4Addr, size: usize, within: Duration) -> Result<bool, NetnsError> {
    echo(ns, to, size.saturating_sub(28), true, within)
}

fn echo(ns: &Netns, to: Ipv4Addr, data: usize, dont_fragment: bool, within: Duration) -> Result<bool, NetnsError> {
    ns.run(move || {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
        if fd < 0 {
            return false;
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        if dont_fragment {
            let on: libc::c_int = libc::IP_PMTUDISC_PROBE;
            // SAFETY: an int option that lives across the call, with its size.
            let set = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if set != 0 {
                return false;
            }
        }
        let id = (std::process::id() & 0xffff) as u16;
        let dest = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to.octets()) },
            sin_zero: [0; 8],
        };
        let deadline = Instant::now() + within;
        let mut seq: u16 = 0;
        while Instant::now() < deadline {
            seq = seq.wrapping_add(1);
            let req = echo_request(id, seq, data);
            // SAFETY: the buffer and address live across the call, with their lengths.
            unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&dest as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            let round = Instant::now() + Duration::from_millis(200);
            while Instant::now() < round.min(deadline) {
                let left = round.min(deadline).saturating_duration_since(Instant::now());
                let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one pollfd that lives across the call.
                if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) } <= 0 {
                    break;
                }
                let mut buf = vec![0u8; 65536];
                // SAFETY: the buffer lives across the call, with its length.
                let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 28 {
                    continue;
                }
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                let icmp = &buf[ihl.min(n as usize)..n as usize];
                if from == to && icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                    return true;
                }
            }
        }
        false
    })
}

/// The addresses `server` gives for `name` (type A), asked from inside `ns`; None if
/// it gave no answer within `within`.
pub fn lookup(ns: &Netns, server: std::net::SocketAddr, name: &str, within: Duration) -> Result<Option<Vec<Ipv4Addr>>, NetnsError> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let Ok(qname) = Name::from_ascii(name) else { return Ok(None) };
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.queries.push(Query::query(qname, RecordType::A));
    let Ok(query) = msg.to_vec() else { return Ok(None) };
    ns.run(move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        sock.set_read_timeout(Some(within)).ok()?;
        sock.send_to(&query, server).ok()?;
        let mut buf = vec![0u8; 4096];
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let reply = Message::from_vec(&buf[..n]).ok()?;
        Some(
            reply
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect(),
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_checksum_is_rfc_1071s() {
        // An echo request with its checksum in place sums to zero.
        let p = super::echo_request(0x1234, 1, 8);
        assert_eq!(super::checksum(&p), 0);
        assert_eq!(super::checksum(&[0x45, 0x00, 0x00, 0x1c]), !0x451c);
    }
}
