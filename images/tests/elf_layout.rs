//! The built guests are what PVH loaders (Cloud Hypervisor's linux-loader,
//! QEMU's -kernel) accept: ELF64 x86-64, loaded at 1 MiB, with a Xen
//! PHYS32_ENTRY note naming an entry point inside the executable code.

use images::{Variant, BANNER, LOAD_ADDRESS};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::LittleEndian;

const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

struct Layout {
    entry: u64,
    pvh_entries: Vec<u32>,
    note_align: Vec<u64>,
    /// (physical address, memory size, executable)
    loads: Vec<(u64, u64, bool)>,
}

fn layout(data: &[u8]) -> Layout {
    let file =
        ElfFile64::<LittleEndian>::parse(data).expect("the guest is an ELF64 little-endian file");
    let endian = file.endian();
    let header = file.elf_header();
    assert_eq!(header.e_machine(endian), elf::EM_X86_64, "machine");
    assert_eq!(header.e_type(endian), elf::ET_EXEC, "file type");

    let mut result = Layout {
        entry: header.e_entry(endian),
        pvh_entries: Vec::new(),
        note_align: Vec::new(),
        loads: Vec::new(),
    };
    for phdr in file.elf_program_headers() {
        let kind = phdr.p_type(endian);
        if kind == elf::PT_LOAD {
            let executable = phdr.p_flags(endian).0 & elf::PF_X.0 != 0;
            result
                .loads
                .push((phdr.p_paddr(endian), phdr.p_memsz(endian), executable));
        } else if kind == elf::PT_NOTE {
            result.note_align.push(phdr.p_align(endian));
            let notes = phdr
                .notes(endian, data)
                .expect("note segment is readable")
                .expect("PT_NOTE has notes");
            for note in notes {
                let note = note.expect("well-formed note");
                if note.name() == b"Xen" && note.n_type(endian).0 == XEN_ELFNOTE_PHYS32_ENTRY {
                    let desc: [u8; 4] = note
                        .desc()
                        .get(..4)
                        .and_then(|bytes| bytes.try_into().ok())
                        .expect("PHYS32_ENTRY descriptor holds at least 4 bytes");
                    result.pvh_entries.push(u32::from_le_bytes(desc));
                }
            }
        }
    }
    result
}

fn read_guest(variant: Variant) -> Vec<u8> {
    let path = variant.path();
    std::fs::read(path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

#[test]
fn both_guests_carry_one_xen_pvh_entry_note_pointing_into_their_code() {
    for variant in Variant::ALL {
        let layout = layout(&read_guest(variant));
        assert_eq!(
            layout.pvh_entries.len(),
            1,
            "{variant}: exactly one Xen PHYS32_ENTRY note"
        );
        let pvh_entry = u64::from(layout.pvh_entries[0]);
        assert_eq!(
            pvh_entry, layout.entry,
            "{variant}: note entry == ELF entry"
        );
        assert!(
            layout
                .loads
                .iter()
                .any(|&(start, size, exec)| exec && (start..start + size).contains(&pvh_entry)),
            "{variant}: entry {pvh_entry:#x} lies in an executable loaded segment: {:?}",
            layout.loads
        );
        // QEMU finds a note's descriptor by aligning the name to the segment's
        // p_align, so anything but 4 would make it read the wrong bytes.
        assert_eq!(layout.note_align, vec![4], "{variant}: PT_NOTE alignment");
    }
}

#[test]
fn both_guests_are_linked_at_one_mebibyte() {
    for variant in Variant::ALL {
        let layout = layout(&read_guest(variant));
        let lowest = layout.loads.iter().map(|&(start, _, _)| start).min();
        assert_eq!(
            lowest,
            Some(LOAD_ADDRESS),
            "{variant}: lowest PT_LOAD address"
        );
        assert_eq!(
            layout.entry, LOAD_ADDRESS,
            "{variant}: entry at the start of .text"
        );
    }
}

#[test]
fn both_guests_contain_the_banner() {
    for variant in Variant::ALL {
        let data = read_guest(variant);
        assert!(
            data.windows(BANNER.len()).any(|w| w == BANNER.as_bytes()),
            "{variant}: banner bytes present"
        );
    }
}

#[test]
fn halting_and_interactive_guests_differ() {
    assert_ne!(
        read_guest(Variant::Interactive),
        read_guest(Variant::Halting),
        "HALT_AFTER_BANNER must change the code"
    );
}
