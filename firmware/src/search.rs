//! Where QEMU firmware descriptors live and which of them are visible.
//!
//! The rules are QEMU's (`docs/interop/firmware.json`): `*.json` files from
//! several directories, general to specific (`/usr/share/qemu/firmware`,
//! `/etc/qemu/firmware`, the user's `$XDG_CONFIG_HOME/qemu/firmware`); for one
//! file name the most specific directory wins, and an empty file there hides
//! the less specific ones. The visible files are ordered by file name; the
//! first that matches a request wins (see `select`).
//!
//! Loading never fails as a whole: a missing directory is simply empty, and an
//! unreadable directory or a file that does not parse is reported alongside
//! the usable entries, so one broken file cannot hide every other firmware.

use crate::descriptor::{Descriptor, Mapping};
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// `/usr/share/qemu/firmware`: distro packages.
pub const DISTRO_DIR: &str = "/usr/share/qemu/firmware";
/// `/etc/qemu/firmware`: the administrator's additions and overrides.
pub const SYSCONF_DIR: &str = "/etc/qemu/firmware";

/// Descriptor directories, highest precedence first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchPaths {
    pub dirs: Vec<PathBuf>,
}

impl SearchPaths {
    /// Directories given explicitly, highest precedence first.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        SearchPaths { dirs }
    }

    /// QEMU's three places: the user's config directory (when `HOME` or
    /// `XDG_CONFIG_HOME` says where it is), `/etc/qemu/firmware`,
    /// `/usr/share/qemu/firmware`.
    pub fn from_env() -> Self {
        SearchPaths::standard(true)
    }

    /// QEMU's directories as a libvirt daemon reads them: the user's config
    /// directory only when `include_user_dir` (libvirt reads it for an
    /// unprivileged session daemon, `qemu:///session`, not for
    /// `qemu:///system`), then `/etc/qemu/firmware`,
    /// `/usr/share/qemu/firmware`.
    pub fn standard(include_user_dir: bool) -> Self {
        let mut dirs = Vec::new();
        if include_user_dir {
            if let Some(user) = user_config_dir(
                std::env::var_os("XDG_CONFIG_HOME"),
                std::env::var_os("HOME"),
            ) {
                dirs.push(user);
            }
        }
        dirs.push(PathBuf::from(SYSCONF_DIR));
        dirs.push(PathBuf::from(DISTRO_DIR));
        SearchPaths { dirs }
    }

    /// The two system directories below `root` (for a pod image's or a
    /// test's file tree): `<root>/etc/qemu/firmware`, then
    /// `<root>/usr/share/qemu/firmware`.
    pub fn under_root(root: &Path) -> Self {
        SearchPaths {
            dirs: vec![
                root.join(SYSCONF_DIR.trim_start_matches('/')),
                root.join(DISTRO_DIR.trim_start_matches('/')),
            ],
        }
    }
}

/// `$XDG_CONFIG_HOME/qemu/firmware`, else `$HOME/.config/qemu/firmware`. An
/// empty or relative `XDG_CONFIG_HOME` is invalid per the XDG spec and ignored.
pub fn user_config_dir(
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let xdg = xdg_config_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = match xdg {
        Some(p) => p,
        None => {
            let home = home.map(PathBuf::from).filter(|p| p.is_absolute())?;
            home.join(".config")
        }
    };
    Some(base.join("qemu").join("firmware"))
}

/// One visible descriptor file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CatalogEntry {
    pub path: PathBuf,
    /// The name the ordering and overriding go by.
    pub file_name: String,
    /// Less specific files of the same name this one overrides.
    pub overrides: Vec<PathBuf>,
    /// The parsed descriptor, or why it could not be read or parsed.
    pub descriptor: Result<Descriptor, String>,
}

/// An empty file that hides less specific files of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HiddenName {
    pub file_name: String,
    /// The empty file doing the hiding.
    pub by: PathBuf,
    /// The files it hides (may be empty when nothing was below it).
    pub hidden: Vec<PathBuf>,
}

/// The visible descriptors after applying the override rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Catalog {
    /// The directories looked at, highest precedence first.
    pub searched: Vec<PathBuf>,
    /// Ordered by file name: the order candidates are tried in.
    pub entries: Vec<CatalogEntry>,
    pub hidden: Vec<HiddenName>,
    /// Directories that exist but could not be read.
    pub problems: Vec<String>,
}

impl Catalog {
    /// Reads every `*.json` file of the search directories.
    pub fn load(paths: &SearchPaths) -> Catalog {
        // file name -> files of that name, highest precedence first.
        let mut by_name: BTreeMap<OsString, Vec<PathBuf>> = BTreeMap::new();
        let mut problems = Vec::new();
        for dir in &paths.dirs {
            let read = match std::fs::read_dir(dir) {
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    problems.push(format!("cannot read {}: {e}", dir.display()));
                    continue;
                }
            };
            for item in read {
                let item = match item {
                    Ok(item) => item,
                    Err(e) => {
                        problems.push(format!("cannot list {}: {e}", dir.display()));
                        continue;
                    }
                };
                let name = item.file_name();
                if Path::new(&name).extension().is_none_or(|ext| ext != "json") {
                    continue;
                }
                let path = item.path();
                // Follows symlinks: distros link descriptors between packages.
                if path.is_dir() {
                    continue;
                }
                by_name.entry(name).or_default().push(path);
            }
        }

        let mut entries = Vec::new();
        let mut hidden = Vec::new();
        // BTreeMap<OsString> iterates in byte order of the names, which is
        // the strcmp order QEMU and libvirt sort by.
        for (name, mut files) in by_name {
            let file_name = name.to_string_lossy().into_owned();
            let top = files.remove(0);
            let empty = std::fs::metadata(&top).map(|m| m.len() == 0);
            match empty {
                Ok(true) => hidden.push(HiddenName {
                    file_name,
                    by: top,
                    hidden: files,
                }),
                Ok(false) => {
                    let descriptor = std::fs::read_to_string(&top)
                        .map_err(|e| format!("cannot read: {e}"))
                        .and_then(|text| {
                            Descriptor::from_json(&text)
                                .map_err(|e| format!("invalid descriptor: {e}"))
                        });
                    entries.push(CatalogEntry {
                        path: top,
                        file_name,
                        overrides: files,
                        descriptor,
                    });
                }
                Err(e) => entries.push(CatalogEntry {
                    path: top,
                    file_name,
                    overrides: files,
                    descriptor: Err(format!("cannot read: {e}")),
                }),
            }
        }
        Catalog {
            searched: paths.dirs.clone(),
            entries,
            hidden,
            problems,
        }
    }

    /// The key facts of every visible descriptor, in candidate order
    /// (`ch-launcher firmware list`).
    pub fn summaries(&self) -> Vec<DescriptorSummary> {
        self.entries.iter().map(DescriptorSummary::of).collect()
    }
}

/// What `firmware list` shows for one descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DescriptorSummary {
    pub path: PathBuf,
    pub file_name: String,
    pub description: String,
    pub interfaces: Vec<String>,
    /// `flash (split)`, `flash (stateless)`, `memory`, `kernel`.
    pub mapping: String,
    pub executable: Option<PathBuf>,
    pub nvram_template: Option<PathBuf>,
    /// `x86_64: pc-q35-*, pc-i440fx-*`.
    pub targets: Vec<String>,
    pub features: Vec<String>,
    pub overrides: Vec<PathBuf>,
    /// Files the descriptor names that do not exist on this host.
    pub missing_files: Vec<PathBuf>,
    /// Why the file is unusable, if it is.
    pub error: Option<String>,
}

impl DescriptorSummary {
    fn of(entry: &CatalogEntry) -> Self {
        let mut s = DescriptorSummary {
            path: entry.path.clone(),
            file_name: entry.file_name.clone(),
            description: String::new(),
            interfaces: Vec::new(),
            mapping: String::new(),
            executable: None,
            nvram_template: None,
            targets: Vec::new(),
            features: Vec::new(),
            overrides: entry.overrides.clone(),
            missing_files: Vec::new(),
            error: None,
        };
        let d = match &entry.descriptor {
            Ok(d) => d,
            Err(e) => {
                s.error = Some(e.clone());
                return s;
            }
        };
        s.description = d.description.clone();
        s.interfaces = d.interface_types.iter().map(|i| i.to_string()).collect();
        s.mapping = d.mapping.kind_label();
        s.executable = d.mapping.executable().map(Path::to_path_buf);
        if let Mapping::Flash {
            nvram_template: Some(t),
            ..
        } = &d.mapping
        {
            s.nvram_template = Some(t.filename.clone());
        }
        s.targets = d
            .targets
            .iter()
            .map(|t| format!("{}: {}", t.architecture, t.machines.join(", ")))
            .collect();
        s.features = d.features.iter().map(|f| f.to_string()).collect();
        s.missing_files = s
            .executable
            .iter()
            .chain(s.nvram_template.iter())
            .filter(|p| !p.exists())
            .cloned()
            .collect();
        s
    }
}

impl fmt::Display for DescriptorSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.path.display())?;
        if let Some(e) = &self.error {
            return writeln!(f, "  unusable: {e}");
        }
        if !self.description.is_empty() {
            writeln!(f, "  description: {}", self.description)?;
        }
        writeln!(f, "  interfaces:  {}", self.interfaces.join(", "))?;
        writeln!(f, "  mapping:     {}", self.mapping)?;
        if let Some(e) = &self.executable {
            writeln!(f, "  executable:  {}", e.display())?;
        }
        if let Some(t) = &self.nvram_template {
            writeln!(f, "  nvram:       {} (template)", t.display())?;
        }
        for t in &self.targets {
            writeln!(f, "  target:      {t}")?;
        }
        writeln!(f, "  features:    {}", self.features.join(", "))?;
        for o in &self.overrides {
            writeln!(f, "  overrides:   {}", o.display())?;
        }
        for m in &self.missing_files {
            writeln!(f, "  MISSING:     {}", m.display())?;
        }
        Ok(())
    }
}

impl fmt::Display for Catalog {
    /// The `firmware list` text: searched directories, then each visible
    /// descriptor in candidate order, then hidden names and problems.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "QEMU firmware descriptors (highest precedence directory first):"
        )?;
        for d in &self.searched {
            writeln!(f, "  {}", d.display())?;
        }
        if self.entries.is_empty() {
            writeln!(f, "no descriptors found")?;
        }
        for s in self.summaries() {
            write!(f, "{s}")?;
        }
        for h in &self.hidden {
            let list: Vec<String> = h.hidden.iter().map(|p| p.display().to_string()).collect();
            writeln!(
                f,
                "hidden: {} (empty file {}{}{})",
                h.file_name,
                h.by.display(),
                if list.is_empty() { "" } else { " hides " },
                list.join(", ")
            )?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const UEFI: &str = r#"{"description": "D", "interface-types": ["uefi"],
        "mapping": {"device": "memory", "filename": "/fw.bin"},
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
        "features": []}"#;

    fn tree() -> (tempfile::TempDir, SearchPaths) {
        let t = tempfile::tempdir().expect("tempdir");
        let dirs = ["user", "etc", "share"].map(|d| t.path().join(d));
        for d in &dirs {
            fs::create_dir_all(d).expect("mkdir");
        }
        (t, SearchPaths::new(dirs.to_vec()))
    }

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).expect("write");
    }

    #[test]
    fn more_specific_directory_overrides_same_file_name() {
        let (_t, paths) = tree();
        write(&paths.dirs[2], "50-ovmf.json", UEFI);
        write(
            &paths.dirs[1],
            "50-ovmf.json",
            &UEFI.replace("\"D\"", "\"etc\""),
        );
        let c = Catalog::load(&paths);
        assert_eq!(c.entries.len(), 1);
        let e = &c.entries[0];
        assert_eq!(e.path, paths.dirs[1].join("50-ovmf.json"));
        assert_eq!(e.overrides, vec![paths.dirs[2].join("50-ovmf.json")]);
        assert_eq!(e.descriptor.as_ref().expect("parses").description, "etc");

        write(
            &paths.dirs[0],
            "50-ovmf.json",
            &UEFI.replace("\"D\"", "\"user\""),
        );
        let c = Catalog::load(&paths);
        assert_eq!(c.entries[0].path, paths.dirs[0].join("50-ovmf.json"));
        assert_eq!(c.entries[0].overrides.len(), 2);
    }

    #[test]
    fn empty_file_hides_less_specific_ones() {
        let (_t, paths) = tree();
        write(&paths.dirs[2], "50-ovmf.json", UEFI);
        write(&paths.dirs[2], "60-other.json", UEFI);
        write(&paths.dirs[1], "50-ovmf.json", "");
        let c = Catalog::load(&paths);
        let names: Vec<&str> = c.entries.iter().map(|e| e.file_name.as_str()).collect();
        assert_eq!(names, vec!["60-other.json"]);
        assert_eq!(c.hidden.len(), 1);
        assert_eq!(c.hidden[0].by, paths.dirs[1].join("50-ovmf.json"));
        assert_eq!(c.hidden[0].hidden, vec![paths.dirs[2].join("50-ovmf.json")]);
    }

    #[test]
    fn entries_are_ordered_by_file_name_across_directories() {
        let (_t, paths) = tree();
        write(&paths.dirs[2], "30-b.json", UEFI);
        write(&paths.dirs[0], "40-c.json", UEFI);
        write(&paths.dirs[1], "10-a.json", UEFI);
        write(&paths.dirs[2], "README", "not json");
        write(&paths.dirs[2], "99-x.json.bak", UEFI);
        let c = Catalog::load(&paths);
        let names: Vec<&str> = c.entries.iter().map(|e| e.file_name.as_str()).collect();
        assert_eq!(names, vec!["10-a.json", "30-b.json", "40-c.json"]);
    }

    #[test]
    fn broken_file_is_reported_without_hiding_others_and_missing_dirs_are_fine() {
        let t = tempfile::tempdir().expect("tempdir");
        let share = t.path().join("share");
        fs::create_dir_all(&share).expect("mkdir");
        write(&share, "10-broken.json", "{ not json");
        write(&share, "20-good.json", UEFI);
        let c = Catalog::load(&SearchPaths::new(vec![t.path().join("absent"), share]));
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.entries.len(), 2);
        let err = c.entries[0].descriptor.as_ref().expect_err("broken");
        assert!(err.starts_with("invalid descriptor"), "{err}");
        assert!(c.entries[1].descriptor.is_ok());
        let listing = c.to_string();
        assert!(
            listing.contains("unusable: invalid descriptor"),
            "{listing}"
        );
    }

    #[test]
    fn user_config_dir_follows_xdg_then_home() {
        assert_eq!(
            user_config_dir(Some("/x".into()), Some("/home/u".into())),
            Some(PathBuf::from("/x/qemu/firmware"))
        );
        assert_eq!(
            user_config_dir(Some("relative".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/qemu/firmware"))
        );
        assert_eq!(
            user_config_dir(None, Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/qemu/firmware"))
        );
        assert_eq!(user_config_dir(None, None), None);
    }

    #[test]
    fn from_env_puts_user_dir_first_and_distro_dir_last() {
        let p = SearchPaths::from_env();
        assert_eq!(p.dirs.last(), Some(&PathBuf::from(DISTRO_DIR)));
        let n = p.dirs.len();
        assert_eq!(p.dirs[n - 2], PathBuf::from(SYSCONF_DIR));
    }

    #[test]
    fn under_root_prefixes_system_dirs() {
        let p = SearchPaths::under_root(Path::new("/img"));
        assert_eq!(
            p.dirs,
            vec![
                PathBuf::from("/img/etc/qemu/firmware"),
                PathBuf::from("/img/usr/share/qemu/firmware")
            ]
        );
    }

    #[test]
    fn summary_lists_missing_files() {
        let (_t, paths) = tree();
        write(&paths.dirs[2], "50-x.json", UEFI);
        let s = &Catalog::load(&paths).summaries()[0];
        assert_eq!(s.mapping, "memory");
        assert_eq!(s.missing_files, vec![PathBuf::from("/fw.bin")]);
        assert_eq!(s.targets, vec!["x86_64: pc-q35-*".to_owned()]);
    }
}
