//! Tells shell scripts where the built test guest is, and writes VMI specs
//! that boot it:
//!
//!   test-guest-path [interactive|halting]        prints the guest's path
//!   test-guest-path spec --hypervisor NAME --out DIR [--variant V] [--grace S] [--name N]
//!                                                writes a spec, prints its path
//!   test-guest-path container-disk --out DIR [--tag T] [--variant V]
//!                                                writes the boot disk as a containerDisk
//!                                                OCI layout, prints its manifest digest
//!   test-guest-path kernel-image --out DIR [--tag T]
//!                                                the same for a kernel-boot image

use clap::{Parser, Subcommand};
use domain_model::Hypervisor;
use images::{TestGuestSpec, Variant};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Print the path of the built tiny test guest, or write a VMI spec that boots it")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the path of the interactive guest (banner, echo, `q` off, `r` reboot).
    Interactive,
    /// Print the path of the guest that powers off right after its banner.
    Halting,
    /// Write a VMI spec booting the guest into DIR and print the spec's path.
    Spec {
        /// `spec.hypervisor`: cloud-hypervisor or libvirt.
        #[arg(long)]
        hypervisor: Hypervisor,
        /// Directory to write `<name>-<hypervisor>.yaml` into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// interactive or halting.
        #[arg(long, default_value = "interactive")]
        variant: Variant,
        /// `spec.terminationGracePeriodSeconds`.
        #[arg(long, value_name = "SECONDS")]
        grace: Option<u32>,
        /// `metadata.name` (default: test-guest or test-guest-halting).
        #[arg(long)]
        name: Option<String>,
    },
    /// Write the boot disk as a KubeVirt containerDisk image (an OCI image
    /// layout directory, for `skopeo copy oci:DIR:TAG docker://...`) and
    /// print its manifest digest.
    ContainerDisk {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value = "1")]
        tag: String,
        /// interactive or halting.
        #[arg(long, default_value = "interactive")]
        variant: Variant,
    },
    /// Write the halting guest as a kernel-boot image (`/boot/vmlinuz`) in
    /// an OCI image layout directory and print its manifest digest.
    KernelImage {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value = "1")]
        tag: String,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command.unwrap_or(Command::Interactive) {
        Command::Interactive => println!("{}", images::test_guest().display()),
        Command::Halting => println!("{}", images::halting_guest().display()),
        Command::ContainerDisk { out, tag, variant } => {
            match images::write_container_disk(&out, &tag, variant) {
                Ok((layout, _)) => println!("{}", layout.manifest_digest),
                Err(err) => {
                    eprintln!("test-guest-path: {}: {err}", out.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        Command::KernelImage { out, tag } => match images::write_kernel_boot_image(&out, &tag) {
            Ok(layout) => println!("{}", layout.manifest_digest),
            Err(err) => {
                eprintln!("test-guest-path: {}: {err}", out.display());
                return ExitCode::FAILURE;
            }
        },
        Command::Spec {
            hypervisor,
            out,
            variant,
            grace,
            name,
        } => {
            let mut spec = TestGuestSpec::new(hypervisor, variant);
            if let Some(seconds) = grace {
                spec = spec.termination_grace_period_seconds(seconds);
            }
            if let Some(name) = name {
                spec = spec.name(name);
            }
            match spec.write(&out) {
                Ok(path) => println!("{}", path.display()),
                Err(err) => {
                    eprintln!("test-guest-path: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}
