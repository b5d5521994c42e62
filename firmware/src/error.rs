//! Why no firmware could be chosen, or why a chosen one cannot be used.
//!
//! Choosing the wrong firmware fails late and obscurely inside the
//! hypervisor, so the errors here carry everything needed to fix the host or
//! the spec: what was searched, what the Domain asked for, and what each
//! candidate lacked.

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// One candidate that did not fit, and every reason why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub path: PathBuf,
    pub lacks: Vec<String>,
}

/// No candidate satisfied the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct NoMatch {
    /// Who was choosing: `QEMU firmware descriptors` or `Cloud Hypervisor firmware`.
    pub chooser: String,
    /// Directories or files looked at.
    pub searched: Vec<PathBuf>,
    /// The request in words (a `Requirements` rendered with `Display`).
    pub asked: String,
    /// Candidates in the order they were tried.
    pub rejected: Vec<Rejected>,
}

impl fmt::Display for NoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "no firmware fits: {}", self.asked)?;
        let searched: Vec<String> = self
            .searched
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        write!(f, "{} searched: {}", self.chooser, searched.join(", "))?;
        if self.rejected.is_empty() {
            write!(f, "\n  no candidates found there")?;
        }
        for r in &self.rejected {
            write!(f, "\n  {}: {}", r.path.display(), r.lacks.join("; "))?;
        }
        Ok(())
    }
}

/// A file a chosen firmware needs that is not on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingFile {
    /// `executable`, `NVRAM template`, `TDVF`, ...
    pub role: String,
    pub path: PathBuf,
}

impl fmt::Display for MissingFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} does not exist", self.role, self.path.display())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirmwareError {
    #[error(transparent)]
    NoMatch(#[from] NoMatch),
    /// The choice is fine but its files are absent (only an error when the
    /// VM is about to run; a dry run reports these as warnings).
    #[error("firmware chosen from {source_name} is not installed: {}", list(.files))]
    Missing {
        /// The descriptor or configuration the choice came from.
        source_name: String,
        files: Vec<MissingFile>,
    },
}

fn list(files: &[MissingFile]) -> String {
    files
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}
