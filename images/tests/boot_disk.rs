//! The bzImage variant of the test guest and the disk firmware boots it from.

#[test]
fn the_bzimage_variant_has_a_relocatable_64_bit_boot_protocol_header() {
    let image = std::fs::read(images::bzimage()).expect("bzimage built");
    let u16_at = |o: usize| u16::from_le_bytes([image[o], image[o + 1]]);
    assert_eq!(u16_at(0x1fe), 0xaa55, "boot_flag");
    assert_eq!(&image[0x202..0x206], b"HdrS");
    assert!(u16_at(0x206) >= 0x0205, "protocol version");
    assert_eq!(image[0x234], 1, "relocatable_kernel");
    assert_eq!(u16_at(0x236) & 1, 1, "XLF_KERNEL_64");
    let setup_bytes = (usize::from(image[0x1f1]) + 1) * 512;
    // startup_64 sits 0x200 into the protected-mode part: cli; cld.
    assert_eq!(
        &image[setup_bytes + 0x200..setup_bytes + 0x202],
        &[0xfa, 0xfc]
    );
}

#[test]
fn the_boot_disk_has_an_efi_system_partition_with_the_guest_and_its_entry() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("boot.img");
    images::write_boot_disk(&path).expect("write");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        images::BOOT_DISK_SIZE
    );
    // The protective MBR's signature and the GPT header's.
    let raw = std::fs::read(&path).unwrap();
    assert_eq!(&raw[510..512], &[0x55, 0xaa]);
    assert_eq!(&raw[512..520], b"EFI PART");
    // The FAT's boot sector somewhere after the GPT, with the files on it.
    let start = (34..2048u64)
        .map(|lba| lba * 512)
        .find(|&o| raw[o as usize + 510..o as usize + 512] == [0x55, 0xaa])
        .expect("a FAT boot sector");
    let file = std::fs::File::open(&path).unwrap();
    let slice = fscommon::StreamSlice::new(file, start, raw.len() as u64).unwrap();
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).unwrap();
    let mut entry = String::new();
    fs.root_dir()
        .open_file("loader/entries/tiny.conf")
        .unwrap()
        .read_to_string(&mut entry)
        .unwrap();
    assert!(entry.contains("linux /tiny"), "{entry}");
    let mut kernel = Vec::new();
    fs.root_dir()
        .open_file("tiny")
        .unwrap()
        .read_to_end(&mut kernel)
        .unwrap();
    assert_eq!(kernel, std::fs::read(images::bzimage()).unwrap());
}
