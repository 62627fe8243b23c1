//! Address management for one subnet (IPv4 or IPv6) of a network, shared by every
//! process on the node.
//!
//! State lives under the runtime state dir (tmpfs in production: a reboot frees
//! everything, unlike CNI host-local): `ips/<addr>` holds the owner, `owners/<owner>`
//! holds the address (so release is O(1)), `next` remembers where the last scan
//! stopped (so allocation is O(1) until the range wraps). One `flock` on `lock`
//! guards each read-modify-write; readers never take it.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};

use crate::names::OwnerId;

/// An allocation or release failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("allocating an address in {cidr}: all {size} are taken; release some or use a larger network")]
    Exhausted { cidr: IpNetwork, size: u128 },
    #[error("{ip} is not a usable address of {cidr} (network, gateway and broadcast addresses are reserved)")]
    NotUsable { ip: IpAddr, cidr: IpNetwork },
    #[error("{ip} in {cidr} is already taken by {holder}")]
    Taken { ip: IpAddr, cidr: IpNetwork, holder: String },
    #[error("{owner} already has {ip} in {cidr}: release it first")]
    OwnerHasOne { owner: OwnerId, ip: IpAddr, cidr: IpNetwork },
    #[error("IPAM state {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn ioerr(path: &Path) -> impl FnOnce(io::Error) -> IpamError + '_ {
    move |source| IpamError::Io { path: path.to_path_buf(), source }
}

/// The address pool of one network.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    cidr: IpNetwork,
    gateway: IpAddr,
}

impl Ipam {
    /// The pool for `cidr` with state in `dir` (created on first use).
    pub fn new(dir: PathBuf, cidr: IpNetwork, gateway: IpAddr) -> Self {
        Self { dir, cidr, gateway }
    }

    /// First and last host addresses as numbers (the network address and the last
    /// one, broadcast in IPv4, excluded).
    fn range(&self) -> (u128, u128) {
        let net = to_num(self.cidr.network());
        let last = match self.cidr {
            IpNetwork::V4(n) => u128::from(u32::from(n.broadcast())),
            IpNetwork::V6(n) => net | (u128::MAX >> n.prefix()),
        };
        (net + 1, last.saturating_sub(1))
    }

    fn address(&self, n: u128) -> IpAddr {
        match self.cidr {
            IpNetwork::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(n as u32)),
            IpNetwork::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(n)),
        }
    }

    fn usable(&self, ip: IpAddr) -> bool {
        let (lo, hi) = self.range();
        ip.is_ipv4() == self.cidr.is_ipv4() && (lo..=hi).contains(&to_num(ip)) && ip != self.gateway
    }

    /// How many addresses members can get.
    pub fn capacity(&self) -> u128 {
        let (lo, hi) = self.range();
        (hi + 1).saturating_sub(lo).saturating_sub(u128::from(self.cidr.contains(self.gateway)))
    }

    fn lock(&self) -> Result<Flock<fs::File>, IpamError> {
        for sub in ["ips", "owners"] {
            let d = self.dir.join(sub);
            fs::create_dir_all(&d).map_err(ioerr(&d))?;
        }
        let path = self.dir.join("lock");
        let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(ioerr(&path))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| IpamError::Io { path, source: e.into() })
    }

    /// Gives `owner` an address: `want` if given and free, else the next free one.
    pub fn allocate(&self, owner: &OwnerId, want: Option<IpAddr>) -> Result<IpAddr, IpamError> {
        let _lock = self.lock()?;
        if let Some(ip) = self.address_of(owner)? {
            return Err(IpamError::OwnerHasOne { owner: owner.clone(), ip, cidr: self.cidr });
        }
        let ip = match want {
            Some(ip) => {
                if !self.usable(ip) {
                    return Err(IpamError::NotUsable { ip, cidr: self.cidr });
                }
                if let Some(holder) = self.holder(ip)? {
                    return Err(IpamError::Taken { ip, cidr: self.cidr, holder });
                }
                ip
            }
            None => self.next_free()?,
        };
        let ip_file = self.dir.join("ips").join(ip.to_string());
        fs::write(&ip_file, owner.as_str()).map_err(ioerr(&ip_file))?;
        let owner_file = self.dir.join("owners").join(owner.as_str());
        if let Err(e) = fs::write(&owner_file, ip.to_string()) {
            let _ = fs::remove_file(&ip_file);
            return Err(ioerr(&owner_file)(e));
        }
        let next = self.dir.join("next");
        let _ = fs::File::create(&next).and_then(|mut f| f.write_all((to_num(ip) + 1).to_string().as_bytes()));
        Ok(ip)
    }

    fn next_free(&self) -> Result<IpAddr, IpamError> {
        let (lo, hi) = self.range();
        let hint = fs::read_to_string(self.dir.join("next"))
            .ok()
            .and_then(|s| s.trim().parse::<u128>().ok())
            .filter(|n| (lo..=hi).contains(n))
            .unwrap_or(lo);
        let size = hi.saturating_sub(lo) + 1;
        // An IPv6 range is never scanned whole: a million probes means it is full enough.
        for i in 0..size.min(1 << 20) {
            let ip = self.address(lo + (hint - lo + i) % size);
            if ip != self.gateway && !self.dir.join("ips").join(ip.to_string()).exists() {
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted { cidr: self.cidr, size: self.capacity() })
    }

    /// Frees `owner`'s address; returns it, or None if it had none (idempotent).
    pub fn release(&self, owner: &OwnerId) -> Result<Option<IpAddr>, IpamError> {
        let _lock = self.lock()?;
        let Some(ip) = self.address_of(owner)? else { return Ok(None) };
        let ip_file = self.dir.join("ips").join(ip.to_string());
        match fs::remove_file(&ip_file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ioerr(&ip_file)(e)),
        }
        let owner_file = self.dir.join("owners").join(owner.as_str());
        fs::remove_file(&owner_file).map_err(ioerr(&owner_file))?;
        Ok(Some(ip))
    }

    /// The address `owner` holds, if any.
    pub fn address_of(&self, owner: &OwnerId) -> Result<Option<IpAddr>, IpamError> {
        let path = self.dir.join("owners").join(owner.as_str());
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ioerr(&path)(e)),
        }
    }

    fn holder(&self, ip: IpAddr) -> Result<Option<String>, IpamError> {
        let path = self.dir.join("ips").join(ip.to_string());
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ioerr(&path)(e)),
        }
    }

    /// Frees what a writer killed mid-way left: an address file whose owner holds no
    /// address (or another one), an owner file naming no address that points back.
    /// Both files are written under the pool's lock, so none of this is an allocation
    /// in progress. Returns the addresses freed.
    pub fn repair(&self) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        let ips = self.dir.join("ips");
        for e in fs::read_dir(&ips).map_err(ioerr(&ips))?.flatten() {
            let Ok(ip) = e.file_name().to_string_lossy().parse::<IpAddr>() else { continue };
            let owner = fs::read_to_string(e.path()).ok().and_then(|h| OwnerId::new(h.trim().to_string()).ok());
            let held = match &owner {
                Some(owner) => self.address_of(owner)? == Some(ip),
                None => false,
            };
            if !held {
                remove_if_present(&e.path())?;
                freed.push(ip);
            }
        }
        let owners = self.dir.join("owners");
        for e in fs::read_dir(&owners).map_err(ioerr(&owners))?.flatten() {
            let owner = e.file_name().to_string_lossy().into_owned();
            let points_back = match fs::read_to_string(e.path()).ok().and_then(|s| s.trim().parse::<IpAddr>().ok()) {
                Some(ip) => self.holder(ip)?.is_some_and(|h| h.trim() == owner),
                None => false,
            };
            if !points_back {
                remove_if_present(&e.path())?;
            }
        }
        Ok(freed)
    }

    /// Every owner with an address.
    pub fn owners(&self) -> Result<Vec<(OwnerId, IpAddr)>, IpamError> {
        let dir = self.dir.join("owners");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(ioerr(&dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Ok(owner) = OwnerId::new(e.file_name().to_string_lossy().into_owned()) else { continue };
            if let Some(ip) = self.address_of(&owner)? {
                out.push((owner, ip));
            }
        }
        Ok(out)
    }
}

fn remove_if_present(path: &Path) -> Result<(), IpamError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ioerr(path)(e)),
        _ => Ok(()),
    }
}

fn to_num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool's directory, removed however the test ends.
    pub(super) struct Dir(pub(super) PathBuf);

    impl Dir {
        pub(super) fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("minipod-ipam-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    impl std::ops::Deref for Dir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for Dir {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    fn pool(name: &str, cidr: &str) -> (Ipam, Dir) {
        let dir = Dir::new(name);
        let cidr: IpNetwork = cidr.parse().unwrap();
        let probe = Ipam::new(dir.0.clone(), cidr, cidr.network());
        let gw = probe.address(to_num(cidr.network()) + 1);
        (Ipam::new(dir.0.clone(), cidr, gw), dir)
    }

    fn owner(n: usize) -> OwnerId {
        OwnerId::new(format!("pod-{n}")).unwrap()
    }

    #[test]
    fn skips_network_gateway_and_broadcast_and_reports_exhaustion() {
        let (ipam, dir) = pool("small", "10.1.0.0/29");
        assert_eq!(ipam.capacity(), 5);
        let got: Vec<IpAddr> = (0..5).map(|i| ipam.allocate(&owner(i), None).unwrap()).collect();
        assert_eq!(got, ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"].map(|s| s.parse::<IpAddr>().unwrap()));
        let err = ipam.allocate(&owner(9), None).unwrap_err().to_string();
        assert!(err.contains("10.1.0.0/29: all 5 are taken"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn release_is_by_owner_idempotent_and_frees_for_reuse() {
        let (ipam, dir) = pool("release", "10.1.1.0/30");
        let ip = ipam.allocate(&owner(1), None).unwrap();
        assert_eq!(ip, "10.1.1.2".parse::<IpAddr>().unwrap());
        assert!(ipam.allocate(&owner(2), None).is_err());
        assert_eq!(ipam.release(&owner(1)).unwrap(), Some(ip));
        assert_eq!(ipam.release(&owner(1)).unwrap(), None);
        assert_eq!(ipam.allocate(&owner(2), None).unwrap(), ip);
        fs::remove_dir_all(dir).unwrap();
    }

    /// After releases the next address follows the last one given rather than going
    /// back to a freed one, whose neighbours' caches and conntrack entries may still
    /// name the pod that left.
    #[test]
    fn the_next_address_follows_the_last_given_not_a_freed_one() {
        let (ipam, dir) = pool("next", "10.1.5.0/24");
        assert_eq!(ipam.allocate(&owner(1), None).unwrap(), "10.1.5.2".parse::<IpAddr>().unwrap());
        assert_eq!(ipam.allocate(&owner(2), None).unwrap(), "10.1.5.3".parse::<IpAddr>().unwrap());
        ipam.release(&owner(2)).unwrap();
        ipam.release(&owner(1)).unwrap();
        assert_eq!(ipam.allocate(&owner(3), None).unwrap(), "10.1.5.4".parse::<IpAddr>().unwrap());
        fs::remove_dir_all(dir).unwrap();
    }

    /// What a fresh pool or an allocation cut short leaves out is nothing, not an
    /// error; anything else the file system answers (a directory where a file should
    /// be) is reported.
    #[test]
    fn absent_files_are_nothing_and_other_failures_are_reported() {
        let (ipam, dir) = pool("absent", "10.1.6.0/24");
        assert_eq!(ipam.owners().unwrap(), vec![], "a pool nobody used yet has no owners");
        let ip = ipam.allocate(&owner(1), None).unwrap();
        fs::remove_file(dir.join("ips").join(ip.to_string())).unwrap();
        assert_eq!(ipam.release(&owner(1)).unwrap(), Some(ip), "the address file was gone already");
        let ip = ipam.allocate(&owner(2), None).unwrap();
        let ip_file = dir.join("ips").join(ip.to_string());
        fs::remove_file(&ip_file).unwrap();
        fs::create_dir(&ip_file).unwrap();
        assert!(ipam.release(&owner(2)).is_err(), "an address file that cannot be removed");
        fs::create_dir(dir.join("owners").join("pod-9")).unwrap();
        assert!(ipam.address_of(&owner(9)).is_err(), "an owner file that cannot be read");
        assert!(ipam.owners().is_err(), "an owner file that cannot be read, listed");
        fs::remove_dir_all(dir.join("owners")).unwrap();
        fs::write(dir.join("owners"), "").unwrap();
        assert!(ipam.owners().is_err(), "an owners directory that is a file");
        fs::remove_file(dir.join("owners")).unwrap();
        fs::create_dir(dir.join("owners")).unwrap();
        let err = ipam.repair().unwrap_err().to_string();
        assert!(err.contains(&ip.to_string()), "an address file nobody holds that cannot be removed: {err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_requested_address_is_given_or_refused_with_its_holder() {
        let (ipam, dir) = pool("want", "10.1.2.0/24");
        let want: IpAddr = "10.1.2.77".parse().unwrap();
        assert_eq!(ipam.allocate(&owner(1), Some(want)).unwrap(), want);
        let err = ipam.allocate(&owner(2), Some(want)).unwrap_err().to_string();
        assert!(err.contains("already taken by pod-1"), "{err}");
        assert!(ipam.allocate(&owner(3), Some("10.1.2.1".parse().unwrap())).is_err(), "gateway");
        assert!(ipam.allocate(&owner(3), Some("10.1.3.5".parse().unwrap())).is_err(), "outside");
        assert!(ipam.allocate(&owner(1), None).is_err(), "one per owner");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_allocations_from_many_threads_never_collide() {
        let (ipam, dir) = pool("threads", "10.1.4.0/22");
        let ips: Vec<IpAddr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..200)
                .map(|i| {
                    let ipam = ipam.clone();
                    s.spawn(move || ipam.allocate(&owner(i), None).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::HashSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), 200);
        assert_eq!(ipam.owners().unwrap().len(), 200);
        fs::remove_dir_all(dir).unwrap();
    }

    /// What a crash between the two writes of an allocation, or in the middle of one,
    /// leaves is freed; whole allocations stay.
    #[test]
    fn repair_frees_half_written_allocations_and_keeps_whole_ones() {
        let (ipam, dir) = pool("repair", "10.99.7.0/24");
        let kept = ipam.allocate(&owner(1), None).unwrap();
        let ips = dir.join("ips");
        // Killed after creating the address file, before writing it.
        fs::write(ips.join("10.99.7.50"), b"").unwrap();
        // Killed between the address file and the owner file.
        fs::write(ips.join("10.99.7.51"), owner(2).as_str()).unwrap();
        // Killed while writing the owner file.
        fs::write(dir.join("owners").join(owner(3).as_str()), b"").unwrap();
        let mut freed = ipam.repair().unwrap();
        freed.sort();
        assert_eq!(freed, ["10.99.7.50".parse::<IpAddr>().unwrap(), "10.99.7.51".parse().unwrap()]);
        assert_eq!(ipam.owners().unwrap(), vec![(owner(1), kept)]);
        assert!(!dir.join("owners").join(owner(3).as_str()).exists());
        assert_eq!(ipam.allocate(&owner(2), Some("10.99.7.51".parse().unwrap())).unwrap().to_string(), "10.99.7.51");
        assert!(ipam.repair().unwrap().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod v6_tests {
    use super::*;

    #[test]
    fn ipv6_pools_allocate_in_order_and_refuse_the_other_family() {
        let guard = super::tests::Dir::new("v6");
        let dir = guard.0.clone();
        let ipam = Ipam::new(dir.clone(), "fd00:10::/64".parse().unwrap(), "fd00:10::1".parse().unwrap());
        let a = ipam.allocate(&OwnerId::new("a").unwrap(), None).unwrap();
        let b = ipam.allocate(&OwnerId::new("b").unwrap(), None).unwrap();
        assert_eq!((a.to_string(), b.to_string()), ("fd00:10::2".into(), "fd00:10::3".into()));
        assert!(ipam.allocate(&OwnerId::new("c").unwrap(), Some("10.0.0.5".parse().unwrap())).is_err());
        assert!(ipam.capacity() > u128::from(u32::MAX));
        fs::remove_dir_all(&dir).unwrap();
        // The top of a small range: a /126 holds ::1 (the gateway), ::2 and ::3 is its last.
        let small = Ipam::new(dir.clone(), "fd00:11::/126".parse().unwrap(), "fd00:11::1".parse().unwrap());
        assert_eq!(small.capacity(), 1);
        assert_eq!(small.allocate(&OwnerId::new("a").unwrap(), None).unwrap().to_string(), "fd00:11::2");
        assert!(small.allocate(&OwnerId::new("b").unwrap(), None).is_err(), "the last address is not given");
        fs::remove_dir_all(dir).unwrap();
    }
}
