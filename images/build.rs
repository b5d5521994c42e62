//! Assembles and links the tiny PVH test guest (guest/tiny-guest.S) with the
//! system's GNU `as` and `ld`, three times: the interactive guest, the variant
//! that powers off right after its banner, and the interactive guest as a
//! Linux bzImage (for firmware that boots a kernel from a disk). All land in
//! OUT_DIR; `src/lib.rs` names them.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const SOURCE: &str = "guest/tiny-guest.S";
const LINKER_SCRIPT: &str = "guest/tiny-guest.ld";
const BZIMAGE_LINKER_SCRIPT: &str = "guest/tiny-guest-bzimage.ld";

struct Variant {
    output: &'static str,
    defsyms: &'static [&'static str],
    linker_script: &'static str,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        output: "tiny-guest.elf",
        defsyms: &[],
        linker_script: LINKER_SCRIPT,
    },
    Variant {
        output: "tiny-guest-halting.elf",
        defsyms: &["HALT_AFTER_BANNER=1"],
        linker_script: LINKER_SCRIPT,
    },
    Variant {
        output: "tiny-guest.bzimage",
        defsyms: &["BZIMAGE=1"],
        linker_script: BZIMAGE_LINKER_SCRIPT,
    },
    Variant {
        output: "tiny-guest-halting.bzimage",
        defsyms: &["BZIMAGE=1", "HALT_AFTER_BANNER=1"],
        linker_script: BZIMAGE_LINKER_SCRIPT,
    },
];

/// The legacy boot sector of the boot disk's protective MBR (16-bit real
/// mode, linked flat at 0x7c00 where BIOS loads it).
const BOOT_SECTOR_SOURCE: &str = "guest/boot-sector.S";

fn main() -> ExitCode {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed={LINKER_SCRIPT}");
    println!("cargo:rerun-if-changed={BZIMAGE_LINKER_SCRIPT}");
    println!("cargo:rerun-if-changed={BOOT_SECTOR_SOURCE}");
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Cargo shows a build script's stderr when it fails; make the cause
            // the first thing a reader sees.
            eprintln!("error: images: cannot build the tiny test guest: {message}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<(), String> {
    let out_dir =
        PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set (not run by cargo?)")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?);
    let source = manifest_dir.join(SOURCE);
    for variant in &VARIANTS {
        let linker_script = manifest_dir.join(variant.linker_script);
        let object = out_dir.join(variant.output).with_extension("o");
        let elf = out_dir.join(variant.output);

        let mut assemble = Command::new("as");
        assemble.arg("--64");
        for defsym in variant.defsyms {
            assemble.arg("--defsym").arg(defsym);
        }
        assemble.arg("-o").arg(&object).arg(&source);
        run(&mut assemble, "as", "the GNU assembler")?;

        let mut link = Command::new("ld");
        link.args([
            "-m",
            "elf_x86_64",
            "-nostdlib",
            "-static",
            "--build-id=none",
        ])
        .args(["-z", "noexecstack"])
        .arg("-T")
        .arg(&linker_script)
        .arg("-o")
        .arg(&elf)
        .arg(&object);
        run(&mut link, "ld", "the GNU linker")?;
    }
    let object = out_dir.join("boot-sector.o");
    run(
        Command::new("as")
            .arg("--32")
            .arg("-o")
            .arg(&object)
            .arg(manifest_dir.join(BOOT_SECTOR_SOURCE)),
        "as",
        "the GNU assembler",
    )?;
    run(
        Command::new("ld")
            .args(["-m", "elf_i386", "-nostdlib", "-static", "--build-id=none"])
            .args([
                "-Ttext",
                "0x7c00",
                "--oformat",
                "binary",
                "-e",
                "boot_sector",
            ])
            .arg("-o")
            .arg(out_dir.join("boot-sector.bin"))
            .arg(&object),
        "ld",
        "the GNU linker",
    )?;
    let size = std::fs::metadata(out_dir.join("boot-sector.bin"))
        .map_err(|e| format!("boot-sector.bin: {e}"))?
        .len();
    // The MBR's boot code area ends where the partition table begins.
    if size > 440 {
        return Err(format!(
            "the boot sector is {size} bytes: at most 440 fit before the partition table"
        ));
    }
    Ok(())
}

fn run(command: &mut Command, program: &str, what: &str) -> Result<(), String> {
    let output = command.output().map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            format!(
                "`{program}` ({what}) was not found in PATH; install GNU binutils \
                 (e.g. `apt-get install binutils`)"
            )
        } else {
            format!("cannot run `{program}` ({what}): {err}")
        }
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{}` failed ({}):\n{}",
        describe(command),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim_end()
    ))
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| Path::new(part).display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}
