//! A disk that firmware boots the tiny guest from, as a cloud image's disk
//! is booted: a GPT with one EFI system partition (FAT) holding a Boot
//! Loader Specification entry (`/loader/loader.conf`,
//! `/loader/entries/tiny.conf`) whose `linux` is the guest as a bzImage
//! (`/tiny`). rust-hypervisor-firmware under Cloud Hypervisor reads exactly
//! this (it prints `Found EFI partition`, `Filesystem ready`, `Jumping to
//! kernel`), so a test that sees the guest's banner knows a real firmware
//! read the disk the launcher attached; the entry's `options`
//! ([`BOOT_DISK_OPTIONS`]) come back on the guest's command line, which it
//! prints. The protective MBR carries boot code for a legacy BIOS
//! (`guest/boot-sector.S`): SeaBIOS under QEMU runs it, it prints
//! [`crate::BOOT_SECTOR_MARKER`] and powers off.

use std::io::{self, Write};
use std::path::Path;

/// Size of the disk image: the smallest FAT32-friendly layout is not
/// needed; FAT16 in 32 MiB holds the guest many times over.
pub const BOOT_DISK_SIZE: u64 = 40 << 20;
const SECTOR: u64 = 512;

fn other(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// The boot entry's `options`: the guest's command line when firmware
/// boots it from the disk.
pub const BOOT_DISK_OPTIONS: &str = "tiny.source=boot-loader-entry";

/// Writes the boot disk of the interactive guest to `path`.
pub fn write_boot_disk(path: &Path) -> io::Result<()> {
    write_boot_disk_of(path, crate::Variant::Interactive)
}

/// Writes the boot disk of `variant` to `path` (a sparse raw image,
/// replaced if present).
pub fn write_boot_disk_of(path: &Path, variant: crate::Variant) -> io::Result<()> {
    let file = std::fs::File::create(path)?;
    file.set_len(BOOT_DISK_SIZE)?;
    drop(file);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let sectors = u32::try_from(BOOT_DISK_SIZE / SECTOR - 1).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(sectors)
        .overwrite_lba0(&mut file)
        .map_err(|e| other("protective MBR", e))?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(Box::new(file), None)
        .map_err(|e| other("GPT", e))?;
    disk.update_partitions(std::collections::BTreeMap::new())
        .map_err(|e| other("GPT", e))?;
    let id = disk
        .add_partition("EFI", 32 << 20, gpt::partition_types::EFI, 0, None)
        .map_err(|e| other("EFI system partition", e))?;
    let part = disk
        .partitions()
        .get(&id)
        .cloned()
        .ok_or_else(|| other("EFI system partition", "not in the table"))?;
    disk.write().map_err(|e| other("GPT", e))?;
    // The MBR's boot code area (before the partition table at 446).
    {
        use std::io::{Seek, SeekFrom};
        let code = std::fs::read(crate::boot_sector())?;
        if code.len() > 440 {
            return Err(other(
                "boot sector",
                format!("{} bytes, 440 fit", code.len()),
            ));
        }
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&code)?;
    }

    let start = part.first_lba * SECTOR;
    let end = (part.last_lba + 1) * SECTOR;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut slice = fscommon::StreamSlice::new(file, start, end)?;
    fatfs::format_volume(&mut slice, fatfs::FormatVolumeOptions::new())?;
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new())?;
    let root = fs.root_dir();
    root.create_dir("loader")?;
    root.create_dir("loader/entries")?;
    root.create_file("loader/loader.conf")?
        .write_all(b"default tiny\ntimeout 0\n")?;
    root.create_file("loader/entries/tiny.conf")?.write_all(
        format!("title tiny test guest\nlinux /tiny\noptions {BOOT_DISK_OPTIONS}\n").as_bytes(),
    )?;
    root.create_file("tiny")?
        .write_all(&std::fs::read(variant.bzimage_path())?)?;
    Ok(())
}
