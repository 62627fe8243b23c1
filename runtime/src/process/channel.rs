//! Typed messages between minipod processes over a `SOCK_SEQPACKET` Unix socket:
//! one JSON datagram per message, file descriptors alongside by SCM_RIGHTS.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr};
use serde::{de::DeserializeOwned, Serialize};

/// Largest message accepted; a spec is a few KiB.
const MAX_MESSAGE: usize = 1 << 20;
/// Most descriptors one message carries: stdio, or one cgroup join file per v1
/// hierarchy (a host mounts a dozen or so).
const MAX_FDS: usize = 32;

/// A message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("creating a socket pair")]
    Pair(#[source] nix::Error),
    #[error("sending a message to the peer process")]
    Send(#[source] nix::Error),
    #[error("receiving a message from the peer process")]
    Recv(#[source] nix::Error),
    #[error("{0} descriptors in one message; at most {MAX_FDS} fit")]
    TooManyFds(usize),
    #[error("a message from the peer process was larger than {MAX_MESSAGE} bytes")]
    Truncated,
    #[error("encoding or decoding a message")]
    Codec(#[source] serde_json::Error),
    #[error("connecting to {path}")]
    Connect {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("the peer process closed the channel")]
    Closed,
}

/// One end of a message channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair, both ends close-on-exec.
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let (a, b) =
            socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).map_err(ChannelError::Pair)?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Connects to a listening channel socket at `path`.
    pub fn connect(path: &Path) -> Result<Channel, ChannelError> {
        let err = |source| ChannelError::Connect { path: path.display().to_string(), source };
        let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(err)?;
        let (addr, _dir) = unix_addr(path).map_err(err)?;
        socket::connect(fd.as_raw_fd(), &addr).map_err(err)?;
        Ok(Channel { fd })
    }

    /// Wraps a descriptor that is one end of a SOCK_SEQPACKET socket.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// Gives up the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Sends one message.
    pub fn send<T: Serialize>(&self, msg: &T) -> Result<(), ChannelError> {
        self.send_with_fds(msg, &[])
    }

    /// Sends one message with descriptors attached.
    pub fn send_with_fds<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> Result<(), ChannelError> {
        if fds.len() > MAX_FDS {
            return Err(ChannelError::TooManyFds(fds.len()));
        }
        let data = serde_json::to_vec(msg).map_err(ChannelError::Codec)?;
        let iov = [IoSlice::new(&data)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        loop {
            match socket::sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EPIPE) | Err(nix::Error::ECONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(ChannelError::Send(e)),
                Ok(_) => return Ok(()),
            }
        }
    }

    /// Receives one message; `None` when the peer has closed its end.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<Option<T>, ChannelError> {
        Ok(self.recv_with_fds()?.map(|(m, _)| m))
    }

    /// Receives one message and the descriptors that came with it.
    pub fn recv_with_fds<T: DeserializeOwned>(&self) -> Result<Option<(T, Vec<OwnedFd>)>, ChannelError> {
        // Sized to the message, not to the largest one: a zeroed 1 MiB buffer per receive
        // stays resident in each thread's malloc arena, and cost a busy daemon (a dozen
        // threads) about 30 MB.
        let mut buf = vec![0u8; self.next_len()?.clamp(1, MAX_MESSAGE)];
        let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match socket::recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg_space), MsgFlags::MSG_CMSG_CLOEXEC) {
                Err(nix::Error::EINTR) => continue,
                // The peer left with a message of ours unread. The kernel reports that
                // once, before what the peer sent last (an init's report of why it
                // failed): read on, to that and then to the end.
                Err(nix::Error::ECONNRESET) => continue,
                Err(e) => return Err(ChannelError::Recv(e)),
                Ok(msg) => {
                    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                        return Err(ChannelError::Truncated);
                    }
                    let mut fds = Vec::new();
                    for c in msg.cmsgs().map_err(ChannelError::Recv)? {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            // SAFETY: the kernel just installed these descriptors for us.
                            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                    break (msg.bytes, fds);
                }
            }
        };
        if len == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..len]).map_err(ChannelError::Codec)?;
        Ok(Some((msg, fds)))
    }

    /// The length of the next message, without taking it (0: the peer closed). A
    /// SOCK_SEQPACKET socket gives the whole length with MSG_TRUNC (Linux 3.4 on).
    fn next_len(&self) -> Result<usize, ChannelError> {
        loop {
            match socket::recv(self.fd.as_raw_fd(), &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
                // As in the receive itself: a reset is reported once, before what is left.
                Err(nix::Error::EINTR) | Err(nix::Error::ECONNRESET) => continue,
                Err(e) => return Err(ChannelError::Recv(e)),
                Ok(len) => return Ok(len),
            }
        }
    }

    /// Receives one message and treats a closed channel as an error.
    pub fn expect<T: DeserializeOwned>(&self) -> Result<T, ChannelError> {
        self.recv()?.ok_or(ChannelError::Closed)
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A listening socket that accepts channels (the monitor's control socket).
pub struct Listener {
    fd: OwnedFd,
}

/// The address of a socket at `path`. A path longer than `sun_path` holds (108 bytes;
/// a long container id under a deep root reaches that) is reached through its open
/// directory, `/proc/self/fd/N/NAME`, which the returned descriptor keeps valid.
fn unix_addr(path: &Path) -> nix::Result<(UnixAddr, Option<OwnedFd>)> {
    const SUN_PATH: usize = 107;
    if path.as_os_str().len() <= SUN_PATH {
        return Ok((UnixAddr::new(path)?, None));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return Err(nix::Error::ENAMETOOLONG) };
    let dir = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let short = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
    Ok((UnixAddr::new(&short)?, Some(dir)))
}

impl Listener {
    /// Binds and listens at `path`, owner-only.
    pub fn bind(path: &Path) -> Result<Listener, ChannelError> {
        let err = |source| ChannelError::Connect { path: path.display().to_string(), source };
        let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
            .map_err(err)?;
        let (addr, _dir) = unix_addr(path).map_err(err)?;
        let _ = std::fs::remove_file(path);
        socket::bind(fd.as_raw_fd(), &addr).map_err(err)?;
        socket::listen(&fd, socket::Backlog::new(16).map_err(err)?).map_err(err)?;
        Ok(Listener { fd })
    }

    /// Accepts one pending connection; `None` when none is pending.
    pub fn accept(&self) -> Result<Option<Channel>, nix::Error> {
        match socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            Ok(fd) => Ok(Some(Channel { fd: unsafe { OwnedFd::from_raw_fd(fd) } })),
            Err(nix::Error::EAGAIN) | Err(nix::Error::ECONNABORTED) | Err(nix::Error::EINTR) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_descriptors_cross_a_pair() {
        let (a, b) = Channel::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        a.send_with_fds(&vec!["hello".to_string()], &[file.as_raw_fd()]).unwrap();
        let (msg, fds): (Vec<String>, _) = b.recv_with_fds().unwrap().unwrap();
        assert_eq!(msg, vec!["hello"]);
        assert_eq!(fds.len(), 1);
        drop(a);
        assert!(b.recv::<Vec<String>>().unwrap().is_none());
    }

    /// The receive buffer is sized by a peek: small and large messages (up to what a
    /// default socket buffer takes, about 200 KiB) come whole, and the descriptors of a
    /// peeked message still arrive.
    #[test]
    fn messages_of_any_size_up_to_the_limit_come_whole() {
        let (a, b) = Channel::pair().unwrap();
        for size in [0, 1, 4096, 150 << 10] {
            let text = "x".repeat(size);
            let file = std::fs::File::open("/dev/null").unwrap();
            a.send_with_fds(&text, &[file.as_raw_fd()]).unwrap();
            let (got, fds): (String, _) = b.recv_with_fds().unwrap().unwrap();
            assert_eq!((got.len(), fds.len()), (size, 1));
        }
    }
}
