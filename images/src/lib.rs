//! Guest images for tests and benchmarks.
//!
//! The tiny PVH test guest (`guest/tiny-guest.S`) is assembled by `build.rs`
//! with the system's GNU `as` and `ld` into Cargo's OUT_DIR. Cloud Hypervisor
//! and QEMU boot it directly as a kernel. It only does port I/O, which is what
//! runs under the nested KVM of these machines where stock Linux kernels hang.
//!
//! On COM1 it prints [`BANNER`], then echoes every byte it reads; after echoing
//! [`POWER_OFF_KEY`] it powers off, after echoing [`REBOOT_KEY`] it reboots (and
//! prints the banner again). The [`Variant::Halting`] build powers off right
//! after the banner, for benchmarks. Input sent before the banner may be lost:
//! firmware that runs first (QEMU's SeaBIOS) reads the serial port too.

mod boot_disk;
mod oci_layout;
mod spec;

pub use boot_disk::{write_boot_disk, write_boot_disk_of, BOOT_DISK_OPTIONS, BOOT_DISK_SIZE};
pub use oci_layout::{
    write_container_disk, write_kernel_boot_image, write_oci_layout, ImageFile, OciLayout,
};
pub use spec::{write_spec, TestGuestSpec, WriteSpecError};

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The line the guest prints on COM1 as soon as it runs.
pub const BANNER: &str = "TINY-GUEST-UP\r\n";
/// Echoed, then the guest powers off.
pub const POWER_OFF_KEY: u8 = b'q';
/// Echoed, then the guest reboots.
pub const REBOOT_KEY: u8 = b'r';
/// Where the guest is linked; PVH loaders want kernels at or above 1 MiB.
pub const LOAD_ADDRESS: u64 = 0x10_0000;

const INTERACTIVE_PATH: &str = concat!(env!("OUT_DIR"), "/tiny-guest.elf");
const HALTING_PATH: &str = concat!(env!("OUT_DIR"), "/tiny-guest-halting.elf");
const BZIMAGE_PATH: &str = concat!(env!("OUT_DIR"), "/tiny-guest.bzimage");
const HALTING_BZIMAGE_PATH: &str = concat!(env!("OUT_DIR"), "/tiny-guest-halting.bzimage");
const BOOT_SECTOR_PATH: &str = concat!(env!("OUT_DIR"), "/boot-sector.bin");

/// What the bzImage builds print before the command line their loader
/// passed them (a boot entry's `options`), on a line of its own.
pub const CMDLINE_LABEL: &str = "TINY-GUEST-CMDLINE: ";
/// The line the boot disk's MBR boot code prints before it powers off.
pub const BOOT_SECTOR_MARKER: &str = "TINY-BOOT-SECTOR: the BIOS booted this disk\r\n";

/// The boot disk's legacy boot code (at most 440 bytes, linked at 0x7c00).
pub fn boot_sector() -> &'static Path {
    Path::new(BOOT_SECTOR_PATH)
}

/// The interactive guest as a Linux bzImage (boot protocol 2.12, 64-bit
/// entry), for firmware that boots a kernel from a disk.
pub fn bzimage() -> &'static Path {
    Path::new(BZIMAGE_PATH)
}

/// Which build of the test guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Banner, then echo; `q` powers off, `r` reboots.
    Interactive,
    /// Banner, then power off.
    Halting,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Interactive, Variant::Halting];

    /// The built ELF file (absolute path in Cargo's OUT_DIR).
    pub fn path(self) -> &'static Path {
        match self {
            Variant::Interactive => Path::new(INTERACTIVE_PATH),
            Variant::Halting => Path::new(HALTING_PATH),
        }
    }

    /// The same build as a Linux bzImage (boot protocol 2.12, 64-bit entry)
    /// that also prints its command line.
    pub fn bzimage_path(self) -> &'static Path {
        match self {
            Variant::Interactive => Path::new(BZIMAGE_PATH),
            Variant::Halting => Path::new(HALTING_BZIMAGE_PATH),
        }
    }

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Interactive => "interactive",
            Variant::Halting => "halting",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL
            .into_iter()
            .find(|variant| variant.as_str() == s)
            .ok_or_else(|| {
                format!("unknown test guest variant {s:?}: expected \"interactive\" or \"halting\"")
            })
    }
}

/// The interactive test guest: banner, echo, `q` powers off, `r` reboots.
pub fn test_guest() -> &'static Path {
    Variant::Interactive.path()
}

/// The test guest that powers off right after its banner.
pub fn halting_guest() -> &'static Path {
    Variant::Halting.path()
}
