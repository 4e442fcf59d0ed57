//! `gangplank status`: what is pinned under the bpffs directory, read from
//! the kernel (not from the agent), so it tells the truth even when the
//! agent is down: every map's fill level, the pinned program links, the
//! node addresses and devices the tc/XDP programs serve.

use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, MapType};
use aya::programs::links::PinnedLink;
use gangplank_common::{Config, Device, NodeAddr, LB_MODE_DSR, LB_MODE_HYBRID, LB_MODE_SNAT};
use serde::Serialize;
use tracing::warn;

use crate::dataplane::loader::PinDirs;

/// Maps read for the node sections (names of the statics in the eBPF crate).
const NODE_ADDRS: &str = "GP_NODE_ADDRS";
const DEVICES: &str = "GP_DEVICES";
const CONFIG: &str = "GP_CONFIG";

/// Status errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing pinned where we looked.
    #[error("no gangplank datapath pinned at {}; is the agent running with --bpffs {}?", .maps.display(), .bpffs.display())]
    NotPinned { bpffs: PathBuf, maps: PathBuf },
    /// A pin directory could not be listed.
    #[error("listing {}: {source}", .dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Opening pinned objects needs privileges.
    #[error("opening {}: permission denied; run as root (CAP_BPF and CAP_SYS_ADMIN)", .path.display())]
    Permission { path: PathBuf },
    /// A map could not be read.
    #[error("reading map {}: {source}", .path.display())]
    Map {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    /// Walking a map's keys failed.
    #[error("counting the entries of map {}: {source}", .path.display())]
    Count {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How full one pinned map is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapFill {
    /// Pin name (`GP_SERVICES`, ...).
    pub name: String,
    /// bpftool's name for the map type (`hash`, `lru_hash`, `array`, ...).
    pub map_type: String,
    /// Entries present; arrays always hold `max_entries`. For a map the
    /// datapath changes during the count (conntrack) this is approximate.
    pub entries: u64,
    pub max_entries: u32,
    /// An LRU map evicts its least recently used entry when full: full is
    /// its normal state under load, not an error.
    pub lru: bool,
}

impl MapFill {
    /// Fill level in percent.
    pub fn percent(&self) -> f64 {
        if self.max_entries == 0 {
            return 0.0;
        }
        self.entries as f64 * 100.0 / f64::from(self.max_entries)
    }
}

/// How to count a map's entries.
enum Kind {
    /// Walk the keys.
    Hash,
    /// Every index exists.
    Array,
    /// Entries are not a meaningful notion (ring buffers, ...): 0.
    Other,
}

fn classify(map_type: &Result<MapType, MapError>) -> (String, Kind, bool) {
    use MapType as T;
    let Ok(t) = map_type else {
        return ("unknown".into(), Kind::Other, false);
    };
    let (name, kind, lru) = match t {
        T::Hash => ("hash", Kind::Hash, false),
        T::LruHash => ("lru_hash", Kind::Hash, true),
        T::PerCpuHash => ("percpu_hash", Kind::Hash, false),
        T::LruPerCpuHash => ("lru_percpu_hash", Kind::Hash, true),
        T::HashOfMaps => ("hash_of_maps", Kind::Hash, false),
        T::LpmTrie => ("lpm_trie", Kind::Hash, false),
        T::DevMapHash => ("devmap_hash", Kind::Hash, false),
        T::SockHash => ("sockhash", Kind::Hash, false),
        T::Array => ("array", Kind::Array, false),
        T::PerCpuArray => ("percpu_array", Kind::Array, false),
        T::ArrayOfMaps => ("array_of_maps", Kind::Array, false),
        T::ProgramArray => ("prog_array", Kind::Array, false),
        other => return (format!("{other:?}").to_lowercase(), Kind::Other, false),
    };
    (name.into(), kind, lru)
}

fn maps_dir(bpffs: &Path) -> Result<PathBuf> {
    let maps = PinDirs::new(bpffs).maps;
    if !maps.is_dir() {
        return Err(Error::NotPinned {
            bpffs: bpffs.to_path_buf(),
            maps,
        });
    }
    Ok(maps)
}

/// Pinned objects directly under `dir`, sorted by name.
fn pins(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let read_err = |source| Error::ReadDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if entry.file_type().map_err(read_err)?.is_dir() {
            continue;
        }
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    out.sort();
    Ok(out)
}

fn is_permission(e: &MapError) -> bool {
    match e {
        MapError::SyscallError(s) => matches!(
            s.io_error.raw_os_error(),
            Some(libc::EPERM) | Some(libc::EACCES)
        ),
        _ => false,
    }
}

/// Open a pinned map; `None` (with a warning) if the pin is not a map.
fn open_map(path: &Path) -> Result<Option<MapData>> {
    match MapData::from_pin(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if is_permission(&e) => Err(Error::Permission {
            path: path.to_path_buf(),
        }),
        Err(error) => {
            warn!(path = %path.display(), %error, "skipping a pin that is not a readable map");
            Ok(None)
        }
    }
}

/// Fill level of every map pinned under `<bpffs>/maps`, sorted by name.
pub fn map_fill(bpffs: &Path) -> Result<Vec<MapFill>> {
    let dir = maps_dir(bpffs)?;
    let mut out = Vec::new();
    for (name, path) in pins(&dir)? {
        let Some(data) = open_map(&path)? else {
            continue;
        };
        let info = data.info().map_err(|source| Error::Map {
            path: path.clone(),
            source,
        })?;
        let (map_type, kind, lru) = classify(&info.map_type());
        let max_entries = info.max_entries();
        let entries =
            match kind {
                Kind::Hash => count_keys(data.fd().as_fd(), info.key_size(), max_entries).map_err(
                    |source| Error::Count {
                        path: path.clone(),
                        source,
                    },
                )?,
                Kind::Array => u64::from(max_entries),
                Kind::Other => 0,
            };
        out.push(MapFill {
            name,
            map_type,
            entries,
            max_entries,
            lru,
        });
    }
    Ok(out)
}

const BPF_MAP_GET_NEXT_KEY: i64 = 4;

/// Number of keys in a hash-like map, walked with BPF_MAP_GET_NEXT_KEY
/// (aya's key iterator needs the key type at compile time; this works for
/// any map). A walk whose current key is deleted restarts from the first
/// bucket, so under churn the count may overshoot: it is capped at
/// `max_entries`, which a hash map can never exceed.
fn count_keys(fd: BorrowedFd<'_>, key_size: u32, max_entries: u32) -> io::Result<u64> {
    let size = key_size as usize;
    let (mut key, mut next) = (vec![0u8; size], vec![0u8; size]);
    let mut count = 0u64;
    let mut first = true;
    while count < u64::from(max_entries) {
        // union bpf_attr for BPF_MAP_*_ELEM (include/uapi/linux/bpf.h):
        // map_fd u32 (+4 bytes padding), key u64, next_key u64, flags u64.
        let mut attr = [0u64; 4];
        attr[0] = fd.as_raw_fd() as u32 as u64;
        // A NULL key asks for the first key.
        attr[1] = if first { 0 } else { key.as_ptr() as u64 };
        attr[2] = next.as_mut_ptr() as u64;
        // SAFETY: attr is a valid bpf_attr prefix; the kernel reads
        // key_size bytes at attr[1] and writes key_size bytes at attr[2],
        // both live buffers of exactly that size, for the whole call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                break; // past the last key
            }
            return Err(e);
        }
        count += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    Ok(count)
}

/// One pinned link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkView {
    pub name: String,
    /// Link type (`cgroup`, `tcx`, `xdp`, ...), if the kernel says.
    pub link_type: Option<String>,
    /// Name of the attached program, if it can be read.
    pub program: Option<String>,
}

/// An address NodePort frontends answer on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeAddrView {
    pub address: Ipv4Addr,
    pub ifindex: u32,
    /// Interface name as seen from this process's network namespace.
    pub interface: Option<String>,
}

/// A device the tc/XDP programs run on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    pub ifindex: u32,
    pub interface: Option<String>,
    /// SNAT source address for flows leaving through it (None: unset).
    pub snat_address: Option<Ipv4Addr>,
}

/// One map's row: its fill plus the percentage, as shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MapRow {
    #[serde(flatten)]
    pub fill: MapFill,
    pub percent: f64,
}

/// Everything `gangplank status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub bpffs: PathBuf,
    pub maps: Vec<MapRow>,
    pub links: Vec<LinkView>,
    /// None when the map is not pinned (a datapath without tc/XDP).
    pub node_addresses: Option<Vec<NodeAddrView>>,
    pub devices: Option<Vec<DeviceView>>,
    /// `snat`, `dsr` or `hybrid`, from GP_CONFIG.
    pub lb_mode: Option<String>,
}

/// Read the status of the datapath pinned under `bpffs`.
pub fn status(bpffs: &Path) -> Result<Status> {
    let dirs = PinDirs::new(bpffs);
    let maps = map_fill(bpffs)?
        .into_iter()
        .map(|fill| MapRow {
            percent: fill.percent(),
            fill,
        })
        .collect();
    let links = if dirs.links.is_dir() {
        // aya 0.14 has no ProgramInfo::from_id: name programs from one walk
        // of the kernel's program table.
        let programs: std::collections::HashMap<u32, String> = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .filter_map(|p| Some((p.id(), p.name_as_str()?.to_string())))
            .collect();
        pins(&dirs.links)?
            .into_iter()
            .map(|(name, path)| link_view(name, &path, &programs))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Status {
        bpffs: bpffs.to_path_buf(),
        maps,
        links,
        node_addresses: node_addresses(&dirs.maps.join(NODE_ADDRS))?,
        devices: devices(&dirs.maps.join(DEVICES))?,
        lb_mode: lb_mode(&dirs.maps.join(CONFIG))?,
    })
}

/// `gangplank status [-o json]`: the text to print.
pub fn run(bpffs: &Path, json: bool) -> anyhow::Result<String> {
    let status = status(bpffs)?;
    if json {
        let mut s = serde_json::to_string_pretty(&status)?;
        s.push('\n');
        Ok(s)
    } else {
        Ok(status.table())
    }
}

fn link_view(
    name: String,
    path: &Path,
    programs: &std::collections::HashMap<u32, String>,
) -> LinkView {
    // Best effort: a link we cannot inspect is still listed by name.
    let info = PinnedLink::from_pin(path)
        .ok()
        .and_then(|link| aya::programs::links::FdLink::from(link).info().ok());
    let link_type = info
        .as_ref()
        .and_then(|i| i.link_type().ok())
        .map(|t| format!("{t:?}").to_lowercase());
    let program = info.and_then(|i| programs.get(&i.program_id()).cloned());
    LinkView {
        name,
        link_type,
        program,
    }
}

/// Open a pinned map if it exists; errors name the path.
fn open_optional(path: &Path) -> Result<Option<Map>> {
    if !path.exists() {
        return Ok(None);
    }
    let Some(data) = open_map(path)? else {
        return Ok(None);
    };
    Map::from_map_data(data)
        .map(Some)
        .map_err(|source| Error::Map {
            path: path.to_path_buf(),
            source,
        })
}

fn map_err(path: &Path) -> impl Fn(MapError) -> Error + '_ {
    move |source| Error::Map {
        path: path.to_path_buf(),
        source,
    }
}

fn node_addresses(path: &Path) -> Result<Option<Vec<NodeAddrView>>> {
    let Some(map) = open_optional(path)? else {
        return Ok(None);
    };
    let map: BpfHashMap<_, u32, NodeAddr> = BpfHashMap::try_from(map).map_err(map_err(path))?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (address, value) = item.map_err(map_err(path))?;
        out.push(NodeAddrView {
            address: Ipv4Addr::from(u32::from_be(address)),
            ifindex: value.ifindex,
            interface: interface_name(value.ifindex),
        });
    }
    out.sort_by_key(|a| a.address);
    Ok(Some(out))
}

fn devices(path: &Path) -> Result<Option<Vec<DeviceView>>> {
    let Some(map) = open_optional(path)? else {
        return Ok(None);
    };
    let map: BpfHashMap<_, u32, Device> = BpfHashMap::try_from(map).map_err(map_err(path))?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (ifindex, value) = item.map_err(map_err(path))?;
        out.push(DeviceView {
            ifindex,
            interface: interface_name(ifindex),
            snat_address: (value.address != 0).then(|| Ipv4Addr::from(u32::from_be(value.address))),
        });
    }
    out.sort_by_key(|d| d.ifindex);
    Ok(Some(out))
}

fn lb_mode(path: &Path) -> Result<Option<String>> {
    let Some(map) = open_optional(path)? else {
        return Ok(None);
    };
    let map: Array<_, Config> = Array::try_from(map).map_err(map_err(path))?;
    let config = map.get(&0, 0).map_err(map_err(path))?;
    Ok(Some(match config.lb_mode {
        LB_MODE_SNAT => "snat".into(),
        LB_MODE_DSR => "dsr".into(),
        LB_MODE_HYBRID => "hybrid".into(),
        other => format!("unknown ({other})"),
    }))
}

fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Thousands separators, for counts up to hundreds of thousands.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn iface(ifindex: u32, name: &Option<String>) -> String {
    match name {
        Some(n) => format!("{n} (ifindex {ifindex})"),
        None => format!("ifindex {ifindex}"),
    }
}

impl Status {
    /// The human-readable form.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Datapath pinned at {}", self.bpffs.display());
        if let Some(mode) = &self.lb_mode {
            let _ = writeln!(s, "Load-balancing mode: {mode}");
        }
        let _ = writeln!(s);
        let width = self
            .maps
            .iter()
            .map(|m| m.fill.name.len())
            .max()
            .unwrap_or(0)
            .max(3);
        let _ = writeln!(
            s,
            "{:<width$}  {:<15}  {:>9}  {:>9}  {:>6}",
            "MAP", "TYPE", "ENTRIES", "MAX", "FILL"
        );
        for m in &self.maps {
            // Arrays always hold max_entries elements: never "full".
            let is_array = m.fill.map_type.contains("array");
            let note = if m.fill.lru {
                "  (LRU: full is normal)"
            } else if m.percent >= 90.0 && !is_array {
                "  (nearly full)"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "{:<width$}  {:<15}  {:>9}  {:>9}  {:>5.1}%{note}",
                m.fill.name,
                m.fill.map_type,
                grouped(m.fill.entries),
                grouped(u64::from(m.fill.max_entries)),
                m.percent
            );
        }

        let _ = writeln!(s, "\nLinks:");
        if self.links.is_empty() {
            let _ = writeln!(
                s,
                "  none pinned (the agent attaches only after its first sync)"
            );
        }
        for l in &self.links {
            let _ = write!(s, "  {}", l.name);
            if let Some(t) = &l.link_type {
                let _ = write!(s, "  {t}");
            }
            if let Some(p) = &l.program {
                let _ = write!(s, "  program {p}");
            }
            let _ = writeln!(s);
        }

        if let Some(addrs) = &self.node_addresses {
            let _ = writeln!(s, "\nNode addresses (NodePort):");
            if addrs.is_empty() {
                let _ = writeln!(s, "  none");
            }
            for a in addrs {
                let _ = writeln!(s, "  {:<15}  {}", a.address, iface(a.ifindex, &a.interface));
            }
        }
        if let Some(devs) = &self.devices {
            let _ = writeln!(s, "\nDevices:");
            if devs.is_empty() {
                let _ = writeln!(s, "  none");
            }
            for d in devs {
                let snat = d
                    .snat_address
                    .map_or_else(|| "none".to_string(), |a| a.to_string());
                let _ = writeln!(
                    s,
                    "  {:<24}  SNAT address {snat}",
                    iface(d.ifindex, &d.interface)
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, map_type: &str, entries: u64, max: u32, lru: bool) -> MapRow {
        let fill = MapFill {
            name: name.into(),
            map_type: map_type.into(),
            entries,
            max_entries: max,
            lru,
        };
        MapRow {
            percent: fill.percent(),
            fill,
        }
    }

    fn sample() -> Status {
        Status {
            bpffs: "/sys/fs/bpf/gangplank".into(),
            maps: vec![
                row("GP_CONFIG", "array", 1, 1, false),
                row("GP_CT", "lru_hash", 262_144, 262_144, true),
                row("GP_SERVICES", "hash", 1_234, 262_144, false),
                row("GP_REV_NAT", "hash", 60_000, 65_536, false),
            ],
            links: vec![LinkView {
                name: "gp_connect4".into(),
                link_type: Some("cgroup".into()),
                program: Some("gp_connect4".into()),
            }],
            node_addresses: Some(vec![NodeAddrView {
                address: Ipv4Addr::new(198, 18, 0, 10),
                ifindex: 2,
                interface: Some("eth0".into()),
            }]),
            devices: Some(vec![DeviceView {
                ifindex: 2,
                interface: None,
                snat_address: Some(Ipv4Addr::new(198, 18, 0, 10)),
            }]),
            lb_mode: Some("snat".into()),
        }
    }

    #[test]
    fn table_shows_fill_links_and_node() {
        let t = sample().table();
        for want in [
            "Datapath pinned at /sys/fs/bpf/gangplank",
            "Load-balancing mode: snat",
            "GP_CT        lru_hash           262,144    262,144  100.0%  (LRU: full is normal)",
            "GP_SERVICES  hash                 1,234    262,144    0.5%",
            "GP_REV_NAT   hash                60,000     65,536   91.6%  (nearly full)",
            "  gp_connect4  cgroup  program gp_connect4",
            "  198.18.0.10      eth0 (ifindex 2)",
            "  ifindex 2                 SNAT address 198.18.0.10",
        ] {
            assert!(t.contains(want), "expected {want:?} in:\n{t}");
        }
    }

    #[test]
    fn json_has_the_same_content() {
        let v = serde_json::to_value(sample()).expect("serializing the status");
        assert_eq!(v["maps"][1]["name"], "GP_CT");
        assert_eq!(v["maps"][1]["lru"], true);
        assert_eq!(v["maps"][1]["entries"], 262_144);
        assert_eq!(v["maps"][1]["max_entries"], 262_144);
        assert_eq!(v["maps"][1]["percent"], 100.0);
        assert_eq!(v["links"][0]["name"], "gp_connect4");
        assert_eq!(v["node_addresses"][0]["address"], "198.18.0.10");
        assert_eq!(v["devices"][0]["snat_address"], "198.18.0.10");
        assert_eq!(v["lb_mode"], "snat");
    }

    #[test]
    fn missing_pin_dir_says_what_to_check() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = map_fill(dir.path()).expect_err("no maps dir");
        let msg = err.to_string();
        assert!(
            msg.contains("no gangplank datapath pinned at")
                && msg.contains(&dir.path().join("maps").display().to_string())
                && msg.contains(&format!("--bpffs {}", dir.path().display())),
            "{msg}"
        );
        let err = run(dir.path(), true).expect_err("no maps dir");
        assert!(
            format!("{err:#}").contains("no gangplank datapath"),
            "{err:#}"
        );
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(262_144), "262,144");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn map_types_are_classified() {
        let (name, kind, lru) = classify(&Ok(MapType::LruHash));
        assert_eq!((name.as_str(), lru), ("lru_hash", true));
        assert!(matches!(kind, Kind::Hash));
        let (name, kind, lru) = classify(&Ok(MapType::Array));
        assert_eq!((name.as_str(), lru), ("array", false));
        assert!(matches!(kind, Kind::Array));
        let (name, kind, _) = classify(&Ok(MapType::RingBuf));
        assert_eq!(name, "ringbuf");
        assert!(matches!(kind, Kind::Other));
    }
}
