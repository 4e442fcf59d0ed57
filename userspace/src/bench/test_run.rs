//! BPF_PROG_TEST_RUN on crafted frames, and direct access to the agent's
//! pinned maps, so that the per-packet benchmark and the packet-level tests
//! can set up a frontend without running the agent, and the tests can
//! check that no map was corrupted.
//!
//! The map helpers speak only the map contract (`gangplank_common`), not the
//! agent's writer, so they do not change when the model does.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use gangplank_common::*;

// Reading the maps back is the same mechanism as the agent's writer uses.
use crate::dataplane::maps::collect;

/// The loader and the map contract, for users of this module (the tests
/// reach everything through it).
pub use crate::dataplane::Datapath;
pub use gangplank_common as contract;

/// `BPF_PROG_TEST_RUN` (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// tc verdicts (include/uapi/linux/pkt_cls.h), as the u32 `retval`.
/// `TC_ACT_UNSPEC` (-1): "not mine", the next tcx program or the stack
/// gets the packet as it is.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
/// XDP verdicts (`enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The `test` member of `union bpf_attr` (kernel 5.10+ layout, 80 bytes).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What one BPF_PROG_TEST_RUN returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// The program's return value (a `TC_ACT_*` or `XDP_*` verdict).
    pub retval: u32,
    /// The frame as the program left it.
    pub data: Vec<u8>,
    /// Average run time in ns over `repeat` runs (the kernel's measure).
    pub duration_ns: u32,
}

/// A context for tc programs: the fields of `struct __sk_buff` the kernel
/// accepts from userspace (net/bpf/test_run.c `convert___skb_to_skb`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SkbCtx {
    /// `skb->dev`: a device of the *calling thread's* network namespace
    /// (0 or 1: loopback).
    pub ifindex: u32,
    /// `skb->skb_iif`.
    pub ingress_ifindex: u32,
    pub mark: u32,
    pub priority: u32,
}

/// `sizeof(struct __sk_buff)` on 6.x kernels.
const SK_BUFF_SIZE: usize = 192;

impl SkbCtx {
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; SK_BUFF_SIZE];
        // Offsets of mark, priority, ingress_ifindex, ifindex in __sk_buff.
        for (off, v) in [
            (8, self.mark),
            (32, self.priority),
            (36, self.ingress_ifindex),
            (40, self.ifindex),
        ] {
            b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// A context for XDP programs (`struct xdp_md`): the receiving device of
/// the calling thread's namespace and its queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct XdpCtx {
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
}

impl XdpCtx {
    fn bytes(&self, data_len: usize) -> Vec<u8> {
        // data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; the kernel insists data_end == data size.
        let fields = [
            0u32,
            data_len as u32,
            0,
            self.ingress_ifindex,
            self.rx_queue_index,
            0,
        ];
        fields.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }
}

/// The context a run starts with.
#[derive(Debug, Clone, Copy, Default)]
pub enum Ctx {
    /// None: the kernel's defaults (loopback).
    #[default]
    None,
    Skb(SkbCtx),
    Xdp(XdpCtx),
}

/// Runs `prog` on `data` `repeat` times (0 counts as 1) and returns the
/// last run's verdict and frame and the average duration.
///
/// Frames shorter than an Ethernet header (14 bytes) are refused by the
/// kernel with EINVAL before the program runs (net/bpf/test_run.c
/// `bpf_test_init`); the error is returned as is.
pub fn run(prog: BorrowedFd<'_>, data: &[u8], ctx: Ctx, repeat: u32) -> io::Result<RunResult> {
    // Room for headers a program may push (DSR option, encapsulation).
    let mut out = vec![0u8; data.len() + 512];
    let ctx_bytes = match ctx {
        Ctx::None => None,
        Ctx::Skb(c) => Some(c.bytes()),
        Ctx::Xdp(c) => Some(c.bytes(data.len())),
    };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_size_out: out.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    if let Some(c) = &ctx_bytes {
        attr.ctx_size_in = c.len() as u32;
        attr.ctx_in = c.as_ptr() as u64;
    }
    // SAFETY: attr is a valid test-run attribute whose pointers (data, out,
    // ctx_bytes) are live for the call; the kernel writes at most
    // data_size_out bytes to out.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(RunResult {
        retval: attr.retval,
        data: out,
        duration_ns: attr.duration,
    })
}

pub use gangplank_sim::sys::{ifindex_in, in_netns};

/// The MAC address of interface `iface` in network namespace `netns`
/// (from `ip -j link show`).
pub fn mac_in(netns: &str, iface: &str) -> Result<[u8; 6]> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-n", netns, "link", "show", iface])
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip -n {netns} link show {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
    let text = v[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC address for {iface} in netns {netns}"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC address {text:?} of {iface} in netns {netns}");
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC address {text:?}"))?;
    }
    Ok(mac)
}

// ---------------------------------------------------------------------------
// pinned maps
// ---------------------------------------------------------------------------

/// Map names, as pinned under `<bpffs>/maps/`.
pub const MAP_SERVICES: &str = "GP_SERVICES";
pub const MAP_BACKENDS: &str = "GP_BACKENDS";
pub const MAP_REV_NAT: &str = "GP_REV_NAT";
pub const MAP_AFFINITY: &str = "GP_AFFINITY";
pub const MAP_MAGLEV: &str = "GP_MAGLEV";
pub const MAP_CT: &str = "GP_CT";
pub const MAP_NODE_ADDRS: &str = "GP_NODE_ADDRS";
pub const MAP_DEVICES: &str = "GP_DEVICES";
pub const MAP_CONFIG: &str = "GP_CONFIG";

fn open_map(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

fn hash<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &str) -> Result<BpfHashMap<MapData, K, V>> {
    BpfHashMap::try_from(open_map(dir, name)?)
        .with_context(|| format!("map {name} as a hash map of the contract's types"))
}

/// The tc/XDP datapath's maps, opened from their pins.
pub struct Maps {
    /// `<bpffs>/maps`.
    pub dir: PathBuf,
    pub services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: BpfHashMap<MapData, u32, Backend>,
    pub rev_nat: BpfHashMap<MapData, u16, RevNat>,
    pub affinity: BpfHashMap<MapData, AffinityKey, Affinity>,
    pub maglev: BpfHashMap<MapData, MaglevKey, MaglevChunk>,
    pub ct: BpfHashMap<MapData, CtKey, CtEntry>,
    pub node_addrs: BpfHashMap<MapData, u32, NodeAddr>,
    pub devices: BpfHashMap<MapData, u32, Device>,
    pub config: Array<MapData, Config>,
}

/// The contents of every map (but the Maglev chunks, compared by key only
/// as they are 4 KiB each), for before/after comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsSnapshot {
    pub services: Vec<(ServiceKey, ServiceValue)>,
    pub backends: Vec<(u32, Backend)>,
    pub rev_nat: Vec<(u16, RevNat)>,
    pub maglev: Vec<MaglevKey>,
    pub ct: Vec<(CtKey, CtEntry)>,
    pub node_addrs: Vec<(u32, NodeAddr)>,
    pub devices: Vec<(u32, Device)>,
    pub config: Config,
    /// Affinity entries without their timestamps.
    pub affinity: Vec<(u64, u16, u32, u16)>,
}

fn sorted<K: Ord + Copy, V: Copy>(m: HashMap<K, V>) -> Vec<(K, V)> {
    let mut v: Vec<(K, V)> = m.into_iter().collect();
    v.sort_by_key(|e| e.0);
    v
}

/// A NodePort / LoadBalancer / external-IP frontend to program directly.
#[derive(Debug, Clone)]
pub struct Frontend {
    /// Frontend address ([`NODEPORT_ADDRESS`] for a NodePort).
    pub address: Ipv4Addr,
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `SCOPE_INTERNAL` or `SCOPE_EXTERNAL`.
    pub scope: u8,
    pub rev_nat_id: u16,
    /// `SVC_FLAG_*` (`SVC_FLAG_MAGLEV` is added when `maglev` is set).
    pub flags: u16,
    pub affinity_timeout: u32,
    /// `(backend id, backend)` in slot order.
    pub backends: Vec<(u32, Backend)>,
    /// A Maglev table (its length must be a prime); `None`: random slot.
    pub maglev: Option<Vec<u32>>,
}

impl Frontend {
    /// An external-scope NodePort frontend without backends.
    pub fn nodeport(port: u16, proto: u8, rev_nat_id: u16) -> Self {
        Self {
            address: Ipv4Addr::new(0, 0, 0, 0),
            port,
            proto,
            scope: SCOPE_EXTERNAL,
            rev_nat_id,
            flags: SVC_FLAG_NODEPORT,
            affinity_timeout: 0,
            backends: vec![],
            maglev: None,
        }
    }

    /// An external-scope frontend on `address` (LoadBalancer or external IP).
    pub fn external(address: Ipv4Addr, port: u16, proto: u8, rev_nat_id: u16) -> Self {
        Self {
            address,
            flags: 0,
            ..Self::nodeport(port, proto, rev_nat_id)
        }
    }

    /// Add a backend.
    pub fn backend(mut self, id: u32, address: Ipv4Addr, port: u16, flags: u8) -> Self {
        self.backends.push((
            id,
            Backend {
                address: u32::from_ne_bytes(address.octets()),
                port: port.to_be(),
                proto: self.proto,
                flags,
            },
        ));
        self
    }

    /// Use a Maglev table of `size` (a prime) filled round-robin with the
    /// backends, so every test knows which backend a position holds.
    pub fn maglev_round_robin(mut self, size: usize) -> Self {
        let ids: Vec<u32> = self.backends.iter().map(|b| b.0).collect();
        assert!(!ids.is_empty(), "Maglev table without backends");
        self.maglev = Some((0..size).map(|i| ids[i % ids.len()]).collect());
        self
    }

    /// The services-map key of slot `slot`.
    pub fn key(&self, slot: u16) -> ServiceKey {
        ServiceKey::scoped(
            u32::from_ne_bytes(self.address.octets()),
            self.port.to_be(),
            self.proto,
            self.scope,
            slot,
        )
    }
}

/// Network-order `u32` of an address, as map keys hold it.
pub fn ip_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

impl Maps {
    /// Opens the maps pinned under `<bpffs>/maps`.
    pub fn open(bpffs: &Path) -> Result<Maps> {
        let dir = bpffs.join("maps");
        Ok(Maps {
            services: hash(&dir, MAP_SERVICES)?,
            backends: hash(&dir, MAP_BACKENDS)?,
            rev_nat: hash(&dir, MAP_REV_NAT)?,
            affinity: hash(&dir, MAP_AFFINITY)?,
            maglev: hash(&dir, MAP_MAGLEV)?,
            ct: hash(&dir, MAP_CT)?,
            node_addrs: hash(&dir, MAP_NODE_ADDRS)?,
            devices: hash(&dir, MAP_DEVICES)?,
            config: Array::try_from(open_map(&dir, MAP_CONFIG)?)
                .with_context(|| format!("map {MAP_CONFIG} as an array of Config"))?,
            dir,
        })
    }

    /// Programs `fe` in the contract's order: backends, Maglev chunks,
    /// slots, reverse NAT, and the master entry last.
    pub fn add_frontend(&mut self, fe: &Frontend) -> Result<()> {
        for (id, b) in &fe.backends {
            self.backends.insert(id, b, 0)?;
        }
        let mut flags = fe.flags;
        let mut backend_id = 0;
        if let Some(table) = &fe.maglev {
            let size = table.len();
            if size == 0 || size > MAGLEV_MAX_SIZE as usize {
                bail!("Maglev table size {size} out of range");
            }
            for (chunk, ids) in table.chunks(MAGLEV_CHUNK).enumerate() {
                let mut value = MaglevChunk {
                    backend_ids: [0; MAGLEV_CHUNK],
                };
                value.backend_ids[..ids.len()].copy_from_slice(ids);
                let key = MaglevKey {
                    rev_nat_id: fe.rev_nat_id,
                    generation: 0,
                    _pad: 0,
                    chunk: chunk as u32,
                };
                self.maglev.insert(key, value, 0)?;
            }
            flags |= SVC_FLAG_MAGLEV;
            backend_id = size as u32;
        }
        for (slot, (id, _)) in fe.backends.iter().enumerate() {
            let value = ServiceValue {
                backend_id: *id,
                count: 0,
                rev_nat_id: 0,
                affinity_timeout: 0,
                flags: 0,
                _pad: 0,
            };
            self.services.insert(fe.key(slot as u16 + 1), value, 0)?;
        }
        let rev = RevNat {
            address: ip_key(fe.address),
            port: fe.port.to_be(),
            _pad: 0,
        };
        self.rev_nat.insert(fe.rev_nat_id, rev, 0)?;
        let master = ServiceValue {
            backend_id,
            count: fe.backends.len() as u16,
            rev_nat_id: fe.rev_nat_id,
            affinity_timeout: fe.affinity_timeout,
            flags,
            _pad: 0,
        };
        self.services.insert(fe.key(0), master, 0)?;
        Ok(())
    }

    /// An address NodePort frontends answer on.
    pub fn add_node_addr(&mut self, ip: Ipv4Addr, ifindex: u32) -> Result<()> {
        Ok(self
            .node_addrs
            .insert(ip_key(ip), NodeAddr { ifindex }, 0)?)
    }

    /// A device the programs run on, with its SNAT address.
    pub fn add_device(&mut self, ifindex: u32, ip: Ipv4Addr) -> Result<()> {
        Ok(self.devices.insert(
            ifindex,
            Device {
                address: ip_key(ip),
            },
            0,
        )?)
    }

    /// `--lb-mode` at run time.
    pub fn set_lb_mode(&mut self, lb_mode: u8) -> Result<()> {
        Ok(self.config.set(
            0,
            Config {
                lb_mode,
                _pad: [0; 7],
            },
            0,
        )?)
    }

    /// Conntrack entries.
    pub fn ct_entries(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        Ok(sorted(collect(MAP_CT, &self.ct)?))
    }

    /// Delete every conntrack and affinity entry (between independent cases).
    pub fn flush_state(&mut self) -> Result<()> {
        for k in collect(MAP_CT, &self.ct)?.into_keys() {
            let _ = self.ct.remove(&k);
        }
        for k in collect(MAP_AFFINITY, &self.affinity)?.into_keys() {
            let _ = self.affinity.remove(&k);
        }
        Ok(())
    }

    /// Everything, for before/after comparisons.
    pub fn snapshot(&self) -> Result<MapsSnapshot> {
        let mut maglev: Vec<MaglevKey> = collect(MAP_MAGLEV, &self.maglev)?.into_keys().collect();
        maglev.sort();
        let mut affinity: Vec<(u64, u16, u32, u16)> = collect(MAP_AFFINITY, &self.affinity)?
            .into_iter()
            .map(|(k, v)| (k.client, k.rev_nat_id, v.backend_id, v.slot))
            .collect();
        affinity.sort();
        Ok(MapsSnapshot {
            services: sorted(collect(MAP_SERVICES, &self.services)?),
            backends: sorted(collect(MAP_BACKENDS, &self.backends)?),
            rev_nat: sorted(collect(MAP_REV_NAT, &self.rev_nat)?),
            maglev,
            ct: sorted(collect(MAP_CT, &self.ct)?),
            node_addrs: sorted(collect(MAP_NODE_ADDRS, &self.node_addrs)?),
            devices: sorted(collect(MAP_DEVICES, &self.devices)?),
            config: self.config.get(&0, 0)?,
            affinity,
        })
    }
}

/// A readable conntrack key: `saddr:sport -> daddr:dport proto dir`.
pub fn show_ct_key(k: &CtKey) -> String {
    format!(
        "{}:{} -> {}:{} proto {} dir {}",
        Ipv4Addr::from(k.saddr.to_ne_bytes()),
        u16::from_be(k.sport),
        Ipv4Addr::from(k.daddr.to_ne_bytes()),
        u16::from_be(k.dport),
        k.proto,
        k.dir
    )
}

/// A readable conntrack entry.
pub fn show_ct_entry(e: &CtEntry) -> String {
    format!(
        "-> {}:{} => {}:{} backend {} rev_nat {} flags {:#x} expires {}",
        Ipv4Addr::from(e.new_saddr.to_ne_bytes()),
        u16::from_be(e.new_sport),
        Ipv4Addr::from(e.new_daddr.to_ne_bytes()),
        u16::from_be(e.new_dport),
        e.backend_id,
        e.rev_nat_id,
        e.flags,
        e.expires
    )
}

// ---------------------------------------------------------------------------
// constant programs
// ---------------------------------------------------------------------------

/// `BPF_PROG_LOAD` and the program types we load.
const BPF_PROG_LOAD: libc::c_long = 5;
/// `BPF_PROG_TYPE_SCHED_CLS`.
pub const PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_PROG_TYPE_XDP`.
pub const PROG_TYPE_XDP: u32 = 6;

/// Loads a two-instruction program of `prog_type` that returns `retval`
/// (`r0 = retval; exit`): a baseline for timings, and a check of this
/// module's BPF_PROG_TEST_RUN plumbing that does not depend on the datapath.
pub fn load_constant_program(prog_type: u32, retval: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // struct bpf_insn: code, dst_reg:4 | src_reg:4, off, imm.
    // BPF_ALU64 | BPF_MOV | BPF_K = 0xb7; BPF_JMP | BPF_EXIT = 0x95.
    let mut insns = [0u8; 16];
    insns[0] = 0xb7;
    insns[4..8].copy_from_slice(&retval.to_le_bytes());
    insns[8] = 0x95;
    let license = c"GPL";
    // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license,
    // then fields left zero.
    let mut attr = [0u64; 16];
    attr[0] = u64::from(prog_type) | (2u64 << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // SAFETY: attr is a zeroed 128-byte buffer holding a valid
    // BPF_PROG_LOAD attribute whose pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}
