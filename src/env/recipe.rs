//! A job environment's recipe (`images/env.yaml`): which Debian release, from where, for
//! which architectures, with which packages. Checked here, before any download.

use std::path::Path;

use serde::Deserialize;

pub use crate::image::recipe::RecipeError;

/// The recipe as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvRecipe {
    /// Debian's release: the head's own (its slurmctld and the nodes' slurmd must be one
    /// Slurm version).
    #[serde(default = "default_suite")]
    pub suite: String,
    /// The Debian mirror (a site's proxy or mirror goes here).
    #[serde(default = "default_mirror")]
    pub mirror: String,
    /// Debian architectures to build: `i386` (Pentium II and up: Debian's i386 is i686 without
    /// SSE2) and `amd64`.
    pub architectures: Vec<String>,
    /// What jobs need, as Debian package names; slurmd, munge and iptables come along always.
    pub packages: Vec<String>,
}

/// The packages every environment has: the Slurm daemons run inside it, and the node's
/// filter of slurmd's port is loaded by its iptables.
pub const ALWAYS: [&str; 3] = ["slurmd", "munge", "iptables"];

/// The architectures a node can be.
pub const ARCHES: [&str; 2] = ["i386", "amd64"];

fn default_suite() -> String {
    "bookworm".into()
}

fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}

impl EnvRecipe {
    pub fn load(path: &Path) -> Result<EnvRecipe, RecipeError> {
        let r: EnvRecipe = crate::image::recipe::load_yaml(path)?;
        r.check().map_err(|message| RecipeError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(r)
    }

    /// Names mmdebstrap and apt will see: nothing that could be read as an option.
    pub fn check(&self) -> Result<(), String> {
        if self.architectures.is_empty() {
            return Err(format!("architectures: name one of {}", ARCHES.join(", ")));
        }
        for a in &self.architectures {
            if !ARCHES.contains(&a.as_str()) {
                return Err(format!(
                    "architectures: {a:?} is not one of {}",
                    ARCHES.join(", ")
                ));
            }
        }
        for p in &self.packages {
            if !package_name(p) {
                return Err(format!(
                    "packages: {p:?} is not a Debian package name (lower-case letters, digits, + - .)"
                ));
            }
        }
        if !package_name(&self.suite) {
            return Err(format!(
                "suite: {:?} is not a Debian release name",
                self.suite
            ));
        }
        if !(self.mirror.starts_with("http://") || self.mirror.starts_with("https://"))
            || self
                .mirror
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!("mirror: {:?} is not an http(s) URL", self.mirror));
        }
        Ok(())
    }

    /// Every package of the environment, the recipe's first, each once.
    pub fn all_packages(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for p in self.packages.iter().map(String::as_str).chain(ALWAYS) {
            if !all.iter().any(|a| a == p) {
                all.push(p.to_string());
            }
        }
        all
    }
}

/// Debian policy 5.6.1: lower case letters, digits, `+ - .`, at least two long, starting
/// with a letter or digit.
fn package_name(p: &str) -> bool {
    p.len() >= 2
        && p.len() <= 100
        && p.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && p.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(yaml: &str) -> Result<EnvRecipe, String> {
        let r: EnvRecipe = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        r.check().map(|()| r)
    }

    #[test]
    fn a_recipe_names_arches_and_packages_and_gets_the_slurm_daemons() {
        let r = recipe("architectures: [i386]\npackages: [python3-minimal, munge]\n").unwrap();
        assert_eq!(r.suite, "bookworm");
        assert_eq!(
            r.all_packages(),
            ["python3-minimal", "munge", "slurmd", "iptables"]
        );
    }

    #[test]
    fn names_that_could_be_options_or_unknown_arches_are_refused() {
        for (yaml, why) in [
            (
                "architectures: [i386]\npackages: [--force-yes]\n",
                "packages",
            ),
            ("architectures: [i386]\npackages: [Python3]\n", "packages"),
            ("architectures: [arm64]\npackages: []\n", "architectures"),
            ("architectures: []\npackages: []\n", "architectures"),
            (
                "architectures: [i386]\npackages: []\nmirror: file:///etc\n",
                "mirror",
            ),
            (
                "architectures: [i386]\npackages: []\nsuite: '-x'\n",
                "suite",
            ),
        ] {
            let e = recipe(yaml).unwrap_err();
            assert!(e.starts_with(why), "{yaml}: {e}");
        }
    }
}
