//! `emptyDisk`, `cloudInitNoCloud` and `cloudInitConfigDrive` resolve to
//! images the launcher makes, with KubeVirt's contents and layout, and every
//! malformed field is named.

mod common;

use common::{assert_only, err, ok, Fixture};
use domain_model::{Domain, Generated, GeneratedFile};
use serde_json::{json, Value};

fn with_volume(volume: Value) -> Value {
    json!({"metadata": {"uid": "u-1", "namespace": "ns"},
        "spec": {"domain": {"firmware": {"uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223"},
            "devices": {"disks": [{"name": "v", "disk": {"bus": "virtio"}}]}},
        "volumes": [volume]}})
}

fn generated(d: &Domain) -> &Generated {
    d.disks[0]
        .source
        .generated
        .as_ref()
        .expect("a launcher-made image")
}

fn files(d: &Domain) -> Vec<(String, String)> {
    match generated(d) {
        Generated::CloudInit { files, .. } => files
            .iter()
            .map(|GeneratedFile { path, contents }| (path.clone(), contents.clone()))
            .collect(),
        other => panic!("not cloud-init: {other:?}"),
    }
}

#[test]
fn empty_disk_is_a_sparse_image_of_its_capacity_under_the_ephemeral_dir() {
    let f = Fixture::new();
    let d = ok(f.resolve(with_volume(
        json!({"name": "v", "emptyDisk": {"capacity": "2Gi"}}),
    )));
    assert_eq!(generated(&d), &Generated::Empty { capacity: 2 << 30 });
    assert_eq!(
        d.disks[0].source.path,
        f.path().join("ephemeral").join("u-1").join("v.img")
    );
}

#[test]
fn empty_disk_without_or_with_zero_capacity_is_refused() {
    let f = Fixture::new();
    let e = err(f.resolve(with_volume(json!({"name": "v", "emptyDisk": {}}))));
    assert_only(&e, "spec.volumes[0].emptyDisk.capacity", "required");
    let e = err(f.resolve(with_volume(
        json!({"name": "v", "emptyDisk": {"capacity": "0"}}),
    )));
    assert_only(&e, "spec.volumes[0].emptyDisk.capacity", "more than 0");
}

#[test]
fn no_cloud_holds_user_data_meta_data_and_network_config() {
    let f = Fixture::new();
    let d = ok(
        f.resolve(with_volume(json!({"name": "v", "cloudInitNoCloud": {
        "userData": "#cloud-config\npassword: x\n",
        "networkDataBase64": "dmVyc2lvbjogMgo="}}))),
    );
    match generated(&d) {
        Generated::CloudInit { label, .. } => assert_eq!(label, "cidata"),
        other => panic!("{other:?}"),
    }
    let got = files(&d);
    assert_eq!(
        got[0],
        ("user-data".into(), "#cloud-config\npassword: x\n".into())
    );
    assert_eq!(got[1].0, "meta-data");
    let meta: Value = serde_json::from_str(&got[1].1).expect("meta-data is JSON");
    assert_eq!(meta["instance-id"], "5d307ca9-b3ef-428c-8861-06e72d69f223");
    assert_eq!(meta["local-hostname"], "testvm");
    assert_eq!(got[2], ("network-config".into(), "version: 2\n".into()));
    assert_eq!(got.len(), 3);
}

#[test]
fn config_drive_uses_the_openstack_layout() {
    let f = Fixture::new();
    let d = ok(
        f.resolve(with_volume(json!({"name": "v", "cloudInitConfigDrive": {
        "userDataBase64": "I2Nsb3VkLWNvbmZpZwo="}}))),
    );
    match generated(&d) {
        Generated::CloudInit { label, .. } => assert_eq!(label, "config-2"),
        other => panic!("{other:?}"),
    }
    let got = files(&d);
    assert_eq!(
        got.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        [
            "openstack/latest/user_data",
            "openstack/latest/meta_data.json"
        ]
    );
    assert_eq!(got[0].1, "#cloud-config\n");
    let meta: Value = serde_json::from_str(&got[1].1).expect("meta_data.json");
    assert_eq!(meta["instance_id"], "testvm.ns");
    assert_eq!(meta["uuid"], "5d307ca9-b3ef-428c-8861-06e72d69f223");
}

#[test]
fn cloud_init_field_errors_name_the_field() {
    let f = Fixture::new();
    let cases = [
        (json!({}), "spec.volumes[0].cloudInitNoCloud", "required"),
        (
            json!({"userData": "a", "userDataBase64": "YQ=="}),
            "spec.volumes[0].cloudInitNoCloud.userDataBase64",
            "not both",
        ),
        (
            json!({"userDataBase64": "!!not base64"}),
            "spec.volumes[0].cloudInitNoCloud.userDataBase64",
            "not valid base64",
        ),
        (
            json!({"networkDataBase64": "//79"}),
            "spec.volumes[0].cloudInitNoCloud.networkDataBase64",
            "not UTF-8",
        ),
        (
            json!({"secretRef": {"name": "s"}}),
            "spec.volumes[0].cloudInitNoCloud.secretRef",
            "the Secret is not mounted",
        ),
    ];
    for (source, path, want) in cases {
        let e = err(f.resolve(with_volume(
            json!({"name": "v", "cloudInitNoCloud": source}),
        )));
        assert_only(&e, path, want);
    }
}

#[test]
fn secret_refs_are_read_where_virt_controller_mounts_them() {
    let f = Fixture::new();
    let dir = f.path().join("mounts/secret/v");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("userdata"), "#cloud-config\nfrom: secret\n").expect("write");
    std::fs::write(dir.join("networkData"), "version: 1\n").expect("write");
    let d = ok(
        f.resolve(with_volume(json!({"name": "v", "cloudInitNoCloud": {
        "secretRef": {"name": "s"}, "networkDataSecretRef": {"name": "s"}}}))),
    );
    let got = files(&d);
    assert_eq!(got[0].1, "#cloud-config\nfrom: secret\n");
    assert_eq!(got[2], ("network-config".into(), "version: 1\n".into()));
}

#[test]
fn two_sources_in_one_volume_are_refused() {
    let f = Fixture::new();
    let e = err(f.resolve(with_volume(json!({"name": "v",
        "emptyDisk": {"capacity": "1Gi"}, "cloudInitNoCloud": {"userData": "x"}}))));
    assert_only(&e, "spec.volumes[0]", "set only one volume source");
}

#[test]
fn container_disk_in_a_pod_is_disk_n_img_by_volume_index_and_its_format_by_magic() {
    let f = Fixture::new();
    let dir = f.path().join("pod-disks");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("disk_1.img"), b"QFI\xfb\0\0\0\x03").expect("qcow2 magic");
    let opts = domain_model::LoadOptions {
        container_disk_dir: dir.clone(),
        container_disk_layout: domain_model::ContainerDiskLayout::Pod,
        ..f.opts()
    };
    let spec = common::spec(
        json!({"metadata": {"uid": "u-1"}, "spec": {"domain": {"devices": {"disks": [
            {"name": "scratch", "disk": {"bus": "virtio"}}, {"name": "root", "disk": {"bus": "virtio"}}]}},
        "volumes": [{"name": "scratch", "emptyDisk": {"capacity": "1Mi"}},
            {"name": "root", "containerDisk": {"image": "quay.io/x/y:1"}}]}}),
    );
    let d = domain_model::resolve_str(&spec, &opts).expect("resolves");
    assert_eq!(
        d.disks[1].source.generated,
        Some(Generated::Overlay {
            backing: dir.join("disk_1.img"),
            backing_format: domain_model::ImageFormat::Qcow2,
        })
    );
    assert_eq!(
        d.disks[1].source.path,
        f.path().join("ephemeral/u-1/root.qcow2")
    );
    // Missing: the error names KubeVirt's layout.
    std::fs::remove_file(dir.join("disk_1.img")).expect("rm");
    let e = domain_model::resolve_str(&spec, &opts).unwrap_err();
    assert_only(
        &e,
        "spec.volumes[1].containerDisk",
        "disk_<volume index>.img",
    );
}

#[test]
fn pvc_and_data_volume_are_the_files_virt_controller_mounts() {
    let f = Fixture::new();
    let dir = f.path().join("mounts/vmi-disks/v");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("disk.img"), b"").expect("image");
    for source in [
        json!({"persistentVolumeClaim": {"claimName": "c"}}),
        json!({"dataVolume": {"name": "dv"}}),
    ] {
        let mut v = json!({"name": "v"});
        common::merge(&mut v, &source);
        let d = ok(f.resolve(with_volume(v)));
        assert_eq!(d.disks[0].source.path, dir.join("disk.img"));
        assert_eq!(d.disks[0].source.generated, None);
    }
    // ephemeral: the claim behind an overlay.
    let d = ok(f.resolve(with_volume(
        json!({"name": "v", "ephemeral": {"persistentVolumeClaim": {"claimName": "c"}}}),
    )));
    assert_eq!(
        generated(&d),
        &Generated::Overlay {
            backing: dir.join("disk.img"),
            backing_format: domain_model::ImageFormat::Raw
        }
    );
    std::fs::remove_file(dir.join("disk.img")).expect("rm");
    let e = err(f.resolve(with_volume(
        json!({"name": "v", "persistentVolumeClaim": {"claimName": "c"}}),
    )));
    assert_only(
        &e,
        "spec.volumes[0].persistentVolumeClaim",
        "vmi-disks/v/disk.img",
    );
    let e = err(f.resolve(with_volume(
        json!({"name": "v", "dataVolume": {"name": "d", "hotpluggable": true}}),
    )));
    assert_eq!(
        common::paths(&e)[0],
        "spec.volumes[0].dataVolume.hotpluggable"
    );
}

#[test]
fn config_map_secret_downward_api_and_service_account_become_isos_of_their_mounts() {
    let f = Fixture::new();
    for (kind, source, dir) in [
        (
            "configMap",
            json!({"name": "cm", "volumeLabel": "CFG"}),
            "mounts/config-map/v",
        ),
        ("secret", json!({"secretName": "s"}), "mounts/secret/v"),
        ("downwardAPI", json!({"fields": []}), "mounts/downwardapi/v"),
        (
            "serviceAccount",
            json!({"serviceAccountName": "sa"}),
            "serviceaccount",
        ),
    ] {
        let mut v = json!({"name": "v"});
        v[kind] = source;
        let e = err(f.resolve(with_volume(v.clone())));
        assert_only(&e, "spec.volumes[0]", "is not mounted");
        std::fs::create_dir_all(f.path().join(dir)).expect("mkdir");
        let d = ok(f.resolve(with_volume(v)));
        match generated(&d) {
            Generated::IsoFromDir {
                dir: got, label, ..
            } => {
                assert_eq!(got, &f.path().join(dir));
                assert_eq!(label, if kind == "configMap" { "CFG" } else { "v" });
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
    // optional: an absent Secret is an empty disk, not an error.
    let f = Fixture::new();
    let d = ok(f.resolve(with_volume(
        json!({"name": "v", "secret": {"secretName": "s", "optional": true}}),
    )));
    assert!(matches!(
        generated(&d),
        Generated::IsoFromDir { optional: true, .. }
    ));
}

#[test]
fn sysprep_is_an_unattend_cd_iso_of_its_answer_files() {
    let f = Fixture::new();
    let v = json!({"name": "v", "sysprep": {"configMap": {"name": "answers"}}});
    let e = err(f.resolve(with_volume(v.clone())));
    assert_only(&e, "spec.volumes[0]", "is not mounted");
    let dir = f.path().join("mounts/sysprep/v");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("other.txt"), "x").unwrap();
    let e = err(f.resolve(with_volume(v.clone())));
    assert_only(
        &e,
        "spec.volumes[0].sysprep",
        "neither autounattend.xml nor unattend.xml",
    );
    std::fs::write(dir.join("Autounattend.xml"), "<unattend/>").unwrap();
    let d = ok(f.resolve(with_volume(v)));
    match generated(&d) {
        Generated::IsoFromDir {
            dir: got, label, ..
        } => {
            assert_eq!(got, &dir);
            assert_eq!(label, "unattendCD");
        }
        other => panic!("{other:?}"),
    }
    for (source, field, message) in [
        (
            json!({}),
            "spec.volumes[0].sysprep",
            "required: configMap or secret",
        ),
        (
            json!({"configMap": {"name": "a"}, "secret": {"name": "b"}}),
            "spec.volumes[0].sysprep",
            "not both",
        ),
        (
            json!({"secret": {}}),
            "spec.volumes[0].sysprep.secret.name",
            "required",
        ),
    ] {
        let e = err(f.resolve(with_volume(json!({"name": "v", "sysprep": source}))));
        assert_only(&e, field, message);
    }
}

#[test]
fn a_filesystem_shares_its_volumes_directory_and_is_no_disk() {
    let f = Fixture::new();
    let dir = f.path().join("mounts/vmi-disks/share");
    let spec = json!({"spec": {"domain": {"devices": {"filesystems": [{"name": "share", "virtiofs": {}}]}},
        "volumes": [{"name": "share", "persistentVolumeClaim": {"claimName": "c"}}]}});
    let e = err(f.resolve(spec.clone()));
    assert_only(&e, "spec.volumes[0]", "is not mounted");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let d = ok(f.resolve(spec));
    assert_eq!(d.devices.filesystems[0].source_dir, dir);
    assert!(
        d.disks.is_empty(),
        "a shared volume gets no default disk: {:?}",
        d.disks
    );
    let e = err(f.resolve(json!({"spec": {"domain": {"devices": {
            "filesystems": [{"name": "share", "virtiofs": {}}],
            "disks": [{"name": "share", "disk": {"bus": "virtio"}}]}},
        "volumes": [{"name": "share", "persistentVolumeClaim": {"claimName": "c"}}]}})));
    assert_eq!(
        common::paths(&e)[0],
        "spec.domain.devices.disks[0].name",
        "{e}"
    );
    let e = err(f.resolve(json!({"spec": {"domain": {"devices": {
            "filesystems": [{"name": "share", "virtiofs": {}}]}},
        "volumes": [{"name": "share", "emptyDisk": {"capacity": "1Mi"}}]}})));
    assert_only(&e, "spec.volumes[0]", "can be shared as a filesystem");
}
