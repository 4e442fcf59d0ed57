//! Loading the eBPF object, pinning its maps and program links under the
//! bpffs directory, and handing over from a previous agent without a gap.
//!
//! Layout under `--bpffs DIR`:
//! - `DIR/maps/GP_*`: the maps, reused as they are by the next agent, so
//!   every translation and affinity survives a restart;
//! - `DIR/links/gp_*`: one link per socket hook, attached at `--cgroup`;
//! - `DIR/links/tc_in_<dev>`, `tc_out_<dev>`, `xdp_<dev>`: the device
//!   programs (tcx and XDP links).
//!
//! A pinned link stays attached when the agent exits; removing the pin
//! detaches it (that is all `gangplank uninstall` has to do).

use std::fs::{self, File};
use std::mem::size_of;
use std::path::{Path, PathBuf};

use std::os::fd::{AsFd, BorrowedFd};

use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifier, TcAttachOptions, TcAttachType};
use aya::programs::xdp::{Xdp, XdpLink, XdpMode};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use gangplank_common::{Config, LB_MODE_DSR, LB_MODE_HYBRID, LB_MODE_SNAT};
use tracing::{debug, info, warn};

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

/// The device programs, by function name in `ebpf/src/{tc,xdp}.rs`.
pub const TC_INGRESS: &str = "gp_tc_ingress";
pub const TC_EGRESS: &str = "gp_tc_egress";
pub const XDP: &str = "gp_xdp";
/// An XDP program that only passes packets: the benchmark's baseline.
pub const XDP_PASS: &str = "gp_xdp_pass";

/// `--lb-mode`: how flows to endpoints on other nodes are forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LbMode {
    /// Source NAT to this node: replies come back through it.
    Snat,
    /// Direct server return: the client address is kept and the backend's
    /// node answers the client directly.
    Dsr,
    /// DSR for TCP, SNAT for UDP (no per-datagram IP option).
    Hybrid,
}

impl LbMode {
    fn datapath_value(self) -> u8 {
        match self {
            LbMode::Snat => LB_MODE_SNAT,
            LbMode::Dsr => LB_MODE_DSR,
            LbMode::Hybrid => LB_MODE_HYBRID,
        }
    }
}

/// `--xdp`: whether to run the XDP fast path on the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpSetting {
    /// In native (driver) mode where the driver supports it, except on
    /// veth devices; tc alone elsewhere. Generic XDP would be no faster
    /// than tc, so it is not used. On a veth, native XDP makes the kernel
    /// hand it every TCP segment of a GSO packet one by one (measured: one
    /// NodePort stream at 1.4 Gbit/s with XDP, 11.7 Gbit/s with tc alone),
    /// which costs more than the fast path saves.
    Auto,
    /// In native mode wherever the driver supports it, veth included.
    Native,
    /// tc only.
    Off,
}

/// How one device ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAttachment {
    pub name: String,
    pub ifindex: u32,
    /// Whether the XDP fast path runs on it.
    pub xdp: bool,
}

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
        let (mut datapath, maps) = Self::load_socket_only(bpffs)?;
        datapath.load_device_programs()?;
        Ok((datapath, maps))
    }

    /// Like [`load`](Self::load), but the tc and XDP programs are left for
    /// [`load_device_programs`](Self::load_device_programs): the agent
    /// verifies them on another thread while it reads the manifests (the
    /// verifier spends tens of milliseconds on them).
    pub fn load_socket_only(bpffs: &Path) -> Result<(Self, BpfMaps)> {
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

    /// Load (verify) the tc and XDP programs.
    pub fn load_device_programs(&mut self) -> Result<()> {
        for name in [TC_INGRESS, TC_EGRESS] {
            program::<SchedClassifier>(&mut self.ebpf, name)?
                .load()
                .map_err(boxed)
                .map_err(load_err(format!("loading {name}")))?;
        }
        for name in [XDP, XDP_PASS] {
            program::<Xdp>(&mut self.ebpf, name)?
                .load()
                .map_err(boxed)
                .map_err(load_err(format!("loading {name}")))?;
        }
        Ok(())
    }

    /// A loaded program's fd (tests and benchmarks run it with
    /// BPF_PROG_TEST_RUN).
    pub fn program_fd(&self, name: &str) -> Option<BorrowedFd<'_>> {
        let program = self.ebpf.program(name)?;
        let fd = match program {
            aya::programs::Program::CgroupSockAddr(p) => p.fd().ok()?,
            aya::programs::Program::SchedClassifier(p) => p.fd().ok()?,
            aya::programs::Program::Xdp(p) => p.fd().ok()?,
            _ => return None,
        };
        Some(fd.as_fd())
    }

    /// Take a map out of the object (for the users of the maps other than
    /// the service writer: node addresses, conntrack GC, ...).
    pub fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.ebpf.take_map(name)
    }

    /// Tell the datapath how to forward to remote endpoints.
    pub fn set_lb_mode(&mut self, mode: LbMode) -> Result<()> {
        let map = self.ebpf.map_mut(CONFIG).ok_or(Error::MissingMap(CONFIG))?;
        let mut config: aya::maps::Array<_, Config> =
            aya::maps::Array::try_from(map).map_err(|source| Error::Map {
                map: CONFIG,
                op: "open",
                source,
            })?;
        let value = Config {
            lb_mode: mode.datapath_value(),
            _pad: [0; 7],
        };
        config.set(0, value, 0).map_err(|source| Error::Map {
            map: CONFIG,
            op: "update",
            source,
        })
    }

    /// Attach the tc programs to `devices`, replacing the links of a
    /// previous agent without a gap; links on devices no longer in
    /// `devices` (tc and XDP) are detached. XDP is [`attach_xdp`]'s job: the
    /// agent attaches tc first (the whole datapath) and XDP, which takes a
    /// driver reconfiguration, once it has reported ready.
    ///
    /// [`attach_xdp`]: Self::attach_xdp
    pub fn attach_devices(&mut self, devices: &[(String, u32)]) -> Result<()> {
        for (name, ifindex) in devices {
            let pin_name = pin_safe(name);
            for (program, attach_type, prefix) in [
                (TC_INGRESS, TcAttachType::Ingress, "tc_in_"),
                (TC_EGRESS, TcAttachType::Egress, "tc_out_"),
            ] {
                let link_name = format!("{prefix}{pin_name}");
                let link = attach_tc(&mut self.ebpf, program, *ifindex, attach_type)
                    .map_err(load_err(format!("attaching {program} to {name}")))?;
                swap_pins(link, &self.dirs.links, &link_name)?;
            }
        }
        // Links of devices no longer configured.
        let wanted: Vec<String> = devices.iter().map(|(n, _)| pin_safe(n)).collect();
        for entry in fs::read_dir(&self.dirs.links)
            .into_iter()
            .flatten()
            .flatten()
        {
            let file = entry.file_name().to_string_lossy().into_owned();
            let device = ["tc_in_", "tc_out_", "xdp_"]
                .iter()
                .find_map(|p| file.strip_prefix(p));
            if let Some(device) = device {
                let device = device.split("_new").next().unwrap_or(device);
                if !wanted.iter().any(|w| w == device) {
                    remove_link_pins(&self.dirs.links, &file)?;
                    info!(link = %file, "detached from a device no longer configured");
                }
            }
        }
        Ok(())
    }

    /// The XDP fast path on `devices` (`--xdp`): attached (or its program
    /// swapped in a previous agent's link) where the driver has native XDP,
    /// removed with `off`.
    pub fn attach_xdp(
        &mut self,
        devices: &[(String, u32)],
        xdp: XdpSetting,
    ) -> Result<Vec<DeviceAttachment>> {
        let mut attached = Vec::new();
        for (name, ifindex) in devices {
            let pin_name = pin_safe(name);
            let with_xdp = match xdp {
                XdpSetting::Off => {
                    remove_link_pins(&self.dirs.links, &format!("xdp_{pin_name}"))?;
                    false
                }
                XdpSetting::Auto | XdpSetting::Native => {
                    match attach_xdp(&mut self.ebpf, *ifindex, &self.dirs.links, &pin_name) {
                        Ok(()) => true,
                        Err(e) => {
                            // Not an error: tc does everything XDP does.
                            info!(device = %name, error = %e, "XDP fast path not available, tc only");
                            false
                        }
                    }
                }
            };
            attached.push(DeviceAttachment {
                name: name.clone(),
                ifindex: *ifindex,
                xdp: with_xdp,
            });
        }
        Ok(attached)
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

/// Map names of the device datapath.
pub const CT: &str = "GP_CT";
pub const NODE_ADDRS: &str = "GP_NODE_ADDRS";
pub const DEVICES: &str = "GP_DEVICES";
pub const CONFIG: &str = "GP_CONFIG";
pub const MAGLEV: &str = "GP_MAGLEV";

/// bpffs refuses names with a dot (EPERM): `eth0.100` becomes `eth0_100`.
fn pin_safe(device: &str) -> String {
    device.replace('.', "_")
}

/// Attach a tc program with a tcx link (Linux 6.6+), first in the device's
/// chain. Packets it does not translate go on (TCX_NEXT) to the programs of
/// others after it; translated ones end the chain there (delivered or
/// redirected), as with Cilium, so a later program never sees a half
/// translated flow.
fn attach_tc(
    ebpf: &mut Ebpf,
    name: &str,
    ifindex: u32,
    attach_type: TcAttachType,
) -> std::result::Result<FdLink, Box<dyn std::error::Error + Send + Sync>> {
    let program = program::<SchedClassifier>(ebpf, name).map_err(boxed)?;
    let ifname = ifname(ifindex)?;
    let id = program.attach_with_options(
        &ifname,
        attach_type,
        TcAttachOptions::TcxOrder(LinkOrder::first()),
    )?;
    let link = program.take_link(id)?;
    Ok(link.try_into()?)
}

fn ifname(ifindex: u32) -> std::result::Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let ret = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if ret.is_null() {
        return Err(format!("no interface with index {ifindex}").into());
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// XDP allows one program per device: a previous agent's pinned link gets
/// its program replaced atomically (bpf_link_update); else a new link in
/// native mode.
fn attach_xdp(
    ebpf: &mut Ebpf,
    ifindex: u32,
    links_dir: &Path,
    pin_name: &str,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let pin = links_dir.join(format!("xdp_{pin_name}"));
    let program = program::<Xdp>(ebpf, XDP).map_err(boxed)?;
    if let Ok(pinned) = PinnedLink::from_pin(&pin) {
        let link = XdpLink::try_from(FdLink::from(pinned))?;
        program.attach_to_link(link)?;
        return Ok(());
    }
    let id = program.attach_to_if_index(ifindex, XdpMode::Driver)?;
    let link: FdLink = program.take_link(id)?.try_into()?;
    link.pin(&pin)?;
    Ok(())
}

/// Pin `link` as `links_dir/name`, unpinning (so detaching) any previous
/// link of that name once ours is in place.
fn swap_pins(link: FdLink, links_dir: &Path, name: &str) -> Result<()> {
    // Unique per agent process, so a staging pin left by an agent that died
    // mid-handover (possibly the only attached link) is never removed
    // before ours is in place. bpffs refuses names with a dot (EPERM).
    // The pid alone can repeat (containers restart as pid 1): add the time.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let staging = links_dir.join(format!("{name}_new{}_{nanos}", std::process::id()));
    let pinned = link
        .pin(&staging)
        .map_err(boxed)
        .map_err(load_err(format!("pinning link {}", staging.display())))?;
    // Ours is attached and pinned: now every older link of this program
    // (the previous agent's, or a staging pin of one that died) can go.
    for old in previous_pins(links_dir, name, &staging) {
        unpin_or_remove(&old)?;
    }
    let pin = links_dir.join(name);
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

fn remove_link_pins(links_dir: &Path, name: &str) -> Result<()> {
    for old in previous_pins(links_dir, name, Path::new("")) {
        unpin_or_remove(&old)?;
    }
    Ok(())
}

fn unpin_or_remove(path: &Path) -> Result<()> {
    match PinnedLink::from_pin(path) {
        // Unpinning drops the last reference: the link detaches.
        Ok(link) => {
            link.unpin()
                .map_err(boxed)
                .map_err(load_err(format!("unpinning old link {}", path.display())))?;
            debug!(pin = %path.display(), "replaced a previous link");
        }
        // Not a link (a stray file): remove it.
        Err(_) => {
            if let Err(e) = fs::remove_file(path) {
                warn!(path = %path.display(), error = %e, "cannot remove a stale pin");
            }
        }
    }
    Ok(())
}

/// (name, key size, value size, capacity) of a map as this build defines it.
type Layout = (&'static str, usize, usize, u32);

fn layout<K, V>(name: &'static str, max_entries: u32) -> Layout {
    (name, size_of::<K>(), size_of::<V>(), max_entries)
}

/// Every map we pin, as this build expects it.
fn expected_layouts() -> [Layout; 11] {
    use super::maps::*;
    use gangplank_common::*;
    [
        layout::<ServiceKey, ServiceValue>(SERVICES, SERVICES_MAP_SIZE),
        layout::<u32, Backend>(BACKENDS, BACKENDS_MAP_SIZE),
        layout::<u16, RevNat>(REV_NAT, REV_NAT_MAP_SIZE),
        layout::<SockRevNatKey, SockRevNat>(SOCK_REVNAT, SOCK_REV_NAT_MAP_SIZE),
        layout::<AffinityKey, Affinity>(AFFINITY, AFFINITY_MAP_SIZE),
        layout::<u16, ServiceName>(SVC_NAMES, SERVICE_NAMES_MAP_SIZE),
        layout::<CtKey, CtEntry>(super::loader::CT, CT_MAP_SIZE),
        layout::<u32, NodeAddr>(super::loader::NODE_ADDRS, NODE_ADDRS_MAP_SIZE),
        layout::<u32, Device>(super::loader::DEVICES, DEVICES_MAP_SIZE),
        layout::<u32, Config>(super::loader::CONFIG, 1),
        layout::<MaglevKey, MaglevChunk>(super::loader::MAGLEV, MAGLEV_MAP_SIZE),
    ]
}

fn check_layouts(ebpf: &Ebpf) -> std::result::Result<(), String> {
    for (name, key, value, max) in expected_layouts() {
        let data = match ebpf.map(name) {
            Some(
                aya::maps::Map::HashMap(d)
                | aya::maps::Map::LruHashMap(d)
                | aya::maps::Map::Array(d),
            ) => d,
            Some(_) => return Err(format!("map {name} is not of the expected type")),
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

/// Program `name` of the object, as the program type `T` it must be.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
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
    program::<CgroupSockAddr>(ebpf, name)?
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
    let program = program::<CgroupSockAddr>(ebpf, name)?;
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

    swap_pins(fd_link, links_dir, name)
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
    // Every pin in the links directory is one of ours (socket hooks, tc
    // and XDP links, staging pins of an interrupted handover).
    let mut links: Vec<PathBuf> = fs::read_dir(&dirs.links)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    links.sort();
    for path in links {
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
    let mut maps: Vec<PathBuf> = fs::read_dir(&dirs.maps)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("GP_"))
        })
        .collect();
    maps.sort();
    for path in maps {
        fs::remove_file(&path)
            .map_err(boxed)
            .map_err(load_err(format!("removing {}", path.display())))?;
        removed.maps.push(path);
    }
    for dir in [&dirs.links, &dirs.maps, &bpffs.to_path_buf()] {
        // Only empty directories go: anything else in there is not ours.
        let _ = fs::remove_dir(dir);
    }
    Ok(removed)
}
