//! Loading, pinning and attaching, the same way for every program: maps
//! pinned by name under a bpffs directory (the node's, or a private one
//! for uses that share nothing with the node's datapath), programs loaded
//! by name, and links pinned so they outlive the agent.

use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{CgroupSockAddr, Program, ProgramError, SchedClassifier};
use aya::{Ebpf, EbpfLoader};

use super::Error;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mounts bpffs at /sys/fs/bpf unless it is already there.
pub fn ensure_bpffs() -> std::io::Result<()> {
    let path = c"/sys/fs/bpf";
    // SAFETY: a valid C string and a zeroed statfs buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf")?;
    // SAFETY: valid C strings; a plain bpffs mount.
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Where the maps of a loaded object live.
#[derive(Clone, Copy, Debug)]
pub enum MapPins<'a> {
    /// Pinned in this directory: reused when an earlier agent left them
    /// there, so programs loaded now see the same state.
    Dir(&'a Path),
    /// Fresh maps of their own, alive only while the object is held.
    Private,
}

/// Loads `object` (its maps, not yet its programs) with its maps in `pins`.
pub fn load(object: &[u8], pins: MapPins<'_>) -> Result<Ebpf, Error> {
    ensure_bpffs()?;
    match pins {
        MapPins::Dir(dir) => {
            std::fs::create_dir_all(dir)?;
            Ok(EbpfLoader::new()
                .default_map_pin_directory(dir)
                .load(object)?)
        }
        MapPins::Private => {
            // The maps are declared pinned; a directory that is gone as soon
            // as they exist leaves them owned by the object alone.
            let dir = private_dir();
            std::fs::create_dir_all(&dir)?;
            let loaded = EbpfLoader::new()
                .default_map_pin_directory(&dir)
                .load(object);
            let _ = std::fs::remove_dir_all(&dir);
            Ok(loaded?)
        }
    }
}

fn private_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    PathBuf::from(format!(
        "/sys/fs/bpf/kestrel-private-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A kind of program the agent loads.
pub trait Kind: Sized {
    fn from_program(p: &mut Program) -> Result<&mut Self, ProgramError>;
    fn load_into_kernel(&mut self) -> Result<(), ProgramError>;
    fn is_loaded(&self) -> bool;
}

macro_rules! kind {
    ($($t:ty),*) => {$(
        impl Kind for $t {
            fn from_program(p: &mut Program) -> Result<&mut Self, ProgramError> {
                p.try_into()
            }
            fn load_into_kernel(&mut self) -> Result<(), ProgramError> {
                self.load()
            }
            fn is_loaded(&self) -> bool {
                self.fd().is_ok()
            }
        }
    )*};
}
kind!(SchedClassifier, CgroupSockAddr);

/// Program `name` of `ebpf`, loaded into the kernel (once).
pub fn program<'a, T: Kind>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, Error> {
    let prog = T::from_program(
        ebpf.program_mut(name)
            .ok_or_else(|| Error::Missing(format!("program {name}")))?,
    )?;
    if !prog.is_loaded() {
        prog.load_into_kernel()?;
    }
    Ok(prog)
}

/// Pins `link` at `pin`, in place of whatever was pinned there (whose link,
/// unpinned, goes when its last holder closes it).
pub fn pin_link<L>(link: L, pin: &Path) -> Result<(), Error>
where
    L: TryInto<FdLink>,
    L::Error: std::fmt::Display,
{
    let what = pin.display();
    let fd: FdLink = link
        .try_into()
        .map_err(|e| Error::Io(std::io::Error::other(format!("link for {what}: {e}"))))?;
    match std::fs::remove_file(pin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    fd.pin(pin)
        .map_err(|e| Error::Io(std::io::Error::other(format!("pinning {what}: {e}"))))?;
    Ok(())
}
