//! Loading the agent's eBPF object and attaching its programs.

/// The map layouts shared with the eBPF programs.
pub use agent_ebpf_common as abi;

mod load;

/// The aya the agent is built with, for callers that reach the maps and
/// programs of a loaded object (tests driving programs with test runs).
pub use aya;
pub use load::{ensure_bpffs, load, pin_link, program, MapPins};

use std::borrow::Cow;
use std::path::Path;

use aya::maps::PerCpuArray;
use aya::programs::tc::{self, NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::Ebpf;

use crate::netns::{self, NetNs};
use abi::PacketCount;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time.
pub static EMBEDDED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf.o"));

/// Errors from loading or attaching eBPF programs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("the eBPF object has no {0}")]
    Missing(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Returns the object to load: `path` when given, else the embedded one.
pub fn object(path: Option<&Path>) -> Result<Cow<'static, [u8]>, Error> {
    match path {
        Some(p) => Ok(Cow::Owned(std::fs::read(p).map_err(|e| {
            std::io::Error::new(e.kind(), format!("eBPF object {}: {e}", p.display()))
        })?)),
        None => Ok(Cow::Borrowed(EMBEDDED_OBJECT)),
    }
}

/// How a TC program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// A TCX link (Linux 6.6 and later): no qdisc, detached when the link closes.
    Tcx,
    /// A cls_bpf filter under a clsact qdisc, the mode older kernels have.
    Clsact,
}

/// Direction of traffic a TC program sees on its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl From<Direction> for TcAttachType {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

/// The packet-counting classifier, attached to one interface.
pub struct PacketCounter {
    // Option so Drop can move it into the namespace it was attached in.
    ebpf: Option<Ebpf>,
    netns: Option<NetNs>,
    mode: AttachMode,
}

impl PacketCounter {
    /// Loads the counter from `object` and attaches it to `iface` inside
    /// `netns`. With `only` set it uses that mode; otherwise it tries TCX and
    /// falls back to clsact.
    pub fn attach(
        object: &[u8],
        netns: Option<NetNs>,
        iface: &str,
        direction: Direction,
        only: Option<AttachMode>,
    ) -> Result<Self, Error> {
        let (ebpf, mode) = netns::run_in(netns.as_ref(), || -> Result<_, Error> {
            let mut ebpf = load(object, MapPins::Private)?;
            let prog = program::<SchedClassifier>(&mut ebpf, abi::COUNT_PROGRAM)?;
            let mode = attach_tc(prog, iface, direction, only)?;
            Ok((ebpf, mode))
        })??;
        Ok(Self {
            ebpf: Some(ebpf),
            netns,
            mode,
        })
    }

    /// The mode the program was attached in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Packets and bytes seen so far, summed over all CPUs.
    pub fn total(&self) -> Result<PacketCount, Error> {
        let ebpf = self.ebpf.as_ref().expect("present until drop");
        let map = ebpf
            .map(abi::PACKET_COUNT_MAP)
            .ok_or_else(|| Error::Missing(format!("map {}", abi::PACKET_COUNT_MAP)))?;
        let counts = PerCpuArray::<_, PacketCount>::try_from(map)?;
        let per_cpu = counts.get(&0, 0)?;
        Ok(per_cpu
            .iter()
            .fold(PacketCount::default(), |acc, c| PacketCount {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            }))
    }
}

impl Drop for PacketCounter {
    fn drop(&mut self) {
        // A clsact filter is detached over netlink by interface index, which
        // only means something inside the namespace it was attached in.
        if let Some(ebpf) = self.ebpf.take() {
            let _ = netns::run_in(self.netns.as_ref(), move || drop(ebpf));
        }
    }
}

/// Attaches a loaded classifier: TCX first, then a clsact qdisc filter.
pub fn attach_tc(
    prog: &mut SchedClassifier,
    iface: &str,
    direction: Direction,
    only: Option<AttachMode>,
) -> Result<AttachMode, Error> {
    let tcx_err = if only != Some(AttachMode::Clsact) {
        match prog.attach_with_options(
            iface,
            direction.into(),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        ) {
            Ok(_) => return Ok(AttachMode::Tcx),
            Err(e) if only == Some(AttachMode::Tcx) => return Err(e.into()),
            Err(e) => Some(e),
        }
    } else {
        None
    };
    if let Some(e) = tcx_err {
        tracing::info!(%iface, error = %e, "TCX attach failed, falling back to clsact");
    }
    // An existing clsact qdisc is fine: other programs may share it.
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        let exists = matches!(&e, tc::TcError::NetlinkError(ne)
            if ne.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(Error::Program(e.into()));
        }
    }
    prog.attach_with_options(
        iface,
        direction.into(),
        TcAttachOptions::Netlink(NlOptions::default()),
    )?;
    Ok(AttachMode::Clsact)
}

/// Loads every program of `object` into the kernel and describes the
/// programs and maps, one per line; everything is unloaded on return.
pub fn check(object: &[u8]) -> Result<String, Error> {
    let mut ebpf = load(object, MapPins::Private)?;
    let mut out = String::new();
    let names: Vec<(String, aya::programs::ProgramType)> = ebpf
        .programs()
        .map(|(n, p)| (n.to_string(), p.prog_type()))
        .collect();
    for (name, kind) in names {
        match kind {
            aya::programs::ProgramType::SchedClassifier => {
                program::<SchedClassifier>(&mut ebpf, &name)?;
            }
            aya::programs::ProgramType::CgroupSockAddr => {
                program::<aya::programs::CgroupSockAddr>(&mut ebpf, &name)?;
            }
            _ => {}
        }
        out.push_str(&format!("program {name} ({kind:?}): loaded\n"));
    }
    for (name, _) in ebpf.maps() {
        out.push_str(&format!("map {name}\n"));
    }
    Ok(out)
}
