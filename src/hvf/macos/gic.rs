//! The in-kernel GICv3 of Hypervisor.framework (macOS 15 and later): sized and checked against
//! the addresses uhyve's device tree gives the guest (`arch::aarch64::layout::{GICD, GICR,
//! GIC_ITS}`), then created before any vCPU exists. The calls are looked up at run time, so that
//! on older macOS uhyve reports what is missing instead of failing to load.
//!
//! Prototypes (Apple's `hv_gic.h`, `hv_gic_config.h`, `hv_gic_parameters.h`, macOS 15.0):
//! `hv_gic_config_t hv_gic_config_create(void)` (an os_object, released with `os_release`),
//! `hv_gic_config_set_{distributor,redistributor,msi_region}_base(hv_gic_config_t, hv_ipa_t)`,
//! `hv_gic_config_set_msi_interrupt_range(hv_gic_config_t, uint32_t base, uint32_t count)`,
//! `hv_gic_get_{distributor_size,distributor_base_alignment,redistributor_region_size,
//! redistributor_size,redistributor_base_alignment,msi_region_size,
//! msi_region_base_alignment}(size_t *)`,
//! `hv_gic_get_spi_interrupt_range(uint32_t *base, uint32_t *count)` and
//! `hv_gic_create(hv_gic_config_t)`.

use std::ffi::{CStr, c_void};
use std::ops::Range;

use thiserror::Error;
use xhypervisor::ffi::{HV_SUCCESS, hv_gic_config_t, hv_ipa_t, hv_return_t, os_release};

use crate::arch::aarch64::layout::{GIC_ITS, GICD, GICR, RAM_BASE};
use crate::hvf::return_name;

/// Why the GIC could not be created.
#[derive(Debug, Error)]
pub enum GicError {
    /// The framework lacks the GIC calls.
    #[error(
        "this macOS has no in-kernel GIC in Hypervisor.framework ({0} is missing): uhyve needs \
         macOS 15 or later on Apple Silicon"
    )]
    Missing(&'static str),
    /// A GIC region does not fit where the device tree puts it.
    #[error(
        "the framework's GIC {region} needs {size:#x} bytes aligned to {alignment:#x}, but uhyve's \
         layout has {available:#x} bytes at {base:#x}"
    )]
    Layout {
        /// "distributor" or "redistributors".
        region: &'static str,
        /// Size the framework needs.
        size: usize,
        /// Alignment it needs.
        alignment: usize,
        /// Base address uhyve uses.
        base: u64,
        /// Room uhyve has there.
        available: u64,
    },
    /// The framework returned no GIC config object.
    #[error("Hypervisor.framework: hv_gic_config_create returned no configuration")]
    NoConfig,
    /// A GIC call failed.
    #[error("Hypervisor.framework: {call} failed with {}", return_name(*.code))]
    Call {
        /// The call.
        call: &'static str,
        /// Its `hv_return_t`.
        code: hv_return_t,
    },
}

type ConfigCreate = unsafe extern "C" fn() -> hv_gic_config_t;
type ConfigSetBase = unsafe extern "C" fn(hv_gic_config_t, hv_ipa_t) -> hv_return_t;
type ConfigSetRange = unsafe extern "C" fn(hv_gic_config_t, u32, u32) -> hv_return_t;
type GetSize = unsafe extern "C" fn(*mut usize) -> hv_return_t;
type GetRange = unsafe extern "C" fn(*mut u32, *mut u32) -> hv_return_t;
type Create = unsafe extern "C" fn(hv_gic_config_t) -> hv_return_t;

/// The address of `name` in the loaded images, if any.
fn lookup(name: &'static CStr) -> Result<*mut c_void, GicError> {
    // SAFETY: dlsym with RTLD_DEFAULT searches every loaded image; `name` is NUL-terminated.
    let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if address.is_null() {
        return Err(GicError::Missing(name.to_str().unwrap_or("hv_gic_*")));
    }
    Ok(address)
}

/// Looks up `$name` and gives it the type `$ty` (the prototype in the module docs).
macro_rules! gic_fn {
    ($name:literal as $ty:ty) => {{
        let address = lookup($name)?;
        // SAFETY: the symbol is the framework's function of that name, whose C prototype
        // (module docs, from Apple's headers) `$ty` reproduces.
        unsafe { std::mem::transmute::<*mut c_void, $ty>(address) }
    }};
}

fn check(call: &'static str, code: hv_return_t) -> Result<(), GicError> {
    if code == HV_SUCCESS {
        Ok(())
    } else {
        Err(GicError::Call { call, code })
    }
}

/// Reads one `size_t` parameter of the framework's GIC.
fn parameter(call: &'static str, get: GetSize) -> Result<usize, GicError> {
    let mut value = 0usize;
    // SAFETY: `value` is a live out-parameter of the type the prototype names.
    check(call, unsafe { get(&mut value) })?;
    Ok(value)
}

/// Checks that a region of `size` bytes aligned to `alignment` fits `room`.
fn check_fit(
    region: &'static str,
    size: usize,
    alignment: usize,
    room: &Range<u64>,
) -> Result<(), GicError> {
    let aligned = alignment == 0 || room.start.is_multiple_of(alignment as u64);
    if aligned && size as u64 <= room.end - room.start {
        return Ok(());
    }
    Err(GicError::Layout {
        region,
        size,
        alignment,
        base: room.start,
        available: room.end - room.start,
    })
}

/// The config object, released when dropped.
struct Config(hv_gic_config_t);

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: the config was returned retained by hv_gic_config_create and is released
        // exactly once; hv_gic_create does not take ownership of it.
        unsafe { os_release(self.0.cast_const()) };
    }
}

/// Creates the GIC: distributor at GICD, redistributors at GICR, and, where the framework's MSI
/// frame fits the ITS area of the device tree, MSIs there on the upper half of the SPIs (the
/// lower half stays for wired interrupts). Returns how many vCPUs' redistributors fit the area
/// the device tree describes.
pub fn create() -> Result<u32, GicError> {
    let max_cpus = check_regions()?;
    let config = new_config()?;
    configure_msis(&config)?;
    let create = gic_fn!(c"hv_gic_create" as Create);
    // SAFETY: the VM exists and has no vCPUs yet (HvfVm::create calls this right after
    // hv_vm_create), as hv_gic_create requires; `config.0` is a live GIC config object.
    check("hv_gic_create", unsafe { create(config.0) })?;
    Ok(max_cpus)
}

/// Checks that the framework's distributor and redistributor regions fit the areas the device
/// tree describes; returns how many vCPUs' redistributors the GICR area holds.
fn check_regions() -> Result<u32, GicError> {
    let distributor_size = gic_fn!(c"hv_gic_get_distributor_size" as GetSize);
    let distributor_alignment = gic_fn!(c"hv_gic_get_distributor_base_alignment" as GetSize);
    let redistributor_region_size = gic_fn!(c"hv_gic_get_redistributor_region_size" as GetSize);
    let redistributor_size = gic_fn!(c"hv_gic_get_redistributor_size" as GetSize);
    let redistributor_alignment = gic_fn!(c"hv_gic_get_redistributor_base_alignment" as GetSize);
    check_fit(
        "distributor",
        parameter("hv_gic_get_distributor_size", distributor_size)?,
        parameter(
            "hv_gic_get_distributor_base_alignment",
            distributor_alignment,
        )?,
        &GICD,
    )?;
    // The framework's region holds a redistributor for every vCPU it supports (possibly more
    // than the device tree's GICR area describes): it must not reach RAM. The guest learns only
    // the GICR area, so that bounds the vCPUs whose redistributor it can find.
    check_fit(
        "redistributors",
        parameter(
            "hv_gic_get_redistributor_region_size",
            redistributor_region_size,
        )?,
        parameter(
            "hv_gic_get_redistributor_base_alignment",
            redistributor_alignment,
        )?,
        &(GICR.start..RAM_BASE),
    )?;
    let one_redistributor = parameter("hv_gic_get_redistributor_size", redistributor_size)?;
    let described = (GICR.end - GICR.start) / (one_redistributor.max(1) as u64);
    Ok(u32::try_from(described).unwrap_or(u32::MAX))
}

/// A config object with the distributor and redistributor bases set.
fn new_config() -> Result<Config, GicError> {
    let config_create = gic_fn!(c"hv_gic_config_create" as ConfigCreate);
    let set_distributor = gic_fn!(c"hv_gic_config_set_distributor_base" as ConfigSetBase);
    let set_redistributor = gic_fn!(c"hv_gic_config_set_redistributor_base" as ConfigSetBase);
    // SAFETY: no arguments; the result is a retained object or NULL.
    let raw = unsafe { config_create() };
    if raw.is_null() {
        return Err(GicError::NoConfig);
    }
    let config = Config(raw);
    // SAFETY: `config.0` is a live GIC config object.
    let code = unsafe { set_distributor(config.0, GICD.start) };
    check("hv_gic_config_set_distributor_base", code)?;
    // SAFETY: as above.
    let code = unsafe { set_redistributor(config.0, GICR.start) };
    check("hv_gic_config_set_redistributor_base", code)?;
    Ok(config)
}

/// Puts the MSI frame at the ITS area, with the upper half of the SPIs, where it fits.
fn configure_msis(config: &Config) -> Result<(), GicError> {
    let set_msi_base = gic_fn!(c"hv_gic_config_set_msi_region_base" as ConfigSetBase);
    let set_msi_range = gic_fn!(c"hv_gic_config_set_msi_interrupt_range" as ConfigSetRange);
    let msi_size = gic_fn!(c"hv_gic_get_msi_region_size" as GetSize);
    let msi_alignment = gic_fn!(c"hv_gic_get_msi_region_base_alignment" as GetSize);
    let spi_range = gic_fn!(c"hv_gic_get_spi_interrupt_range" as GetRange);
    let msi_fits = check_fit(
        "MSI frame",
        parameter("hv_gic_get_msi_region_size", msi_size)?,
        parameter("hv_gic_get_msi_region_base_alignment", msi_alignment)?,
        &GIC_ITS,
    );
    let (mut spi_base, mut spi_count) = (0u32, 0u32);
    // SAFETY: both are live out-parameters.
    check("hv_gic_get_spi_interrupt_range", unsafe {
        spi_range(&mut spi_base, &mut spi_count)
    })?;
    match msi_fits {
        Ok(()) if spi_count >= 2 => {
            let msi_count = spi_count / 2;
            // SAFETY: `config.0` is a live GIC config object.
            let code = unsafe { set_msi_base(config.0, GIC_ITS.start) };
            check("hv_gic_config_set_msi_region_base", code)?;
            let first_msi = spi_base.saturating_add(spi_count - msi_count);
            // SAFETY: as above; the range lies inside the SPI range, as the framework requires.
            let code = unsafe { set_msi_range(config.0, first_msi, msi_count) };
            check("hv_gic_config_set_msi_interrupt_range", code)?;
        }
        Ok(()) => log::debug!("GIC without MSIs: only {spi_count} SPIs"),
        Err(error) => log::debug!("GIC without MSIs: {error}"),
    }
    Ok(())
}
