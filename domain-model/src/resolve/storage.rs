//! Volumes, their host image files, and the disks that use them.

use super::*;
use crate::GeneratedFile;

/// What a cloud-init image says about the VM.
pub(super) struct CloudInitIdentity<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    /// The firmware (SMBIOS) UUID.
    pub uuid: &'a str,
    pub hostname: &'a str,
}

#[derive(Clone, Copy)]
enum CloudInitKind {
    NoCloud,
    ConfigDrive,
}

impl CloudInitKind {
    fn field(self) -> &'static str {
        match self {
            CloudInitKind::NoCloud => "cloudInitNoCloud",
            CloudInitKind::ConfigDrive => "cloudInitConfigDrive",
        }
    }

    /// The volume id cloud-init looks for.
    fn label(self) -> &'static str {
        match self {
            CloudInitKind::NoCloud => "cidata",
            CloudInitKind::ConfigDrive => "config-2",
        }
    }
}

impl Resolver<'_> {
    pub(super) fn volumes(
        &mut self,
        volumes: &[api::Volume],
        vm: &CloudInitIdentity<'_>,
        shared: &BTreeSet<String>,
    ) -> Vec<Option<DiskSource>> {
        let mut names = BTreeSet::new();
        let mut out = Vec::with_capacity(volumes.len());
        for (i, v) in volumes.iter().enumerate() {
            let path = format!("spec.volumes[{i}]");
            // The name becomes a directory name for containerDisk images.
            let name_ok = is_dns_label(&v.name, 63);
            if v.name.is_empty() {
                self.err(format!("{path}.name"), "required: a name for the volume");
            } else if !name_ok {
                self.err(
                    format!("{path}.name"),
                    format!(
                        "{:?} is not a valid volume name: use lowercase letters, digits and '-' \
                         (at most 63 characters)",
                        v.name
                    ),
                );
            } else if !names.insert(v.name.as_str()) {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate volume name {:?}", v.name),
                );
            }
            // Shared as a filesystem, not a disk: see `filesystems`.
            if shared.contains(&v.name) {
                out.push(None);
                continue;
            }
            let prefix = format!("{path}.");
            let has_other_key = self.unknown_paths.iter().any(|p| p.starts_with(&prefix));
            let present: Vec<&str> = [
                ("hostDisk", v.host_disk.is_some()),
                ("containerDisk", v.container_disk.is_some()),
                ("emptyDisk", v.empty_disk.is_some()),
                ("cloudInitNoCloud", v.cloud_init_no_cloud.is_some()),
                ("cloudInitConfigDrive", v.cloud_init_config_drive.is_some()),
                ("persistentVolumeClaim", v.persistent_volume_claim.is_some()),
                ("dataVolume", v.data_volume.is_some()),
                ("ephemeral", v.ephemeral.is_some()),
                ("configMap", v.config_map.is_some()),
                ("secret", v.secret.is_some()),
                ("downwardAPI", v.downward_api.is_some()),
                ("serviceAccount", v.service_account.is_some()),
                ("sysprep", v.sysprep.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, set)| set.then_some(k))
            .collect();
            let source = if present.len() > 1 {
                self.err(
                    &path,
                    format!("set only one volume source, not {}", present.join(" and ")),
                );
                None
            } else if has_other_key {
                None
            } else if let Some(hd) = &v.host_disk {
                self.host_disk(&path, hd)
            } else if !name_ok {
                None
            } else if let Some(cd) = &v.container_disk {
                self.container_disk(&path, i, &v.name, vm.uid, cd)
            } else if let Some(ed) = &v.empty_disk {
                self.empty_disk(&path, &v.name, vm.uid, ed)
            } else if let Some(ci) = &v.cloud_init_no_cloud {
                self.cloud_init(&path, &v.name, vm, CloudInitKind::NoCloud, ci)
            } else if let Some(ci) = &v.cloud_init_config_drive {
                self.cloud_init(&path, &v.name, vm, CloudInitKind::ConfigDrive, ci)
            } else if let Some(pvc) = &v.persistent_volume_claim {
                let field = format!("{path}.persistentVolumeClaim");
                if pvc.claim_name.is_empty() {
                    self.err(format!("{field}.claimName"), "required: the claim's name");
                }
                self.hotpluggable(&field, pvc.hotpluggable);
                self.claim(&path, &field, &v.name)
            } else if let Some(dv) = &v.data_volume {
                let field = format!("{path}.dataVolume");
                if dv.name.is_empty() {
                    self.err(format!("{field}.name"), "required: the DataVolume's name");
                }
                self.hotpluggable(&field, dv.hotpluggable);
                self.claim(&path, &field, &v.name)
            } else if let Some(eph) = &v.ephemeral {
                let field = format!("{path}.ephemeral");
                match &eph.persistent_volume_claim {
                    None => {
                        self.err(
                            format!("{field}.persistentVolumeClaim"),
                            "required: the claim",
                        );
                        None
                    }
                    Some(_) => self.claim(&path, &field, &v.name).map(|claim| DiskSource {
                        path: self.generated_path_ext(&v.name, vm.uid, "qcow2"),
                        format: ImageFormat::Qcow2,
                        // The overlay is a file, whatever backs it.
                        block_device: false,
                        generated: Some(crate::Generated::Overlay {
                            backing: claim.path,
                            backing_format: ImageFormat::Raw,
                        }),
                        ..claim
                    }),
                }
            } else if let Some(cm) = &v.config_map {
                let dir = self.opts.mounts_dir.join("config-map").join(&v.name);
                self.iso_from_dir(
                    &path,
                    &v.name,
                    vm.uid,
                    dir,
                    cm.volume_label.as_deref(),
                    cm.optional,
                )
            } else if let Some(sec) = &v.secret {
                let dir = self.opts.mounts_dir.join("secret").join(&v.name);
                self.iso_from_dir(
                    &path,
                    &v.name,
                    vm.uid,
                    dir,
                    sec.volume_label.as_deref(),
                    sec.optional,
                )
            } else if let Some(d) = &v.downward_api {
                let dir = self.opts.mounts_dir.join("downwardapi").join(&v.name);
                self.iso_from_dir(
                    &path,
                    &v.name,
                    vm.uid,
                    dir,
                    d.volume_label.as_deref(),
                    false,
                )
            } else if v.service_account.is_some() {
                let dir = self.opts.service_account_dir.clone();
                self.iso_from_dir(&path, &v.name, vm.uid, dir, None, false)
            } else if let Some(sp) = &v.sysprep {
                self.sysprep(&path, &v.name, vm.uid, sp)
            } else {
                self.err(
                    &path,
                    "no volume source: set one of hostDisk, containerDisk, emptyDisk, \
                     cloudInitNoCloud, cloudInitConfigDrive, persistentVolumeClaim, dataVolume, \
                     ephemeral, configMap, secret, downwardAPI, serviceAccount or sysprep",
                );
                None
            };
            out.push(source);
        }
        out
    }

    fn disk_options(&mut self, path: &str, d: &api::Disk) -> crate::DiskOptions {
        let mut o = crate::DiskOptions {
            shareable: d.shareable.unwrap_or(false),
            ..Default::default()
        };
        match d.cache.as_deref() {
            None | Some("") => {}
            Some(c @ ("none" | "writethrough" | "writeback")) => o.cache = Some(c.to_string()),
            Some(other) => self.err(
                format!("{path}.cache"),
                format!("{other:?}: expected none, writethrough or writeback"),
            ),
        }
        match d.io.as_deref() {
            None | Some("") => {}
            Some(i @ ("native" | "threads")) => o.io = Some(i.to_string()),
            Some(other) => self.err(
                format!("{path}.io"),
                format!("{other:?}: expected native or threads"),
            ),
        }
        if let Some(bs) = &d.block_size {
            let field = format!("{path}.blockSize");
            match (&bs.custom, &bs.match_volume) {
                (Some(_), Some(_)) => self.err(&field, "set custom or matchVolume, not both"),
                (None, Some(_)) => self.err(
                    format!("{field}.matchVolume"),
                    "not supported yet: give the sizes with blockSize.custom",
                ),
                (None, None) => self.err(&field, "required: custom (logical and physical)"),
                (Some(c), None) => {
                    let ok = |n: Option<u32>| {
                        n.filter(|n| n.is_power_of_two() && (512..=65536).contains(n))
                    };
                    match (ok(c.logical), ok(c.physical)) {
                        (Some(l), Some(p)) if l <= p => o.block_size = Some((l, p)),
                        (Some(_), Some(_)) => self.err(
                            format!("{field}.custom"),
                            "logical must not be larger than physical",
                        ),
                        _ => self.err(
                            format!("{field}.custom"),
                            "logical and physical are required: powers of two from 512 to 65536",
                        ),
                    }
                }
            }
        }
        o
    }

    /// `filesystems`: each names a volume whose directory the guest gets
    /// over virtio-fs, as the pod mounts it.
    pub(super) fn filesystems(
        &mut self,
        filesystems: &[api::Filesystem],
        volumes: &[api::Volume],
        disks: &[api::Disk],
    ) -> Vec<crate::Filesystem> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, f) in filesystems.iter().enumerate() {
            let path = format!("spec.domain.devices.filesystems[{i}]");
            if f.name.is_empty() {
                self.err(
                    format!("{path}.name"),
                    "required: the name of a volume to share",
                );
                continue;
            }
            if !seen.insert(f.name.as_str()) {
                self.err(
                    format!("{path}.name"),
                    format!("volume {:?} is shared twice", f.name),
                );
                continue;
            }
            if f.virtiofs.is_none() {
                self.err(&path, "required: virtiofs: {} (the only filesystem type)");
                continue;
            }
            if let Some(k) = disks.iter().position(|d| d.name == f.name) {
                self.err(
                    format!("spec.domain.devices.disks[{k}].name"),
                    format!(
                        "volume {:?} is shared as a filesystem; it cannot also be a disk",
                        f.name
                    ),
                );
                continue;
            }
            let Some((j, v)) = volumes.iter().enumerate().find(|(_, v)| v.name == f.name) else {
                self.err(
                    format!("{path}.name"),
                    format!("no volume named {:?} in spec.volumes", f.name),
                );
                continue;
            };
            let mounts = &self.opts.mounts_dir;
            let dir = if v.persistent_volume_claim.is_some() || v.data_volume.is_some() {
                mounts.join("vmi-disks").join(&v.name)
            } else if v.config_map.is_some() {
                mounts.join("config-map").join(&v.name)
            } else if v.secret.is_some() {
                mounts.join("secret").join(&v.name)
            } else if v.downward_api.is_some() {
                mounts.join("downwardapi").join(&v.name)
            } else if v.service_account.is_some() {
                self.opts.service_account_dir.clone()
            } else {
                self.err(
                    format!("spec.volumes[{j}]"),
                    "only persistentVolumeClaim, dataVolume, configMap, secret, downwardAPI and \
                     serviceAccount volumes can be shared as a filesystem",
                );
                continue;
            };
            if !dir.is_dir() {
                self.err(
                    format!("spec.volumes[{j}]"),
                    format!(
                        "{} is not mounted (the pod mounts the volume there; locally, make the \
                         directory or pass --mounts-dir)",
                        dir.display()
                    ),
                );
                continue;
            }
            out.push(crate::Filesystem {
                spec_path: path,
                name: f.name.clone(),
                source_dir: dir,
            });
        }
        out
    }

    fn hotpluggable(&mut self, field: &str, hotpluggable: bool) {
        if hotpluggable {
            self.err(
                format!("{field}.hotpluggable"),
                "hotplugged volumes are not supported yet: attach them at run time with \
                 `ch-launcher attach-disk`",
            );
        }
    }

    /// A PVC or DataVolume as virt-controller hands it to the pod: the file
    /// `<mounts>/vmi-disks/<volume>/disk.img` (filesystem mode), else, in a
    /// pod, the block device `/dev/<volume>` (block mode).
    fn claim(&mut self, path: &str, field: &str, volume: &str) -> Option<DiskSource> {
        let file = self
            .opts
            .mounts_dir
            .join("vmi-disks")
            .join(volume)
            .join("disk.img");
        let source = |p: PathBuf, block_device: bool| DiskSource {
            spec_path: path.to_string(),
            path: p,
            // What the claim holds is the guest's: never probed.
            format: ImageFormat::Raw,
            create_with_capacity: None,
            block_device,
            generated: None,
        };
        if is_file(&file) {
            return Some(source(file, false));
        }
        let device = PathBuf::from("/dev").join(volume);
        if self.opts.block_pvcs && is_block_device(&device) {
            return Some(source(device, true));
        }
        self.err(
            field,
            format!(
                "the claim is not mounted: no {} (filesystem mode){}; virt-controller mounts \
                 it there in a VM pod; locally, put the image there or pass --mounts-dir",
                file.display(),
                if self.opts.block_pvcs {
                    format!(" and no block device {}", device.display())
                } else {
                    String::new()
                }
            ),
        );
        None
    }

    /// `sysprep`: KubeVirt mounts the ConfigMap or Secret at
    /// `<mounts>/sysprep/<volume>/` and gives the guest its files as an ISO
    /// labelled `unattendCD`; it must hold `autounattend.xml` or
    /// `unattend.xml` (any case), as KubeVirt checks.
    fn sysprep(
        &mut self,
        path: &str,
        volume: &str,
        uid: &str,
        sp: &api::SysprepSource,
    ) -> Option<DiskSource> {
        let field = format!("{path}.sysprep");
        match (&sp.config_map, &sp.secret) {
            (Some(_), Some(_)) => {
                self.err(&field, "set configMap or secret, not both");
                return None;
            }
            (None, None) => {
                self.err(
                    &field,
                    "required: configMap or secret naming the answer files",
                );
                return None;
            }
            (Some(r), None) | (None, Some(r)) if r.name.is_empty() => {
                let which = if sp.config_map.is_some() {
                    "configMap"
                } else {
                    "secret"
                };
                self.err(
                    format!("{field}.{which}.name"),
                    "required: the object's name",
                );
                return None;
            }
            _ => {}
        }
        let dir = self.opts.mounts_dir.join("sysprep").join(volume);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let has_answer_file = entries.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().to_ascii_lowercase();
                name == "autounattend.xml" || name == "unattend.xml"
            });
            if !has_answer_file {
                self.err(
                    &field,
                    format!(
                        "{} holds neither autounattend.xml nor unattend.xml",
                        dir.display()
                    ),
                );
                return None;
            }
        }
        self.iso_from_dir(path, volume, uid, dir, Some("unattendCD"), false)
    }

    /// An ISO of a mounted directory's files, made at start.
    fn iso_from_dir(
        &mut self,
        path: &str,
        volume: &str,
        uid: &str,
        dir: PathBuf,
        label: Option<&str>,
        optional: bool,
    ) -> Option<DiskSource> {
        if !optional && !dir.is_dir() {
            self.err(
                path,
                format!(
                    "{} is not mounted (Kubernetes mounts the volume there in a VM pod; \
                     locally, put the files there or pass --mounts-dir)",
                    dir.display()
                ),
            );
            return None;
        }
        // A volume id is at most 32 characters.
        let label: String = label.unwrap_or(volume).chars().take(32).collect();
        Some(DiskSource {
            spec_path: path.to_string(),
            path: self.generated_path_ext(volume, uid, "iso"),
            format: ImageFormat::Raw,
            create_with_capacity: None,
            block_device: false,
            generated: Some(crate::Generated::IsoFromDir {
                dir,
                label,
                optional,
            }),
        })
    }

    /// Where a launcher-made image of volume `volume` lives:
    /// `<ephemeral disk dir>/<uid>/<volume>.img`.
    fn generated_path(&self, volume: &str, uid: &str) -> std::path::PathBuf {
        self.generated_path_ext(volume, uid, "img")
    }

    fn generated_path_ext(&self, volume: &str, uid: &str, ext: &str) -> std::path::PathBuf {
        let dir = std::path::absolute(&self.opts.ephemeral_disk_dir)
            .unwrap_or_else(|_| self.opts.ephemeral_disk_dir.clone());
        dir.join(uid).join(format!("{volume}.{ext}"))
    }

    fn empty_disk(
        &mut self,
        path: &str,
        volume: &str,
        uid: &str,
        ed: &api::EmptyDisk,
    ) -> Option<DiskSource> {
        let field = format!("{path}.emptyDisk.capacity");
        let Some(q) = &ed.capacity else {
            self.err(field, "required: the disk's size, e.g. 2Gi");
            return None;
        };
        let capacity = self.quantity_bytes(&field, q)?;
        if capacity == 0 {
            self.err(field, "must be more than 0");
            return None;
        }
        Some(DiskSource {
            spec_path: path.to_string(),
            path: self.generated_path(volume, uid),
            format: ImageFormat::Raw,
            create_with_capacity: None,
            block_device: false,
            generated: Some(crate::Generated::Empty { capacity }),
        })
    }

    /// `cloudInitNoCloud` or `cloudInitConfigDrive` as the files of the
    /// image KubeVirt makes for it.
    fn cloud_init(
        &mut self,
        path: &str,
        volume: &str,
        vm: &CloudInitIdentity<'_>,
        kind: CloudInitKind,
        ci: &api::CloudInitSource,
    ) -> Option<DiskSource> {
        let base = format!("{path}.{}", kind.field());
        let mut user_data = self.one_of_text(
            &base,
            ("userData", ci.user_data.as_deref()),
            ("userDataBase64", ci.user_data_base64.as_deref()),
        );
        let mut network_data = self.one_of_text(
            &base,
            ("networkData", ci.network_data.as_deref()),
            ("networkDataBase64", ci.network_data_base64.as_deref()),
        );
        // As virt-controller mounts them: the Secret of a cloud-init volume
        // at <secret dir>/<volume>/, keys userdata/userData and
        // networkdata/networkData. The Secret wins over inline data, as
        // KubeVirt's resolveNoCloudSecrets lets it.
        if ci.secret_ref.is_some() {
            if let Some(text) = self.secret_file(
                &format!("{base}.secretRef"),
                volume,
                &["userdata", "userData"],
            ) {
                user_data = Ok(Some(text));
            }
        }
        if ci.network_data_secret_ref.is_some() {
            if let Some(text) = self.secret_file(
                &format!("{base}.networkDataSecretRef"),
                volume,
                &["networkdata", "networkData"],
            ) {
                network_data = Ok(Some(text));
            }
        }
        let (user_data, network_data) = match (user_data, network_data) {
            (Err(()), _) | (_, Err(())) => return None,
            (Ok(None), Ok(None)) => {
                if ci.secret_ref.is_none() && ci.network_data_secret_ref.is_none() {
                    self.err(
                        &base,
                        "required: userData, userDataBase64, networkData, networkDataBase64, \
                         secretRef or networkDataSecretRef",
                    );
                }
                return None;
            }
            (Ok(u), Ok(n)) => (u.unwrap_or_default(), n),
        };
        let file = |path: &str, contents: String| GeneratedFile {
            path: path.to_string(),
            contents,
        };
        let mut files;
        match kind {
            CloudInitKind::NoCloud => {
                // KubeVirt's NoCloudMetadata: the instance id is the
                // firmware UUID, the hostname the VMI's name.
                let meta = serde_json::json!({
                    "instance-id": vm.uuid,
                    "local-hostname": vm.hostname,
                });
                files = vec![
                    file("user-data", user_data),
                    file("meta-data", format!("{meta:#}\n")),
                ];
                if let Some(n) = network_data {
                    files.push(file("network-config", n));
                }
            }
            CloudInitKind::ConfigDrive => {
                // KubeVirt's ConfigDriveMetadata: the OpenStack layout.
                let meta = serde_json::json!({
                    "instance_id": format!("{}.{}", vm.name, vm.namespace),
                    "uuid": vm.uuid,
                    "hostname": vm.hostname,
                });
                files = vec![
                    file("openstack/latest/user_data", user_data),
                    file("openstack/latest/meta_data.json", format!("{meta:#}\n")),
                ];
                if let Some(n) = network_data {
                    files.push(file("openstack/latest/network_data.json", n));
                }
            }
        }
        Some(DiskSource {
            spec_path: path.to_string(),
            path: self.generated_path(volume, vm.uid),
            format: ImageFormat::Raw,
            create_with_capacity: None,
            block_device: false,
            generated: Some(crate::Generated::CloudInit {
                label: kind.label().to_string(),
                files,
            }),
        })
    }

    /// The first of `keys` in the mounted Secret of cloud-init volume
    /// `volume`; `None` once reported.
    fn secret_file(&mut self, field: &str, volume: &str, keys: &[&str]) -> Option<String> {
        let dir = self.opts.mounts_dir.join("secret").join(volume);
        for key in keys {
            match std::fs::read(dir.join(key)) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => return Some(text),
                    Err(_) => {
                        self.err(
                            field,
                            format!("{} is not UTF-8 text", dir.join(key).display()),
                        );
                        return None;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.err(
                        field,
                        format!("cannot read {}: {e}", dir.join(key).display()),
                    );
                    return None;
                }
            }
        }
        self.err(
            field,
            format!(
                "the Secret is not mounted: none of {} in {} (virt-controller mounts a \
                 cloud-init volume's Secret there; locally, put the files there or pass \
                 --mounts-dir)",
                keys.join(", "),
                dir.display()
            ),
        );
        None
    }

    /// At most one of a plain and a base64 text field; `Err` once reported.
    fn one_of_text(
        &mut self,
        base: &str,
        plain: (&str, Option<&str>),
        encoded: (&str, Option<&str>),
    ) -> Result<Option<String>, ()> {
        use base64::Engine;
        match (plain.1, encoded.1) {
            (Some(_), Some(_)) => {
                self.err(
                    format!("{base}.{}", encoded.0),
                    format!("set {} or {}, not both", plain.0, encoded.0),
                );
                Err(())
            }
            (Some(text), None) => Ok(Some(text.to_string())),
            (None, Some(b64)) => {
                let field = format!("{base}.{}", encoded.0);
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| self.err(&field, format!("not valid base64: {e}")))?;
                String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| self.err(&field, "decodes to bytes that are not UTF-8 text"))
            }
            (None, None) => Ok(None),
        }
    }

    fn host_disk(&mut self, path: &str, hd: &api::HostDisk) -> Option<DiskSource> {
        let base = format!("{path}.hostDisk");
        if hd.path.is_empty() {
            self.err(
                format!("{base}.path"),
                "required: the disk image's host path",
            );
            return None;
        }
        let abs = self.absolute(&hd.path);
        let create_with_capacity = match hd.kind.as_str() {
            "Disk" => {
                if hd.capacity.is_some() {
                    self.err(
                        format!("{base}.capacity"),
                        "capacity only applies to type DiskOrCreate",
                    );
                }
                match std::fs::metadata(&abs) {
                    Ok(m) if !m.is_dir() => None,
                    Ok(_) => {
                        self.err(
                            format!("{base}.path"),
                            format!("{} is a directory, not a disk image", abs.display()),
                        );
                        return None;
                    }
                    Err(e) => {
                        self.err(
                            format!("{base}.path"),
                            format!(
                                "cannot use disk image {}: {e} (type Disk needs an existing \
                                 image; DiskOrCreate creates one)",
                                abs.display()
                            ),
                        );
                        return None;
                    }
                }
            }
            "DiskOrCreate" => {
                let cap_path = format!("{base}.capacity");
                let Some(q) = hd.capacity.as_ref() else {
                    self.err(
                        &cap_path,
                        "required for type DiskOrCreate: the size of the image to create",
                    );
                    return None;
                };
                let bytes = self.quantity_bytes(&cap_path, q)?;
                if bytes == 0 {
                    self.err(&cap_path, "must be more than 0");
                    return None;
                }
                if abs.is_dir() {
                    self.err(
                        format!("{base}.path"),
                        format!("{} is a directory, not a disk image", abs.display()),
                    );
                    return None;
                }
                Some(bytes)
            }
            "" => {
                self.err(format!("{base}.type"), "required: Disk or DiskOrCreate");
                return None;
            }
            other => {
                self.err(
                    format!("{base}.type"),
                    format!("unknown hostDisk type {other:?}: expected Disk or DiskOrCreate"),
                );
                return None;
            }
        };
        let block_device = is_block_device(&abs);
        Some(DiskSource {
            spec_path: path.to_string(),
            path: abs,
            // KubeVirt's hostDisk is always raw; probing a guest-writable image
            // for a format would let the guest choose it.
            format: ImageFormat::Raw,
            create_with_capacity,
            block_device,
            generated: None,
        })
    }

    fn container_disk(
        &mut self,
        path: &str,
        index: usize,
        name: &str,
        uid: &str,
        cd: &api::ContainerDisk,
    ) -> Option<DiskSource> {
        let base = format!("{path}.containerDisk");
        if cd.image.is_empty() {
            self.err(
                format!("{base}.image"),
                "required: the container disk image",
            );
            return None;
        }
        let dir = std::path::absolute(&self.opts.container_disk_dir)
            .unwrap_or_else(|_| self.opts.container_disk_dir.clone());
        let generated = match self.opts.container_disk_layout {
            crate::load::ContainerDiskLayout::Local => {
                let image = self.image_ref(
                    &base,
                    &cd.image,
                    cd.path.as_deref(),
                    cd.image_pull_policy.as_deref(),
                    cd.image_pull_secret.as_deref(),
                )?;
                match self.local_container_disk(&base, &dir, name)? {
                    Some((backing, backing_format)) => crate::Generated::Overlay {
                        backing,
                        backing_format,
                    },
                    None => crate::Generated::ImageOverlay { image },
                }
            }
            crate::load::ContainerDiskLayout::Pod => {
                // The kubelet pulled the image and virt-handler put its disk
                // here: pull settings and `path` were applied by them.
                let file = dir.join(format!("disk_{index}.img"));
                match qcow2_or_raw(&file) {
                    Ok(backing_format) => crate::Generated::Overlay {
                        backing: file,
                        backing_format,
                    },
                    Err(e) => {
                        self.err(
                            &base,
                            format!(
                                "containerDisk {:?}: cannot read {} (KubeVirt's container-disk \
                                 layout, disk_<volume index>.img): {e}",
                                cd.image,
                                file.display()
                            ),
                        );
                        return None;
                    }
                }
            }
        };
        Some(DiskSource {
            spec_path: path.to_string(),
            path: self.generated_path_ext(name, uid, "qcow2"),
            format: ImageFormat::Qcow2,
            create_with_capacity: None,
            block_device: false,
            generated: Some(generated),
        })
    }

    /// A registry image named by the spec, its pull settings checked.
    pub(super) fn image_ref(
        &mut self,
        base: &str,
        image: &str,
        path: Option<&str>,
        policy: Option<&str>,
        secret: Option<&str>,
    ) -> Option<crate::ImageRef> {
        let mut ok = true;
        if image.contains(char::is_whitespace) || image.starts_with('/') {
            self.err(
                format!("{base}.image"),
                format!(
                    "{image:?} is not an image reference (registry/repository:tag or @sha256:...)"
                ),
            );
            ok = false;
        }
        let pull_policy = match policy {
            None | Some("") => crate::PullPolicy::default_for(image),
            Some("Always") => crate::PullPolicy::Always,
            Some("IfNotPresent") => crate::PullPolicy::IfNotPresent,
            Some("Never") => crate::PullPolicy::Never,
            Some(other) => {
                self.err(
                    format!("{base}.imagePullPolicy"),
                    format!(
                        "unknown pull policy {other:?}: expected Always, IfNotPresent or Never"
                    ),
                );
                ok = false;
                crate::PullPolicy::IfNotPresent
            }
        };
        let path = match path {
            None | Some("") => None,
            Some(p) if p.starts_with('/') && !p.split('/').any(|c| c == "..") => {
                Some(p.to_string())
            }
            Some(p) => {
                self.err(
                    format!("{base}.path"),
                    format!("{p:?}: expected an absolute path inside the image, without `..`"),
                );
                ok = false;
                None
            }
        };
        let pull_secret = match secret {
            None | Some("") => None,
            Some(name) if is_dns_subdomain(name) => Some(
                self.opts
                    .mounts_dir
                    .join("secret")
                    .join(name)
                    .join(".dockerconfigjson"),
            ),
            Some(name) => {
                self.err(
                    format!("{base}.imagePullSecret"),
                    format!("{name:?} is not a Secret name"),
                );
                ok = false;
                None
            }
        };
        ok.then(|| crate::ImageRef {
            image: image.to_string(),
            path,
            pull_policy,
            pull_secret,
        })
    }

    /// The image of a containerDisk in the local layout, if one was put
    /// there by hand; `None` means "pull it".
    fn local_container_disk(
        &mut self,
        base: &str,
        dir: &std::path::Path,
        name: &str,
    ) -> Option<Option<(PathBuf, ImageFormat)>> {
        let dir = dir.join(name);
        let candidates = [
            (dir.join("disk.img"), ImageFormat::Raw),
            (dir.join("disk.qcow2"), ImageFormat::Qcow2),
        ];
        let found: Vec<&(PathBuf, ImageFormat)> =
            candidates.iter().filter(|(p, _)| is_file(p)).collect();
        match found.as_slice() {
            [(file, format)] => Some(Some((file.clone(), *format))),
            [] => Some(None),
            _ => {
                self.err(
                    base,
                    format!(
                        "both {} and {} exist: keep only one so the format is unambiguous",
                        candidates[0].0.display(),
                        candidates[1].0.display()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn disks(
        &mut self,
        disks: &[api::Disk],
        volumes: &[api::Volume],
        sources: &[Option<DiskSource>],
        arch: Architecture,
        hypervisor: Hypervisor,
    ) -> Vec<Disk> {
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        let mut boot_orders: BTreeMap<u32, usize> = BTreeMap::new();
        let mut used_by: BTreeMap<usize, usize> = BTreeMap::new();
        for (i, d) in disks.iter().enumerate() {
            let path = format!("spec.domain.devices.disks[{i}]");
            if d.name.is_empty() {
                self.err(
                    format!("{path}.name"),
                    "required: the name of the volume to use",
                );
            } else if !names.insert(d.name.as_str()) {
                // Disk names are volume names: a duplicate says it all.
                self.err(
                    format!("{path}.name"),
                    format!("duplicate disk name {:?}", d.name),
                );
                continue;
            }
            // Looked up first so that a disk with other errors still counts as
            // using its volume.
            let vol_index = volumes.iter().position(|v| v.name == d.name);
            match vol_index {
                None if !d.name.is_empty() => self.err(
                    format!("{path}.name"),
                    format!("no volume named {:?} in spec.volumes", d.name),
                ),
                None => {}
                Some(j) => {
                    used_by.insert(j, i);
                }
            }
            let targets: Vec<(DiskDevice, &str, &api::DiskTarget)> = [
                (DiskDevice::Disk, "disk", d.disk.as_ref()),
                (DiskDevice::Cdrom, "cdrom", d.cdrom.as_ref()),
                (DiskDevice::Lun, "lun", d.lun.as_ref()),
            ]
            .into_iter()
            .filter_map(|(dev, key, t)| t.map(|t| (dev, key, t)))
            .collect();
            let default_target = api::DiskTarget::default();
            let (device, key, target) = match targets.as_slice() {
                [] => (DiskDevice::Disk, "disk", &default_target),
                [one] => *one,
                _ => {
                    self.err(&path, "set only one of disk, cdrom or lun");
                    continue;
                }
            };
            let bus_path = format!("{path}.{key}.bus");
            let bus = match target.bus.as_deref() {
                None | Some("") => default_bus(device, arch, hypervisor),
                Some("virtio") => DiskBus::Virtio,
                Some("sata") => DiskBus::Sata,
                Some("scsi") => DiskBus::Scsi,
                Some("usb") => DiskBus::Usb,
                Some(other) => {
                    self.err(
                        &bus_path,
                        format!("unknown disk bus {other:?}: expected virtio, sata, scsi or usb"),
                    );
                    DiskBus::Virtio
                }
            };
            if device == DiskDevice::Cdrom && bus == DiskBus::Virtio {
                self.err(
                    &bus_path,
                    "a cdrom cannot use the virtio bus: use sata or scsi",
                );
            }
            let readonly = target.readonly.unwrap_or(device == DiskDevice::Cdrom);
            // KubeVirt's disk admitter: an empty serial is no serial.
            let serial = d.serial.clone().filter(|s| !s.is_empty());
            if let Some(serial) = &serial {
                let valid = serial.len() <= MAX_DISK_SERIAL_LEN
                    && serial
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b));
                if !valid {
                    self.err(
                        format!("{path}.serial"),
                        format!(
                            "{serial:?} is not a valid disk serial: at most \
                             {MAX_DISK_SERIAL_LEN} letters, digits, '_', '.', '+' or '-'"
                        ),
                    );
                }
            }
            if let Some(order) = d.boot_order {
                if order == 0 {
                    self.err(format!("{path}.bootOrder"), "must be at least 1");
                } else if let Some(first) = boot_orders.insert(order, i) {
                    self.err(
                        format!("{path}.bootOrder"),
                        format!("boot order {order} is already used by spec.domain.devices.disks[{first}]"),
                    );
                }
            }
            let Some(vol_index) = vol_index else { continue };
            if device == DiskDevice::Lun {
                // Every volume kind this launcher reads is a hostDisk or a
                // containerDisk, which KubeVirt's admitter refuses for lun.
                self.err(
                    format!("{path}.lun"),
                    format!(
                        "lun can only be mapped to a DataVolume or PersistentVolumeClaim volume \
                         (volume {:?} is not one; those volume kinds are not supported yet)",
                        d.name
                    ),
                );
                continue;
            }
            if let Some(Some(source)) = sources.get(vol_index) {
                let options = self.disk_options(&path, d);
                out.push(Disk {
                    spec_path: path,
                    name: d.name.clone(),
                    device,
                    bus,
                    readonly,
                    serial,
                    boot_order: d.boot_order,
                    options,
                    source: source.clone(),
                });
            }
        }
        // KubeVirt's SetDefaultVolumeDisk: a volume that no disk names gets
        // a plain `disk: {}`, appended after the declared disks. Its spec
        // path is the volume's, since it has none among the disks.
        for (j, v) in volumes.iter().enumerate() {
            let duplicate = volumes.iter().position(|w| w.name == v.name) != Some(j);
            if used_by.contains_key(&j) || duplicate || v.name.is_empty() {
                continue;
            }
            if let Some(Some(source)) = sources.get(j) {
                out.push(Disk {
                    spec_path: format!("spec.volumes[{j}]"),
                    name: v.name.clone(),
                    device: DiskDevice::Disk,
                    bus: default_bus(DiskDevice::Disk, arch, hypervisor),
                    readonly: false,
                    serial: None,
                    boot_order: None,
                    options: Default::default(),
                    source: source.clone(),
                });
            }
        }
        out
    }
}

/// The bus of a disk that names none. On libvirt, KubeVirt's defaults
/// (pkg/defaults): SATA on amd64 for disk, cdrom and lun; virtio on arm64 and
/// s390x, except that a cdrom gets SCSI there (KubeVirt's virtio default for
/// a cdrom is refused by its own admitter). On Cloud Hypervisor, whose only
/// disk is virtio-blk, a disk defaults to virtio (a launcher choice, like the
/// graphics default); a cdrom or lun is refused there whatever its bus.
fn default_bus(device: DiskDevice, arch: Architecture, hypervisor: Hypervisor) -> DiskBus {
    match (hypervisor, arch, device) {
        (Hypervisor::CloudHypervisor, _, DiskDevice::Disk) => DiskBus::Virtio,
        (_, Architecture::Amd64, _) => DiskBus::Sata,
        (_, _, DiskDevice::Cdrom) => DiskBus::Scsi,
        (_, _, DiskDevice::Disk | DiskDevice::Lun) => DiskBus::Virtio,
    }
}

fn is_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

/// qcow2 when the file starts with its magic, else raw.
pub fn qcow2_or_raw(file: &std::path::Path) -> std::io::Result<ImageFormat> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(file)?;
    let n = f.read(&mut magic)?;
    Ok(if n == 4 && magic == *b"QFI\xfb" {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

fn is_block_device(path: &std::path::Path) -> bool {
    std::fs::metadata(path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .unwrap_or(false)
}
