//! Loading the eBPF object, pinning its maps and program links under the
//! bpffs directory, and handing over from a previous agent without a gap.
//!
//! Layout under `--bpffs DIR`:
//! - `DIR/maps/GP_*`: the maps, reused as they are by the next agent, so
//!   every translation and affinity survives a restart;
//! - `DIR/links/gp_*`: one link per socket hook, attached at `--cgroup`.
//!   A pinned link stays attached when the agent exits; removing the pin
//!   detaches it (that is all `gangplank uninstall` has to do).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, info};

use super::{maps::BpfMaps, Error, Result};

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gangplank"));

/// The socket-LB programs, by function name in `ebpf/src/sock_lb.rs`.
pub const SOCKET_PROGRAMS: [&str; 4] = [
    "gp_connect4",
    "gp_sendmsg4",
    "gp_recvmsg4",
    "gp_getpeername4",
];

fn load_err(
    context: impl Into<String>,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Error {
    let context = context.into();
    move |source| Error::Load { context, source }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Where the agent keeps its pins.
#[derive(Debug, Clone)]
pub struct PinDirs {
    pub maps: PathBuf,
    pub links: PathBuf,
}

impl PinDirs {
    pub fn new(bpffs: &Path) -> Self {
        Self {
            maps: bpffs.join("maps"),
            links: bpffs.join("links"),
        }
    }
}

/// The loaded datapath. Dropping it leaves programs attached and maps
/// pinned: that is the point (SIGTERM must not interrupt traffic).
pub struct Datapath {
    _ebpf: Ebpf,
}

impl Datapath {
    /// Load the programs, reuse or create the pinned maps, attach the socket
    /// hooks at `cgroup`, and replace the links of a previous agent.
    ///
    /// Returns the datapath and the maps for the writer.
    pub fn install(bpffs: &Path, cgroup: &Path) -> Result<(Self, BpfMaps)> {
        let dirs = PinDirs::new(bpffs);
        for dir in [&dirs.maps, &dirs.links] {
            fs::create_dir_all(dir)
                .map_err(boxed)
                .map_err(load_err(format!("creating {}", dir.display())))?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dirs.maps)
            .load(OBJECT)
            .map_err(boxed)
            .map_err(load_err(format!(
                "loading the eBPF object (maps pinned in {}; if they come from an incompatible \
                 gangplank version, run `gangplank uninstall --bpffs {}` first)",
                dirs.maps.display(),
                bpffs.display()
            )))?;

        let cgroup_file = File::open(cgroup)
            .map_err(boxed)
            .map_err(load_err(format!("opening cgroup {}", cgroup.display())))?;
        for name in SOCKET_PROGRAMS {
            attach_replacing(&mut ebpf, name, &cgroup_file, cgroup, &dirs.links)?;
        }
        info!(cgroup = %cgroup.display(), bpffs = %bpffs.display(), "socket load balancer attached");
        let maps = BpfMaps::take(&mut ebpf)?;
        Ok((Self { _ebpf: ebpf }, maps))
    }
}

/// Attach program `name` and swap it in for the pinned link of a previous
/// agent: the new link is attached (links stack, so both run for a moment;
/// they share the maps and agree) and pinned under a temporary name before
/// the old one is unpinned, so there is never a moment without translation.
fn attach_replacing(
    ebpf: &mut Ebpf,
    name: &str,
    cgroup_file: &File,
    cgroup: &Path,
    links_dir: &Path,
) -> Result<()> {
    let program: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Load {
            context: format!("program {name}"),
            source: "missing from the eBPF object".into(),
        })?
        .try_into()
        .map_err(boxed)
        .map_err(load_err(format!("program {name}")))?;
    program.load().map_err(boxed).map_err(load_err(format!(
        "loading {name} (needs Linux 5.18+ with CONFIG_CGROUP_BPF and BTF)"
    )))?;
    // bpf_link_create takes no attach flags for cgroups (EINVAL otherwise):
    // a cgroup link always behaves like BPF_F_ALLOW_MULTI, so other cgroup
    // programs (systemd, another CNI) keep working and the previous agent's
    // link can stay until ours is in place. "Single" is aya's name for
    // "no flags".
    let link_id = program
        .attach(cgroup_file, CgroupAttachMode::Single)
        .map_err(boxed)
        .map_err(load_err(format!(
            "attaching {name} to {}",
            cgroup.display()
        )))?;
    let link = program
        .take_link(link_id)
        .map_err(boxed)
        .map_err(load_err(format!("taking link of {name}")))?;
    let fd_link: FdLink = link.try_into().map_err(boxed).map_err(load_err(format!(
        "{name}: link is not fd-based (kernel older than 5.7?)"
    )))?;

    let pin = links_dir.join(name);
    // bpffs refuses names with a dot (EPERM): they are reserved.
    let staging = links_dir.join(format!("{name}_new"));
    let _ = fs::remove_file(&staging);
    let pinned = fd_link
        .pin(&staging)
        .map_err(boxed)
        .map_err(load_err(format!("pinning link {}", staging.display())))?;
    if pin.exists() {
        match PinnedLink::from_pin(&pin) {
            // Unpinning drops the last reference: the old link detaches.
            Ok(old) => {
                old.unpin()
                    .map_err(boxed)
                    .map_err(load_err(format!("unpinning old link {}", pin.display())))?;
                debug!(program = name, "replaced previous agent's link");
            }
            Err(_) => {
                // Not a link (a stray file): remove it so the rename works.
                let _ = fs::remove_file(&pin);
            }
        }
    }
    fs::rename(&staging, &pin)
        .map_err(boxed)
        .map_err(load_err(format!(
            "renaming {} to {}",
            staging.display(),
            pin.display()
        )))?;
    drop(pinned);
    Ok(())
}

/// What `uninstall` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<PathBuf>,
    pub maps: Vec<PathBuf>,
}

/// Detach every program (by removing its link pin) and remove every pinned
/// map, then the directories themselves.
pub fn uninstall(bpffs: &Path) -> Result<Removed> {
    let dirs = PinDirs::new(bpffs);
    let mut removed = Removed::default();
    for name in SOCKET_PROGRAMS {
        for path in [
            dirs.links.join(name),
            dirs.links.join(format!("{name}_new")),
        ] {
            if !path.exists() {
                continue;
            }
            match PinnedLink::from_pin(&path) {
                Ok(link) => {
                    link.unpin()
                        .map_err(boxed)
                        .map_err(load_err(format!("unpinning {}", path.display())))?;
                }
                Err(_) => fs::remove_file(&path)
                    .map_err(boxed)
                    .map_err(load_err(format!("removing {}", path.display())))?,
            }
            removed.links.push(path);
        }
    }
    for name in super::maps::ALL {
        let path = dirs.maps.join(name);
        if path.exists() {
            fs::remove_file(&path)
                .map_err(boxed)
                .map_err(load_err(format!("removing {}", path.display())))?;
            removed.maps.push(path);
        }
    }
    for dir in [&dirs.links, &dirs.maps, &bpffs.to_path_buf()] {
        // Only empty directories go: anything else in there is not ours.
        let _ = fs::remove_dir(dir);
    }
    Ok(removed)
}
