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
use std::mem::size_of;
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
    ebpf: Ebpf,
    dirs: PinDirs,
}

impl Datapath {
    /// Load the programs and reuse (or create and pin) the maps; nothing is
    /// attached yet, so the caller can fill the maps first.
    ///
    /// Returns the datapath and the maps for the writer.
    pub fn load(bpffs: &Path) -> Result<(Self, BpfMaps)> {
        let dirs = PinDirs::new(bpffs);
        for dir in [&dirs.maps, &dirs.links] {
            fs::create_dir_all(dir)
                .map_err(boxed)
                .map_err(load_err(format!("creating {}", dir.display())))?;
        }
        let incompatible = format!(
            "if the maps pinned in {} come from an incompatible gangplank version, \
             run `gangplank uninstall --bpffs {}` first",
            dirs.maps.display(),
            bpffs.display()
        );
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dirs.maps)
            .load(OBJECT)
            .map_err(boxed)
            .map_err(load_err(format!(
                "loading the eBPF object ({incompatible})"
            )))?;
        // aya reuses a pinned map of the right name without comparing its
        // layout: do it here, before anything reads or writes one.
        check_layouts(&ebpf).map_err(|e| Error::Load {
            context: incompatible.clone(),
            source: e.into(),
        })?;
        for name in SOCKET_PROGRAMS {
            load_program(&mut ebpf, name)?;
        }
        let maps = BpfMaps::take(&mut ebpf)?;
        Ok((Self { ebpf, dirs }, maps))
    }

    /// Attach the socket hooks at `cgroup`, replacing the links of a
    /// previous agent.
    pub fn attach(&mut self, cgroup: &Path) -> Result<()> {
        let cgroup_file = File::open(cgroup)
            .map_err(boxed)
            .map_err(load_err(format!("opening cgroup {}", cgroup.display())))?;
        for name in SOCKET_PROGRAMS {
            attach_replacing(&mut self.ebpf, name, &cgroup_file, cgroup, &self.dirs.links)?;
        }
        info!(cgroup = %cgroup.display(), "socket load balancer attached");
        Ok(())
    }
}

/// (name, key size, value size, capacity) of a map as this build defines it.
type Layout = (&'static str, usize, usize, u32);

fn layout<K, V>(name: &'static str, max_entries: u32) -> Layout {
    (name, size_of::<K>(), size_of::<V>(), max_entries)
}

/// Every map we pin, as this build expects it.
fn expected_layouts() -> [Layout; 6] {
    use super::maps::*;
    use gangplank_common::*;
    [
        layout::<ServiceKey, ServiceValue>(SERVICES, SERVICES_MAP_SIZE),
        layout::<u32, Backend>(BACKENDS, BACKENDS_MAP_SIZE),
        layout::<u16, RevNat>(REV_NAT, REV_NAT_MAP_SIZE),
        layout::<SockRevNatKey, SockRevNat>(SOCK_REVNAT, SOCK_REV_NAT_MAP_SIZE),
        layout::<AffinityKey, Affinity>(AFFINITY, AFFINITY_MAP_SIZE),
        layout::<u16, ServiceName>(SVC_NAMES, SERVICE_NAMES_MAP_SIZE),
    ]
}

fn check_layouts(ebpf: &Ebpf) -> std::result::Result<(), String> {
    for (name, key, value, max) in expected_layouts() {
        let data = match ebpf.map(name) {
            Some(aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d)) => d,
            Some(_) => return Err(format!("map {name} is not a hash map")),
            None => return Err(format!("map {name} missing from the eBPF object")),
        };
        let info = data
            .info()
            .map_err(|e| format!("reading info of map {name}: {e}"))?;
        let found = (
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        if found != (key, value, max) {
            return Err(format!(
                "pinned map {name} has key/value size and capacity {found:?}, expected {:?}",
                (key, value, max)
            ));
        }
    }
    Ok(())
}

fn socket_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Load {
            context: format!("program {name}"),
            source: "missing from the eBPF object".into(),
        })?
        .try_into()
        .map_err(boxed)
        .map_err(load_err(format!("program {name}")))
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    socket_program(ebpf, name)?
        .load()
        .map_err(boxed)
        .map_err(load_err(format!(
            "loading {name} (needs Linux 5.18+ with CONFIG_CGROUP_BPF and BTF)"
        )))
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
    let program = socket_program(ebpf, name)?;
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
    // Unique per agent process, so a staging pin left by an agent that died
    // mid-handover (possibly the only attached link) is never removed
    // before ours is in place. bpffs refuses names with a dot (EPERM).
    // The pid alone can repeat (containers restart as pid 1): add the time.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let staging = links_dir.join(format!("{name}_new{}_{nanos}", std::process::id()));
    let pinned = fd_link
        .pin(&staging)
        .map_err(boxed)
        .map_err(load_err(format!("pinning link {}", staging.display())))?;
    // Ours is attached and pinned: now every older link of this program
    // (the previous agent's, or a staging pin of one that died) can go.
    for old in previous_pins(links_dir, name, &staging) {
        match PinnedLink::from_pin(&old) {
            // Unpinning drops the last reference: the old link detaches.
            Ok(link) => {
                link.unpin()
                    .map_err(boxed)
                    .map_err(load_err(format!("unpinning old link {}", old.display())))?;
                debug!(program = name, pin = %old.display(), "replaced a previous link");
            }
            // Not a link (a stray file): remove it so the rename works.
            Err(_) => {
                let _ = fs::remove_file(&old);
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

/// Pins in `dir` for program `name` other than `keep`: `name` itself and
/// staging pins `name_new<pid>`.
fn previous_pins(dir: &Path, name: &str, keep: &Path) -> Vec<PathBuf> {
    let staging_prefix = format!("{name}_new");
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p != keep)
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == name || n.starts_with(&staging_prefix))
        })
        .collect()
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
        for path in previous_pins(&dirs.links, name, Path::new("")) {
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
