//! The PCI devices a kernel's *built-in* network drivers take, kept beside the kernel image.
//!
//! A Debian kernel's drivers are modules, each naming its devices (`alias=` in `.modinfo`), so
//! an image built from one knows which cards it can drive. The i586 kernel has its drivers
//! built in, and Linux 6.1 keeps no device table of built-in drivers. `cargo xtask node kernel`
//! therefore writes one beside `vmlinuz-<release>`, as `modules.alias-<release>` in depmod's
//! format (`alias <pattern> <driver>`): the drivers the build's `modules.builtin` lists, with
//! the patterns the same drivers have as modules in Debian's kernel of the same release.
//! `enlist image build` reads it into the manifest's `drivers`, which is what the head checks a
//! booting PC's card against ("no driver for it in image i586").

use std::path::{Path, PathBuf};

use super::manifest::DriverAlias;

/// The release of a kernel image from its file name, `vmlinuz-<release>` (as `cargo xtask
/// node kernel` names it and `enlist image build` expects it).
pub fn kernel_release(vmlinuz: &Path) -> Option<&str> {
    vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .filter(|v| !v.is_empty())
}

/// Where the table of the kernel image at `vmlinuz` (`.../vmlinuz-<release>`) lives.
pub fn path_beside(vmlinuz: &Path, release: &str) -> PathBuf {
    vmlinuz.with_file_name(format!("modules.alias-{release}"))
}

/// A line of a table that is not `alias <pattern> <driver>`, a comment or blank.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: expected `alias <pattern> <driver>`, found {text:?}")]
pub struct AliasLineError {
    pub path: PathBuf,
    pub line: usize,
    pub text: String,
}

/// The PCI patterns of a table (other buses, ISA and virtio, are left out: the head only
/// knows a card by its PCI id). `path` names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Vec<DriverAlias>, AliasLineError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some("alias"), Some(pattern), Some(driver), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(AliasLineError {
                path: path.into(),
                line: n + 1,
                text: line.chars().take(120).collect(),
            });
        };
        if pattern.starts_with("pci:") {
            out.push(DriverAlias {
                pattern: pattern.into(),
                driver: driver.replace('-', "_"),
            });
        }
    }
    Ok(out)
}

/// The table for the drivers `builtin` names (a `modules.builtin`: one `kernel/.../x.ko` per
/// line), each with the patterns `module_aliases` gives for its name; `source` says where
/// those came from. Returns the text and the built-in drivers that had no PCI pattern there
/// (ISA cards, library code, or drivers the reference kernel does not build).
pub fn render(
    builtin: &str,
    module_aliases: impl Fn(&str) -> Option<Vec<String>>,
    source: &str,
) -> (String, Vec<String>) {
    let mut text = format!(
        "# PCI devices of the drivers built into this kernel (Linux 6.1 writes no such table\n\
         # for built-in drivers): the drivers of its modules.builtin, with the patterns they\n\
         # have as modules in {source}. Written by `cargo xtask node kernel`.\n"
    );
    let mut without = Vec::new();
    for name in builtin.lines().filter_map(module_name) {
        let pci: Vec<String> = module_aliases(&name)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.starts_with("pci:"))
            .collect();
        if pci.is_empty() {
            without.push(name);
            continue;
        }
        for a in pci {
            text.push_str(&format!("alias {a} {name}\n"));
        }
    }
    (text, without)
}

/// Module name as the kernel knows it: file stem with `-` as `_`.
pub(super) fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))?;
    Some(stem.replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_made_from_the_built_in_list_and_read_back() {
        let builtin = "kernel/drivers/net/ethernet/dec/tulip/tulip.ko\n\
                       kernel/drivers/net/ethernet/8390/ne2k-pci.ko\n\
                       kernel/drivers/net/ethernet/3com/3c509.ko\n\
                       kernel/lib/crc32.ko\n";
        let aliases = |name: &str| match name {
            "tulip" => Some(vec![
                "pci:v00001011d00000019sv*sd*bc*sc*i*".to_string(),
                "pci:v00001282d00009102sv*sd*bc*sc*i*".to_string(),
            ]),
            "ne2k_pci" => Some(vec!["pci:v000010ECd00008029sv*sd*bc*sc*i*".to_string()]),
            "3c509" => Some(vec!["isa:3c509".to_string()]),
            _ => None,
        };
        let (text, without) = render(builtin, aliases, "linux-image-6.1.0-50-amd64");
        assert_eq!(without, ["3c509", "crc32"]);
        let table = parse(&text, Path::new("t")).expect("own output parses");
        let pairs: Vec<(&str, &str)> = table
            .iter()
            .map(|d| (d.pattern.as_str(), d.driver.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("pci:v00001011d00000019sv*sd*bc*sc*i*", "tulip"),
                ("pci:v00001282d00009102sv*sd*bc*sc*i*", "tulip"),
                ("pci:v000010ECd00008029sv*sd*bc*sc*i*", "ne2k_pci"),
            ]
        );
    }

    #[test]
    fn a_bad_line_is_named_by_file_and_line() {
        let text = "# header\nalias pci:v1 tulip\nalias pci:v2\n";
        let err = parse(text, Path::new("/k/modules.alias-6.1")).expect_err("refused");
        assert_eq!(err.line, 3);
        assert_eq!(
            err.to_string(),
            "/k/modules.alias-6.1:3: expected `alias <pattern> <driver>`, found \"alias pci:v2\""
        );
        assert!(parse("alias a b c d\n", Path::new("x")).is_err());
        assert!(parse("options tulip debug=1\n", Path::new("x")).is_err());
    }

    #[test]
    fn other_buses_are_left_out() {
        let t = parse(
            "alias virtio:d00000001v* virtio_net\nalias isa:3c509 3c509\n",
            Path::new("x"),
        )
        .expect("parses");
        assert!(t.is_empty());
    }
}
