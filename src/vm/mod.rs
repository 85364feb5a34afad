//! Building and running one VM on any [`Hypervisor`]: reads the image the user named
//! ([`image`]: a kernel ELF or a Hermit image archive), works out what the guest is told besides
//! it (`handoff`: command line, environment, file map, mount points), lays out guest RAM
//! ([`crate::setup`]), creates the hypervisor's VM (on its own thread, while the image loads) and
//! runs every vCPU on its own thread (`threads`). The first vCPU to end stops the whole VM; its
//! Exit code or error is the result. What each exit means is decided in [`crate::exits`].

mod handoff;
pub mod image;
mod threads;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use thiserror::Error;

use crate::affinity;
use crate::confine::{ConfineError, Confiner, TreeAccess};
use crate::exits::{ExitError, GuestExit};
use crate::hypercall::Hypercalls;
use crate::hypervisor::{Hypervisor, HypervisorError};
use crate::isolation::{FileMap, IsolationError};
use crate::output::{OutputError, SerialOutput};
use crate::params::VmConfig;
use crate::setup::{self, GuestPlan, PreparedGuest, SetupError};

use self::handoff::GuestInput;
pub use self::image::ImageError;

/// The most vCPUs one VM may have (x2APIC ids and thread count stay sane).
pub const MAX_CPUS: u32 = 256;

/// Everything that can stop uhyve before or while running a guest.
#[derive(Debug, Error)]
pub enum VmError {
    /// The image cannot be read or used.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Guest RAM could not be laid out for the image.
    #[error("{}", setup_message(.path, .source))]
    Setup {
        /// The image's path as given.
        path: PathBuf,
        /// What failed.
        source: SetupError,
    },
    /// The file mappings are invalid.
    #[error(transparent)]
    Isolation(#[from] IsolationError),
    /// The output target cannot be opened.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The hypervisor could not be set up.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// A vCPU stopped the VM: a host-side failure, a hypercall that cannot be answered, or a
    /// guest crash.
    #[error(transparent)]
    Run(#[from] ExitError),
    /// An unusable number of vCPUs.
    #[error("--cpu-count {0}: uhyve supports 1 to {max} vCPUs", max = MAX_CPUS)]
    CpuCount(u32),
    /// More vCPUs than this hypervisor offers.
    #[error("--cpu-count {requested}: this hypervisor offers at most {max} vCPUs per VM")]
    TooManyCpus {
        /// What was asked for.
        requested: u32,
        /// The hypervisor's limit.
        max: u32,
    },
    /// The `--affinity` list cannot be used.
    #[error(transparent)]
    Affinity(#[from] affinity::AffinityError),
    /// A thread of uhyve's own could not be started or ended abnormally.
    #[error(transparent)]
    Thread(#[from] ThreadError),
    /// uhyve cannot confine itself as asked.
    #[error(transparent)]
    Confine(#[from] ConfineError),
    /// A host signal asked uhyve to stop.
    #[error("stopped by {}", crate::signals::signal_name(*.0))]
    Stopped(i32),
    /// The GDB server cannot listen (`-s/--gdb-port`).
    #[error("-s/--gdb-port: cannot listen on {address}: {source}")]
    GdbListen {
        /// The address asked for.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// GDB killed the guest.
    #[error("the guest was killed by GDB")]
    KilledByDebugger,
    /// The network backend could not be opened.
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Net(#[from] crate::virtio::tap::TapError),
    /// passt could not be started or reached.
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Passt(#[from] crate::virtio::passt::PasstError),
    /// The network card's notification eventfds could not be created.
    #[error("cannot create the network card's eventfds: {0}")]
    NetEventFd(std::io::Error),
    /// The guest's architecture or the hypervisor has no network card yet.
    #[error(
        "-n/--net: {0:?} guests get no network card on this hypervisor yet (guests on Linux KVM do)"
    )]
    NetUnsupported(crate::arch::GuestArch),
}

/// The message of [`VmError::Setup`]: errors about the image itself name its file.
fn setup_message(path: &std::path::Path, source: &SetupError) -> String {
    if source.concerns_the_image() {
        format!("{}: {source}", path.display())
    } else {
        source.to_string()
    }
}

/// Failures of uhyve's own threads.
#[derive(Debug, Error)]
pub enum ThreadError {
    /// The GDB server's thread could not be started.
    #[error("cannot start the GDB server thread: {0}")]
    GdbSpawn(std::io::Error),
    /// The network card's I/O thread could not be started.
    #[error("cannot start the network card's I/O thread: {0}")]
    NetSpawn(std::io::Error),
    /// The thread that creates the hypervisor's VM could not be started.
    #[error("cannot start the VM set-up thread: {0}")]
    SetupSpawn(std::io::Error),
    /// The thread that creates the hypervisor's VM panicked.
    #[error("the VM set-up thread panicked")]
    SetupPanicked,
    /// A vCPU thread could not be started.
    #[error("vCPU {cpu}: cannot start its thread: {source}")]
    VcpuSpawn {
        /// The vCPU id.
        cpu: u32,
        /// The failure.
        source: std::io::Error,
    },
    /// A vCPU thread panicked.
    #[error("vCPU {cpu}: the vCPU thread panicked")]
    VcpuPanicked {
        /// The vCPU id.
        cpu: u32,
    },
    /// Every vCPU thread ended without an exit or an error.
    #[error("every vCPU thread ended without a result")]
    NoResult,
}

/// The hypervisor uhyve uses on this platform.
#[cfg(kvm)]
pub type HostHypervisor = crate::linux::KvmVm;
/// The hypervisor uhyve uses on this platform.
#[cfg(kvm_arm)]
pub type HostHypervisor = crate::linux::KvmArmVm;
/// The hypervisor uhyve uses on this platform.
#[cfg(hvf)]
pub type HostHypervisor = crate::hvf::macos::HvfVm;

/// A prepared VM: guest RAM laid out, hypervisor created, ready to run.
pub struct Vm<H: Hypervisor> {
    // Field order matters: the hypervisor (which maps guest RAM into the guest) is dropped
    // before guest RAM (in `guest`) itself.
    hypervisor: H,
    hypercalls: Hypercalls,
    output: Arc<SerialOutput>,
    cpu_count: u32,
    affinity: Option<Vec<usize>>,
    stats: bool,
    emulation_fallback: bool,
    /// Where the GDB server listens (`-s/--gdb-port`).
    gdb: Option<crate::params::GdbAddress>,
    /// The network card (`-n/--net`).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    net: Option<NetCard>,
    /// What restricts uhyve's own process before and while the vCPUs run.
    confiner: Confiner,
    /// The image's path, for messages.
    path: PathBuf,
    /// Guest RAM, vCPU 0's registers, and the boot structures still to write.
    guest: PreparedGuest,
}

/// The network card of a VM: the virtio-net service where uhyve has one (Linux).
#[cfg(target_os = "linux")]
pub(crate) type NetCard = crate::virtio::service::NetService;
/// The network card of a VM: none on this platform yet.
#[cfg(not(target_os = "linux"))]
pub(crate) type NetCard = std::convert::Infallible;

/// The network card `config` asks for (`-n/--net`), with its backend opened; `guest` then
/// announces PCI devices to the kernel.
fn open_net<H: Hypervisor>(
    config: &VmConfig,
    guest: &mut PreparedGuest,
) -> Result<Option<NetCard>, VmError> {
    let Some(backend) = &config.net else {
        return Ok(None);
    };
    guest.announce_pci();
    if cfg!(not(target_os = "linux")) {
        return Err(VmError::NetUnsupported(H::ARCH));
    }
    #[cfg(target_os = "linux")]
    {
        use crate::params::NetBackend;
        use crate::virtio::link::HostLink;
        use crate::virtio::passt::PasstLink;
        let link = match backend {
            NetBackend::Tap(name) => HostLink::Tap(crate::virtio::tap::Tap::open(name)?),
            NetBackend::User(forwards) => HostLink::Passt(PasstLink::spawn(forwards)?),
            NetBackend::Passt(socket) => HostLink::Passt(PasstLink::connect(socket)?),
        };
        log::info!("network card on {}", link.description());
        let placement = card_placement(H::ARCH);
        let card =
            NetCard::new(link, stable_mac(backend), placement).map_err(VmError::NetEventFd)?;
        Ok(Some(card))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = backend;
        Err(VmError::NetUnsupported(H::ARCH))
    }
}

/// Where the network card sits in a guest of `arch`: its BAR where the kernel looks for it
/// (x86_64) or places it (aarch64: the start of the host bridge's 64-bit window), and its
/// interrupt.
#[cfg(target_os = "linux")]
fn card_placement(arch: crate::arch::GuestArch) -> crate::virtio::service::CardPlacement {
    use crate::arch::{aarch64, x86_64};
    match arch {
        crate::arch::GuestArch::X86_64 => crate::virtio::service::CardPlacement {
            bar_base: x86_64::layout::NET_BAR as u32,
            interrupt_line: x86_64::layout::NET_INTERRUPT_LINE,
        },
        crate::arch::GuestArch::Aarch64 => crate::virtio::service::CardPlacement {
            bar_base: aarch64::layout::PCI_MEM64.start as u32,
            interrupt_line: aarch64::layout::NET_SPI as u8,
        },
    }
}

/// Routes the network card's queue notifications to its I/O thread inside the hypervisor where
/// it can (no exit to uhyve per notification); on aarch64 also lets the guest read the
/// configuration space of the empty PCI buses without exits (all-ones, no device).
fn route_net_notifications<H: Hypervisor>(hypervisor: &H, net: Option<&NetCard>) {
    #[cfg(target_os = "linux")]
    if let Some(net) = net {
        let routed = net.route_notifications(|address, eventfd| {
            hypervisor.mmio_write_eventfd(address, eventfd)
        });
        log::debug!("network card: notifications by eventfd: {routed}");
        if H::ARCH == crate::arch::GuestArch::Aarch64 {
            // Bus 0 (the first 1 MiB) holds the card; buses 1 to 255 are empty.
            let ecam = crate::arch::aarch64::layout::PCI_ECAM;
            match hypervisor.map_all_ones(ecam.start + (1 << 20)..ecam.end) {
                Ok(mapped) => log::debug!("empty PCI buses read without exits: {mapped}"),
                Err(error) => log::info!("empty PCI buses read through exits: {error}"),
            }
        }
    }
    let _ = (hypervisor, net);
}

/// The card's MAC address: locally administered, unicast, and the same on every run with the
/// same backend, so that a DHCP server on a TAP interface finds the lease it gave last time
/// (a new address each run would find a one-address range taken by the previous run's lease).
/// FNV-1a of the backend's text (`tap:NAME`, `user`, `passt:PATH`), stable across builds.
#[cfg(target_os = "linux")]
fn stable_mac(backend: &crate::params::NetBackend) -> [u8; 6] {
    use crate::params::NetBackend;
    let key = match backend {
        NetBackend::Tap(name) => format!("tap:{name}"),
        NetBackend::User(_) => "user".to_string(),
        NetBackend::Passt(path) => format!("passt:{}", path.display()),
    };
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let bytes = hash.to_le_bytes();
    [0x02, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]]
}

/// How the guest of `config` running `image` is laid out, with the kernel's command line
/// `bootargs` and its mount points `mounts`.
fn guest_plan(
    config: &VmConfig,
    image: &image::GuestImage<'_>,
    bootargs: String,
    mounts: Vec<String>,
) -> GuestPlan {
    GuestPlan {
        ram_size: config.memory_size.0,
        num_cpus: config.cpu_count,
        bootargs,
        mounts,
        initrd: image.initrd.clone(),
        pre_0_10_kernel: image.kernel.generation() == crate::loader::KernelGeneration::Legacy,
        aslr_random: aslr_random(config),
        ram_advice: crate::mem::RamAdvice {
            huge_pages: config.tuning.transparent_huge_pages,
            mergeable: config.tuning.same_page_merging,
        },
        pci: config.net.is_some(),
    }
}

/// Checks the vCPU count and the affinity list of `config`.
fn check_cpus(config: &VmConfig) -> Result<(), VmError> {
    if config.cpu_count == 0 || config.cpu_count > MAX_CPUS {
        return Err(VmError::CpuCount(config.cpu_count));
    }
    if let Some(list) = &config.affinity {
        affinity::check(list, config.cpu_count)?;
    }
    Ok(())
}

#[cfg(host_backend)]
impl Vm<HostHypervisor> {
    /// Builds the VM described by `config` on this platform's hypervisor.
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        let features = crate::hypervisor::VmFeatures {
            pit: config.tuning.pit,
            cpu_power_management: config.tuning.cpu_power_management,
        };
        Self::with_hypervisor(config, move || Ok(HostHypervisor::create(features)?))
    }
}

impl<H: Hypervisor + 'static> Vm<H> {
    /// Builds the VM described by `config` on the hypervisor that `create` makes (called on its
    /// own thread, while the image loads: creating a VM can wait in the host kernel).
    pub fn with_hypervisor(
        config: &VmConfig,
        create: impl FnOnce() -> Result<H, HypervisorError> + Send + 'static,
    ) -> Result<Self, VmError> {
        check_cpus(config)?;
        // Before anything else: a strict confinement this host cannot keep stops the start.
        let mut confiner = Confiner::new(config.confinement, H::RUN_IOCTLS)?;
        let hypervisor = thread::Builder::new()
            .name("vm-setup".into())
            .spawn(create)
            .map_err(ThreadError::SetupSpawn)?;
        let image = image::read_image(config, H::ARCH)?;
        // From here on, the configuration with a Hermit image archive's settings merged in.
        let config: &VmConfig = &image.config;
        check_cpus(config)?;
        let input = GuestInput::new(config, &image)?;
        if confiner.wants_trees() {
            let (trees, removable) = allowed_trees(&input.files);
            confiner.allow_trees(trees, removable);
        }
        let output = Arc::new(SerialOutput::new(config.output.clone())?);
        let plan = guest_plan(config, &image, input.bootargs, input.fdt_mounts);
        let mut guest =
            setup::prepare(H::ARCH, &image.kernel, &plan).map_err(|source| VmError::Setup {
                path: config.kernel.clone(),
                source,
            })?;
        let net = open_net::<H>(config, &mut guest)?;
        log::info!(
            "loaded {} (entry version {}, interface v{}), entry {:#x}",
            config.kernel.display(),
            image.kernel.entry_version(),
            image.kernel.interface_version(),
            guest.registers.entry_point()
        );
        let hypervisor = hypervisor
            .join()
            .map_err(|_| ThreadError::SetupPanicked)??;
        if let Some(max) = hypervisor.max_cpus()
            && config.cpu_count > max
        {
            return Err(VmError::TooManyCpus {
                requested: config.cpu_count,
                max,
            });
        }
        // SAFETY: `guest.mem` and `hypervisor` both move into the returned Vm, whose field order
        // drops the hypervisor first; on the error paths below, `hypervisor` (declared after
        // `guest`) is dropped before it.
        unsafe { hypervisor.map_memory(&guest.mem) }?;
        route_net_notifications(&hypervisor, net.as_ref());
        let hypercalls = Hypercalls::new(H::ARCH, Arc::clone(&output), input.files, input.cmdline)
            .with_interface(image.kernel.interface_version());
        Ok(Self {
            hypervisor,
            hypercalls,
            output,
            cpu_count: config.cpu_count,
            affinity: config.affinity.clone(),
            stats: config.stats,
            emulation_fallback: config.emulation_fallback,
            gdb: config.gdb,
            net,
            confiner,
            path: config.kernel.clone(),
            guest,
        })
    }
}

/// The random value the RAM base (and with it a relocatable kernel's) is drawn from, if ASLR is
/// on (`--no-aslr` turns it off). If the operating system cannot give one, RAM and kernel stay
/// at the lowest base, with a warning.
fn aslr_random(config: &VmConfig) -> Option<u64> {
    if !config.tuning.aslr {
        return None;
    }
    match setup::aslr::os_random() {
        Ok(random) => Some(random),
        Err(error) => {
            log::warn!(
                "ASLR is off for this run: the operating system's random source failed ({error}); \
                 RAM and a relocatable kernel stay at the lowest base"
            );
            None
        }
    }
}

/// The host trees uhyve may reach while the guest runs: every mapping's root as the file map
/// opened it (read-only mappings read-only; a single file that does not exist yet is reached
/// through its parent directory), and the private temp directory, which may also be removed at
/// exit.
fn allowed_trees(files: &FileMap) -> (Vec<TreeAccess>, Vec<PathBuf>) {
    let trees = files
        .host_trees()
        .into_iter()
        .map(|tree| TreeAccess {
            path: tree.path.to_owned(),
            writable: tree.writable,
            directory: tree.directory,
        })
        .collect();
    (trees, files.temp_dir().into_iter().collect())
}

impl<H: Hypervisor> Vm<H> {
    /// Writes the device tree and boot info (which carry the TSC frequency of vCPU 0, where
    /// the architecture has one).
    fn write_boot(&self, cpu_freq_khz: Option<u32>) -> Result<(), VmError> {
        self.guest
            .write_boot(cpu_freq_khz, time::OffsetDateTime::now_utc())
            .map_err(|source| VmError::Setup {
                path: self.path.clone(),
                source,
            })
    }

    /// Runs the guest on one thread per vCPU until it exits. Returns the exit code of the first
    /// Exit hypercall, or the first failure of any vCPU.
    pub fn run(&mut self) -> Result<GuestExit, VmError> {
        let started = Instant::now();
        let (result, stats) = self.run_vcpus();
        self.output.flush();
        if let Some(mut stats) = stats {
            stats.elapsed = started.elapsed();
            #[cfg(target_os = "linux")]
            {
                stats.network = self.net.as_ref().map(|n| (n.description(), n.counters()));
            }
            // On standard output, after the guest's, as upstream uhyve prints them; a closed
            // standard output loses them rather than failing the run.
            use std::io::Write;
            let _ = write!(std::io::stdout().lock(), "{stats}");
        }
        result
    }
}

/// Builds and runs the VM described by `config`; returns the guest's exit code.
#[cfg(host_backend)]
pub fn run(config: &VmConfig) -> Result<i32, VmError> {
    let mut vm = Vm::new(config)?;
    vm.run().map(|GuestExit(code)| code)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::stable_mac;
    use crate::params::NetBackend;

    #[test]
    fn the_cards_address_is_local_unicast_and_the_same_for_the_same_backend() {
        let tap0 = stable_mac(&NetBackend::Tap("tap0".into()));
        assert_eq!(tap0, stable_mac(&NetBackend::Tap("tap0".into())));
        assert_eq!(tap0[0], 0x02, "locally administered, unicast");
        assert_ne!(tap0, stable_mac(&NetBackend::Tap("tap1".into())));
        assert_ne!(tap0, stable_mac(&NetBackend::User(Vec::new())));
        // Fixed by the algorithm, not by this build: a DHCP lease survives an upgrade.
        assert_eq!(tap0, [0x02, 0x07, 0xa7, 0x0a, 0xce, 0xfd]);
    }
}
