//! Firmware identity and the boot source: kernel, EFI or BIOS.

use super::*;

impl Resolver<'_> {
    pub(super) fn firmware(&mut self, fw: Option<&api::Firmware>, uid: &str) -> Firmware {
        let uuid = match fw.and_then(|f| f.uuid.as_deref()) {
            Some(u) if !u.is_empty() => match Uuid::parse_str(u) {
                Ok(parsed) => parsed.hyphenated().to_string(),
                Err(e) => {
                    self.err(
                        "spec.domain.firmware.uuid",
                        format!("{u:?} is not a UUID: {e}"),
                    );
                    u.to_string()
                }
            },
            // KubeVirt gives a bare VMI a random UUID (SetDefaults_Firmware);
            // the launcher derives it from the uid instead so that it stays
            // the same across restarts of the same spec.
            _ => match Uuid::parse_str(uid) {
                Ok(parsed) => parsed.hyphenated().to_string(),
                Err(_) => Uuid::new_v5(&uid_namespace(), uid.as_bytes()).to_string(),
            },
        };
        Firmware {
            uuid,
            serial: fw.and_then(|f| f.serial.clone()).filter(|s| !s.is_empty()),
        }
    }

    pub(super) fn boot(
        &mut self,
        fw: Option<&api::Firmware>,
        smm: bool,
        arch: Architecture,
        smm_exempt: bool,
    ) -> Option<Boot> {
        let base = "spec.domain.firmware";
        let bootloader = fw.and_then(|f| f.bootloader.as_ref());
        let (bios, efi) = (
            bootloader.and_then(|b| b.bios.as_ref()),
            bootloader.and_then(|b| b.efi.as_ref()),
        );
        if bios.is_some() && efi.is_some() {
            self.err(format!("{base}.bootloader"), "set only one of bios or efi");
            return None;
        }
        if let Some(kb) = fw.and_then(|f| f.kernel_boot.as_ref()) {
            if efi.is_some() {
                self.err(
                    format!("{base}.kernelBoot"),
                    "kernel boot together with bootloader.efi is not supported yet",
                );
                return None;
            }
            return self.kernel_boot(kb);
        }
        let arm64 = arch == Architecture::Arm64;
        if arm64 && bios.is_some() {
            self.err(
                format!("{base}.bootloader.bios"),
                "arm64 has no BIOS: use bootloader.efi (the default on arm64) or kernelBoot",
            );
            return None;
        }
        match efi {
            Some(efi) if arm64 && efi.secure_boot == Some(true) => {
                self.err(
                    format!("{base}.bootloader.efi.secureBoot"),
                    "arm64 does not support EFI secure boot",
                );
                None
            }
            Some(efi) => {
                // Secure boot is KubeVirt's EFI default except on arm64.
                let secure_boot = efi.secure_boot.unwrap_or(!arm64);
                // KubeVirt's admitter exempts TDX: its firmware is stateless
                // with the secure-boot keys in ROM, so no SMM guards writes.
                // (SEV and SEV-SNP refuse secure boot in their own rules.)
                if secure_boot && !smm && !smm_exempt {
                    self.err(
                        format!("{base}.bootloader.efi.secureBoot"),
                        "EFI secure boot (on by default when efi is given) needs SMM: set \
                         spec.domain.features.smm: {} or secureBoot: false",
                    );
                }
                Some(Boot::Efi {
                    secure_boot,
                    persistent: efi.persistent.unwrap_or(false),
                })
            }
            None if arm64 => Some(Boot::Efi {
                secure_boot: false,
                persistent: false,
            }),
            None => Some(Boot::Bios),
        }
    }

    fn kernel_boot(&mut self, kb: &api::KernelBoot) -> Option<Boot> {
        let base = "spec.domain.firmware.kernelBoot";
        let Some(c) = kb.container.as_ref() else {
            self.err(
                format!("{base}.container"),
                "required: kernelBoot.container with kernelPath (and optionally initrdPath) \
                 names the kernel to boot",
            );
            return None;
        };
        let cbase = format!("{base}.container");
        let cmdline = kb.kernel_args.clone().filter(|a| !a.is_empty());
        if let Some(image) = c.image.as_deref().filter(|i| !i.is_empty()) {
            return self.kernel_from_image(&cbase, c, image, cmdline);
        }
        let mut ok = true;
        for (field, set) in [
            ("imagePullPolicy", c.image_pull_policy.is_some()),
            ("imagePullSecret", c.image_pull_secret.is_some()),
        ] {
            if set {
                self.err(
                    format!("{cbase}.{field}"),
                    "only applies together with image",
                );
                ok = false;
            }
        }
        let kernel = match c.kernel_path.as_deref() {
            Some(p) if !p.is_empty() => self.host_file(&format!("{cbase}.kernelPath"), p, "kernel"),
            _ => {
                self.err(
                    format!("{cbase}.kernelPath"),
                    "required: the kernel to boot, a host path (relative to the spec file)",
                );
                None
            }
        };
        let initrd = match c.initrd_path.as_deref() {
            None | Some("") => Ok(None),
            Some(p) => self
                .host_file(&format!("{cbase}.initrdPath"), p, "initrd")
                .map(Some)
                .ok_or(()),
        };
        match (kernel, initrd, ok) {
            (Some(kernel), Ok(initrd), true) => Some(Boot::Kernel {
                kernel,
                initrd,
                cmdline,
                image: None,
            }),
            _ => None,
        }
    }

    /// `kernelBoot.container.image`: in a pod, the files KubeVirt's
    /// kernel-boot init container copied to `<container disk dir>/kernel-boot/`
    /// (by base name); in a local run, paths inside the image the launcher
    /// pulls before the VM starts.
    fn kernel_from_image(
        &mut self,
        cbase: &str,
        c: &api::KernelBootContainer,
        image: &str,
        cmdline: Option<String>,
    ) -> Option<Boot> {
        let in_image = |this: &mut Self,
                        field: &str,
                        p: Option<&str>|
         -> Result<Option<PathBuf>, ()> {
            match p {
                None | Some("") => Ok(None),
                Some(p) if p.starts_with('/') && !p.split('/').any(|c| c == "..") => {
                    Ok(Some(PathBuf::from(p)))
                }
                Some(p) => {
                    this.err(
                        format!("{cbase}.{field}"),
                        format!("{p:?}: expected an absolute path inside the image, without `..`"),
                    );
                    Err(())
                }
            }
        };
        let kernel = in_image(self, "kernelPath", c.kernel_path.as_deref());
        let initrd = in_image(self, "initrdPath", c.initrd_path.as_deref());
        let image = self.image_ref(
            cbase,
            image,
            None,
            c.image_pull_policy.as_deref(),
            c.image_pull_secret.as_deref(),
        );
        let (kernel, initrd, image) = match (kernel, initrd, image) {
            (Ok(Some(kernel)), Ok(initrd), Some(image)) => (kernel, initrd, image),
            (Ok(None), _, _) => {
                self.err(
                    format!("{cbase}.kernelPath"),
                    "required: the kernel's path inside the image",
                );
                return None;
            }
            _ => return None,
        };
        if self.opts.container_disk_layout == crate::load::ContainerDiskLayout::Pod {
            let dir = std::path::absolute(&self.opts.container_disk_dir)
                .unwrap_or_else(|_| self.opts.container_disk_dir.clone())
                .join("kernel-boot");
            let copied = |p: &Path| dir.join(p.file_name().unwrap_or_default());
            return Some(Boot::Kernel {
                kernel: copied(&kernel),
                initrd: initrd.as_deref().map(copied),
                cmdline,
                image: None,
            });
        }
        Some(Boot::Kernel {
            kernel,
            initrd,
            cmdline,
            image: Some(image),
        })
    }

    /// An existing regular file named by the spec.
    fn host_file(&mut self, path: &str, p: &str, what: &str) -> Option<PathBuf> {
        let abs = self.absolute(p);
        match std::fs::metadata(&abs) {
            Ok(m) if m.is_file() => Some(abs),
            Ok(_) => {
                self.err(
                    path,
                    format!("{what} {} is not a regular file", abs.display()),
                );
                None
            }
            Err(e) => {
                self.err(path, format!("cannot use {what} {}: {e}", abs.display()));
                None
            }
        }
    }
}
