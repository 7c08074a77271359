//! Node OS images: building them from Debian packages (`enlist image build`) and the on-disk
//! store the boot services read them from.

pub mod alias_table;
pub mod build;
pub mod bundle;
pub mod cpio;
pub mod deb;
mod elf;
pub mod error;
pub mod manifest;
pub mod packages;
pub mod recipe;
pub mod store;
