//! The specs `write_spec` produces are accepted by the project's own loader
//! for both hypervisors, and describe the VM the guest expects.

use domain_model::{load_path, Boot, Hypervisor, LoadOptions};
use images::{write_spec, TestGuestSpec, Variant};
use std::time::Duration;

#[test]
fn written_specs_load_into_a_64mi_one_vcpu_domain_booting_the_built_guest() {
    let dir = tempfile::tempdir().expect("temp dir");
    for hypervisor in [Hypervisor::CloudHypervisor, Hypervisor::Libvirt] {
        for variant in Variant::ALL {
            let path = write_spec(dir.path(), hypervisor, variant).expect("spec written");
            let domain = load_path(&path, &LoadOptions::default())
                .unwrap_or_else(|errors| panic!("{}: {errors}", path.display()));
            assert_eq!(domain.hypervisor, hypervisor);
            assert_eq!(domain.memory.guest, 64 << 20, "{hypervisor}/{variant}");
            assert_eq!(domain.cpu.vcpus(), 1, "{hypervisor}/{variant}");
            assert_eq!(
                domain.boot,
                Boot::Kernel {
                    kernel: variant.path().to_path_buf(),
                    initrd: None,
                    cmdline: None,
                    image: None,
                },
                "{hypervisor}/{variant}"
            );
            assert_eq!(domain.termination_grace_period, Duration::from_secs(5));
        }
    }
}

#[test]
fn grace_period_and_name_options_reach_the_domain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = TestGuestSpec::new(Hypervisor::CloudHypervisor, Variant::Halting)
        .name("bench-run")
        .termination_grace_period_seconds(0)
        .write(dir.path())
        .expect("spec written");
    let domain = load_path(&path, &LoadOptions::default())
        .unwrap_or_else(|errors| panic!("{}: {errors}", path.display()));
    assert_eq!(domain.name, "bench-run");
    assert_eq!(domain.termination_grace_period, Duration::ZERO);
}
