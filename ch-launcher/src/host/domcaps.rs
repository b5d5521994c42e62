//! `virsh domcapabilities` XML, as libvirt prints it, read into
//! [`HostCapabilities`].
//!
//! Support is derived the way KubeVirt's node-labeller derives it, so a node
//! gets the same labels from either: SEV when `<sev supported='yes'>` (even
//! without `cbitpos`/`reducedPhysBits`, which only rendering a guest needs),
//! SEV-ES when SEV is there with `maxESGuests > 0`, SEV-SNP when SEV-ES is there and
//! `<launchSecurity supported='yes'>` lists the `sev-snp` sectype, TDX from
//! `<tdx supported='yes'>` and Secure Execution from
//! `<s390-pv supported='yes'>`. Everything else in the document is ignored.

use super::{HostCapabilities, HostError, SevParameters};
use serde::Deserialize;
use std::path::Path;

/// Reads and interprets a `virsh domcapabilities` file.
pub fn load(path: &Path) -> Result<HostCapabilities, HostError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostError::Read {
        path: path.to_path_buf(),
        cause: source,
    })?;
    parse(&text, &format!("domcapabilities {}", path.display()))
}

/// Interprets a domain capabilities document; `source` says where it came from.
pub fn parse(xml: &str, source: &str) -> Result<HostCapabilities, HostError> {
    let doc: DomainCapabilities = quick_xml::de::from_str(xml).map_err(|e| HostError::Parse {
        origin: source.to_string(),
        message: e.to_string(),
    })?;
    Ok(doc.into_capabilities(source))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename = "domainCapabilities")]
struct DomainCapabilities {
    path: Option<String>,
    domain: Option<String>,
    machine: Option<String>,
    arch: Option<String>,
    #[serde(default)]
    os: Os,
    #[serde(default)]
    features: Features,
}

#[derive(Debug, Default, Deserialize)]
struct Os {
    #[serde(rename = "enum", default)]
    enums: Vec<Enum>,
    #[serde(default)]
    loader: Loader,
}

#[derive(Debug, Default, Deserialize)]
struct Loader {
    #[serde(rename = "value", default)]
    values: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Enum {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "value", default)]
    values: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Features {
    sev: Option<Sev>,
    sgx: Option<Supported>,
    tdx: Option<Supported>,
    #[serde(rename = "s390-pv")]
    s390_pv: Option<Supported>,
    #[serde(rename = "launchSecurity")]
    launch_security: Option<LaunchSecurity>,
}

#[derive(Debug, Default, Deserialize)]
struct Supported {
    #[serde(rename = "@supported")]
    supported: Option<String>,
}

impl Supported {
    fn yes(this: &Option<Self>) -> bool {
        this.as_ref()
            .is_some_and(|s| s.supported.as_deref() == Some("yes"))
    }
}

#[derive(Debug, Default, Deserialize)]
struct Sev {
    #[serde(rename = "@supported")]
    supported: Option<String>,
    cbitpos: Option<u32>,
    #[serde(rename = "reducedPhysBits")]
    reduced_phys_bits: Option<u32>,
    #[serde(rename = "maxGuests")]
    max_guests: Option<u32>,
    #[serde(rename = "maxESGuests")]
    max_es_guests: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
struct LaunchSecurity {
    #[serde(rename = "@supported")]
    supported: Option<String>,
    #[serde(rename = "enum", default)]
    enums: Vec<Enum>,
}

impl DomainCapabilities {
    fn into_capabilities(self, source: &str) -> HostCapabilities {
        let f = self.features;
        let mut notes = Vec::new();
        let sev_supported = f
            .sev
            .as_ref()
            .is_some_and(|sev| sev.supported.as_deref() == Some("yes"));
        let max_es_guests = f
            .sev
            .as_ref()
            .and_then(|sev| sev.max_es_guests)
            .unwrap_or(0);
        let sev = match f.sev.filter(|_| sev_supported) {
            Some(sev) => match (sev.cbitpos, sev.reduced_phys_bits) {
                (Some(cbitpos), Some(reduced_phys_bits)) => Some(SevParameters {
                    cbitpos,
                    reduced_phys_bits,
                    max_guests: sev.max_guests.unwrap_or(0),
                    max_es_guests,
                }),
                _ => {
                    // Never guessed: a wrong C-bit makes QEMU refuse to
                    // start or the guest fault early.
                    notes.push(
                        "<sev supported='yes'> lacks cbitpos or reducedPhysBits: SEV is \
                         labelled, but an SEV guest cannot be rendered from this document"
                            .to_string(),
                    );
                    None
                }
            },
            None => None,
        };
        let launch_security_types: Vec<String> = f
            .launch_security
            .filter(|ls| ls.supported.as_deref() == Some("yes"))
            .map(|ls| {
                ls.enums
                    .into_iter()
                    .filter(|e| e.name == "sectype")
                    .flat_map(|e| e.values)
                    .collect()
            })
            .unwrap_or_default();
        let sev_es = sev_supported && max_es_guests > 0;
        let sev_snp = sev_es && launch_security_types.iter().any(|t| t == "sev-snp");
        HostCapabilities {
            source: source.to_string(),
            arch: self.arch,
            emulator: self.path,
            machine: self.machine,
            domain_type: self.domain,
            sev_supported,
            sev,
            sev_es,
            sev_snp,
            tdx: Supported::yes(&f.tdx),
            secure_execution: Supported::yes(&f.s390_pv),
            sgx: Some(Supported::yes(&f.sgx)),
            launch_security_types,
            firmware: self
                .os
                .enums
                .into_iter()
                .filter(|e| e.name == "firmware")
                .flat_map(|e| e.values)
                .collect(),
            loaders: self.os.loader.values,
            kvm_vm_types: None,
            notes,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A recorded `virsh domcapabilities` file from the shared reference
    /// set, loaded; also used by the tests of what is derived from it.
    pub(crate) fn sample(name: &str) -> HostCapabilities {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/reference/domcapabilities")
            .join(name);
        load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sev_sample_has_sev_and_es_parameters_but_not_snp() {
        let caps = sample("domcapabilities_sev.xml");
        assert_eq!(
            caps.sev,
            Some(SevParameters {
                cbitpos: 47,
                reduced_phys_bits: 1,
                max_guests: 15,
                max_es_guests: 15
            })
        );
        assert!(caps.sev_es);
        assert!(!caps.sev_snp && !caps.tdx && !caps.secure_execution);
        assert_eq!(caps.arch.as_deref(), Some("x86_64"));
        assert_eq!(
            caps.emulator.as_deref(),
            Some("/usr/bin/qemu-system-x86_64")
        );
        assert_eq!(caps.machine.as_deref(), Some("pc-i440fx-6.0"));
        assert_eq!(caps.firmware, ["bios", "efi"]);
        assert_eq!(caps.loaders.len(), 10);
        assert_eq!(caps.loaders[0], "/usr/share/qemu/bios-256k.bin");
    }

    #[test]
    fn sevsnp_sample_lists_snp_sectype() {
        let caps = sample("domcapabilities_sevsnp.xml");
        assert!(caps.sev.is_some() && caps.sev_es && caps.sev_snp);
        assert_eq!(caps.launch_security_types, ["sev", "sev-snp"]);
    }

    #[test]
    fn tdx_sample_has_tdx_and_sgx_without_sev() {
        let caps = sample("domcapabilities_tdx.xml");
        assert!(caps.tdx);
        assert_eq!(caps.sgx, Some(true));
        assert_eq!(caps.sev, None);
        assert!(!caps.sev_es && !caps.sev_snp);
        assert_eq!(caps.launch_security_types, ["tdx"]);
    }

    #[test]
    fn s390_sample_has_secure_execution() {
        let caps = sample("domcapabilities_s390-pv.xml");
        assert!(caps.secure_execution);
        assert_eq!(caps.arch.as_deref(), Some("s390x"));
        assert_eq!(caps.launch_security_types, ["s390-pv"]);
        assert!(caps.firmware.is_empty());
        assert!(caps.sev.is_none() && !caps.tdx);
    }

    #[test]
    fn this_machine_sample_has_nothing_confidential() {
        let caps = sample("this-machine-qemu-7.2-kvm.xml");
        assert_eq!(caps.sev, None);
        assert!(!caps.sev_es && !caps.sev_snp && !caps.tdx && !caps.secure_execution);
        assert_eq!(caps.sgx, Some(false));
        assert_eq!(caps.loaders, ["/usr/share/OVMF/OVMF_CODE_4M.fd"]);
    }

    #[test]
    fn sev_without_es_guests_is_plain_sev() {
        let xml = "<domainCapabilities><features><sev supported='yes'><cbitpos>51</cbitpos>\
                   <reducedPhysBits>1</reducedPhysBits><maxGuests>509</maxGuests>\
                   <maxESGuests>0</maxESGuests></sev><launchSecurity supported='yes'>\
                   <enum name='sectype'><value>sev</value><value>sev-snp</value></enum>\
                   </launchSecurity></features></domainCapabilities>";
        let caps = parse(xml, "inline").unwrap();
        assert_eq!(caps.sev.map(|s| s.cbitpos), Some(51));
        // KubeVirt's rule: SNP needs SEV-ES, even if the sectype is listed.
        assert!(!caps.sev_es && !caps.sev_snp);
    }

    #[test]
    fn sev_supported_without_cbitpos_is_labelled_but_has_no_parameters() {
        let xml = "<domainCapabilities><features><sev supported='yes'>\
                   <maxESGuests>4</maxESGuests></sev></features></domainCapabilities>";
        let caps = parse(xml, "inline").unwrap();
        assert!(caps.sev_supported);
        assert_eq!(caps.sev, None);
        assert!(caps.sev_es, "KubeVirt labels SEV-ES from maxESGuests alone");
        assert_eq!(caps.notes.len(), 1);
        assert!(caps.notes[0].contains("cbitpos"), "{:?}", caps.notes);
        let labels = crate::host::labels::node_labels(&caps);
        assert_eq!(
            labels.get("kubevirt.io/sev").map(String::as_str),
            Some("true")
        );

        let bare = parse(
            "<domainCapabilities><features><sev supported='yes'/></features>\
             </domainCapabilities>",
            "inline",
        )
        .unwrap();
        assert!(bare.sev_supported && !bare.sev_es && bare.sev.is_none());
        let unsupported = parse(
            "<domainCapabilities><features><sev supported='no'/></features>\
             </domainCapabilities>",
            "inline",
        )
        .unwrap();
        assert!(!unsupported.sev_supported && unsupported.notes.is_empty());
    }

    #[test]
    fn malformed_document_names_its_origin() {
        let err = parse("<domainCapabilities><features>", "broken.xml").unwrap_err();
        assert!(err.to_string().contains("broken.xml"), "{err}");
    }
}
