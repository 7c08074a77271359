//! An image version's `manifest.json`: written by `build` when the version is made, read by
//! the image store for the head (kernel options, architecture, the jobs bundle, the cards its
//! drivers take). Older manifests lack later fields: they read as empty.

use serde::{Deserialize, Serialize};

/// The bundle's file name beside vmlinuz and initrd.
pub const BUNDLE_FILE: &str = "jobs-runtime.sqfs";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub kernel_version: String,
    /// Kernel options from the recipe; the head puts them on every node's kernel line.
    pub cmdline: String,
    pub packages: Vec<PackageRecord>,
    pub modules: Vec<String>,
    pub files: Vec<FileRecord>,
    /// The PCI devices its network drivers take: the head warns when a booting PC's card is
    /// none of them. For a kernel with its drivers built in, from the table beside it
    /// (`modules.alias-<release>`, see `alias_table`); empty without one: then the head
    /// cannot tell.
    pub drivers: Vec<DriverAlias>,
    /// The jobs' runtime bundle, when the recipe has a `jobs:` section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleRecord>,
}

/// The jobs' runtime bundle of an image: the head offers `file` to the image's nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BundleRecord {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub packages: Vec<PackageRecord>,
    /// What is in it (programs, plugins, libraries, loader).
    pub contents: Vec<String>,
}

/// A driver and a device pattern it takes (`pci:v00001011d00000019sv*sd*bc*sc*i*`).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct DriverAlias {
    pub pattern: String,
    pub driver: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PackageRecord {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileRecord {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}
