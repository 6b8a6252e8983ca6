//! Address leases kept on disk, one file per leased address.
//!
//! The directory `<data_dir>/<network name>/` holds:
//! - `<a.b.c.d>`: a lease; its content is the container id that holds it;
//! - `last_reserved`: the address handed out last, so allocation goes round
//!   the pool instead of reusing an address the moment it is freed (a peer
//!   may still have connections or cached state pointing at it);
//! - `lock`: flock'ed around every read-modify-write, because the agent and
//!   any number of plugin processes may allocate at the same time.
//!
//! Files are never fsync'ed: a lease must outlive the process that wrote it,
//! which the page cache already guarantees, while after a machine crash every
//! pod namespace is gone anyway and the leases are stale whatever happened.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::{Error, NetConf};

/// How long a caller waits for another process's allocation before it is
/// told to try again.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

const LOCK_FILE: &str = "lock";
const LAST_RESERVED: &str = "last_reserved";

pub(crate) struct Pool {
    dir: PathBuf,
    subnet: Ipv4Net,
    /// First and last assignable address, as integers.
    first: u32,
    last: u32,
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io {
        op: op.into(),
        source,
    }
}

/// The addresses pods may get: all but the network and broadcast addresses
/// and `.1`, which belongs to the node. None for a /31 or /32.
pub(crate) fn assignable(subnet: &Ipv4Net) -> Option<(u32, u32)> {
    if subnet.prefix_len() > 30 {
        return None;
    }
    let first = u32::from(subnet.network()) + 2;
    let last = u32::from(subnet.broadcast()) - 1;
    Some((first, last))
}

struct Lock(#[allow(dead_code)] File);

impl Pool {
    pub(crate) fn new(conf: &NetConf) -> Result<Self, Error> {
        let (first, last) = assignable(&conf.subnet).ok_or_else(|| Error::InvalidConfig {
            field: "subnet".into(),
            reason: format!("{} leaves no address for pods", conf.subnet),
        })?;
        Ok(Self {
            dir: conf.data_dir.join(&conf.name),
            subnet: conf.subnet,
            first,
            last,
        })
    }

    pub(crate) fn size(&self) -> u32 {
        self.last - self.first + 1
    }

    fn lock(&self, exclusive: bool, create: bool) -> Result<Option<Lock>, Error> {
        if create {
            fs::create_dir_all(&self.dir).map_err(io_err(format!(
                "creating the lease directory {}",
                self.dir.display()
            )))?;
        } else if !self.dir.exists() {
            return Ok(None);
        }
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let mode = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            // SAFETY: the fd is open for the duration of the call.
            if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } == 0 {
                return Ok(Some(Lock(file)));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::Io {
                    op: format!("locking {}", path.display()),
                    source: e,
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Busy(format!(
                    "the lease store {} stayed locked for {}s",
                    self.dir.display(),
                    LOCK_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every lease file, whether or not it is inside the current subnet.
    fn scan(&self) -> Result<Vec<(Ipv4Addr, String)>, Error> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(io_err(format!("listing {}", self.dir.display()))(e));
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(format!("listing {}", self.dir.display())))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let owner = match fs::read_to_string(entry.path()) {
                Ok(s) => s.trim().to_string(),
                // Released between listing and reading.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("reading {}", entry.path().display()))(e)),
            };
            out.push((ip, owner));
        }
        out.sort();
        Ok(out)
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    /// The address leased to `container_id`, if any.
    pub(crate) fn lookup(&self, container_id: &str) -> Result<Option<Ipv4Addr>, Error> {
        let Some(_lock) = self.lock(false, false)? else {
            return Ok(None);
        };
        Ok(self
            .scan()?
            .into_iter()
            .find(|(ip, owner)| owner == container_id && self.in_pool(*ip))
            .map(|(ip, _)| ip))
    }

    pub(crate) fn list(&self) -> Result<Vec<(Ipv4Addr, String)>, Error> {
        let Some(_lock) = self.lock(false, false)? else {
            return Ok(Vec::new());
        };
        self.scan()
    }

    /// Leases an address to `container_id`: the one it already holds, or the
    /// next free one after the last handed out.
    pub(crate) fn allocate(&self, container_id: &str) -> Result<Ipv4Addr, Error> {
        let _lock = self.lock(true, true)?;
        let leases = self.scan()?;
        if let Some((ip, _)) = leases
            .iter()
            .find(|(ip, owner)| owner == container_id && self.in_pool(*ip))
        {
            return Ok(*ip);
        }
        let taken: HashSet<u32> = leases.iter().map(|(ip, _)| u32::from(*ip)).collect();
        let size = self.size();
        let start = self
            .last_reserved()
            .filter(|ip| self.in_pool(*ip))
            .map(|ip| (u32::from(ip) - self.first + 1) % size)
            .unwrap_or(0);
        for step in 0..size {
            let ip = Ipv4Addr::from(self.first + (start + step) % size);
            if taken.contains(&u32::from(ip)) {
                continue;
            }
            if self.create_lease(ip, container_id)? {
                self.write_last_reserved(ip)?;
                return Ok(ip);
            }
        }
        Err(Error::Exhausted {
            subnet: self.subnet,
            size,
        })
    }

    /// Writes the lease under a temporary name and hard-links it into place:
    /// link(2) fails if the address is taken, and a lease is never visible
    /// without its owner in it. False if the address was taken.
    fn create_lease(&self, ip: Ipv4Addr, container_id: &str) -> Result<bool, Error> {
        let pending = self.dir.join(".pending");
        write_file(&pending, container_id)
            .map_err(io_err(format!("writing {}", pending.display())))?;
        let path = self.dir.join(ip.to_string());
        let linked = fs::hard_link(&pending, &path);
        let _ = fs::remove_file(&pending);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(format!("creating the lease {}", path.display()))(e)),
        }
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn write_last_reserved(&self, ip: Ipv4Addr) -> Result<(), Error> {
        let tmp = self.dir.join(".last_reserved");
        let path = self.dir.join(LAST_RESERVED);
        write_file(&tmp, &ip.to_string())
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(io_err(format!("writing {}", path.display())))
    }

    /// Removes every lease held by `container_id`; returns what it held.
    pub(crate) fn release(&self, container_id: &str) -> Result<Vec<Ipv4Addr>, Error> {
        let Some(_lock) = self.lock(true, false)? else {
            return Ok(Vec::new());
        };
        let mut released = Vec::new();
        for (ip, owner) in self.scan()? {
            if owner != container_id {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            match fs::remove_file(&path) {
                Ok(()) => released.push(ip),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("removing {}", path.display()))(e)),
            }
        }
        Ok(released)
    }
}

fn write_file(path: &Path, content: &str) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(content.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(dir: &Path, subnet: &str) -> NetConf {
        NetConf {
            name: "t".into(),
            subnet: subnet.parse().unwrap(),
            mtu: 1500,
            gso_max_size: crate::LEGACY_GSO_MAX_SIZE,
            data_dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn skips_reserved_addresses_and_goes_round_robin() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(&conf(dir.path(), "10.0.0.0/29")).unwrap();
        assert_eq!(pool.size(), 5);
        let a = pool.allocate("a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            pool.allocate("a").unwrap(),
            a,
            "a retry gets the same address"
        );
        let b = pool.allocate("b").unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 0, 0, 3));
        pool.release("a").unwrap();
        // .2 is free again but .4 comes first.
        assert_eq!(pool.allocate("c").unwrap(), Ipv4Addr::new(10, 0, 0, 4));
        for id in ["d", "e"] {
            pool.allocate(id).unwrap();
        }
        // Wrapped around to the freed .2.
        assert_eq!(pool.allocate("f").unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(pool.list().unwrap().len(), 5);
        let err = pool.allocate("g").unwrap_err();
        assert_eq!(err.code(), 100, "{err}");
        assert!(err.to_string().contains("10.0.0.0/29"), "{err}");
    }

    #[test]
    fn a_new_pool_over_the_same_directory_sees_the_leases() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pool::new(&conf(dir.path(), "10.0.0.0/24")).unwrap();
        let a = first.allocate("a").unwrap();
        drop(first);
        let again = Pool::new(&conf(dir.path(), "10.0.0.0/24")).unwrap();
        let b = again.allocate("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(again.lookup("a").unwrap(), Some(a));
        assert_eq!(again.release("a").unwrap(), vec![a]);
        assert!(again.release("a").unwrap().is_empty());
        assert_eq!(again.list().unwrap(), vec![(b, "b".to_string())]);
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let c = conf(dir.path(), "10.0.0.0/24");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let pool = Pool::new(&c).unwrap();
                    (0..20)
                        .map(|i| pool.allocate(&format!("c{t}-{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 160);
    }

    #[test]
    fn tiny_subnets_have_no_pool() {
        assert!(assignable(&"10.0.0.0/31".parse().unwrap()).is_none());
        assert_eq!(
            assignable(&"10.0.0.0/30".parse().unwrap()),
            Some((0x0a000002, 0x0a000002))
        );
    }
}
