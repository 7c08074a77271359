//! What a dynamically linked program needs to run: its loader (`.interp`) and the shared
//! libraries it names (`DT_NEEDED`), read from the ELF file itself so the jobs' runtime bundle
//! carries exactly its closure. Pure; 32- and 64-bit little-endian (the node architectures).

use object::{Object, ObjectSection};

/// The loader and libraries of one ELF file. Empty for a file that is not ELF or is static.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The program interpreter, an absolute path (`/lib/ld-linux.so.2`).
    pub interp: Option<String>,
    /// Library sonames, in the file's order.
    pub libraries: Vec<String>,
}

/// `DT_NEEDED`: the dynamic section entry naming a needed library.
const DT_NEEDED: u64 = 1;
const DT_NULL: u64 = 0;

pub fn needs(data: &[u8]) -> Needs {
    let Ok(file) = object::File::parse(data) else {
        return Needs::default();
    };
    if !file.is_little_endian() {
        return Needs::default();
    }
    let section = |name: &str| {
        file.section_by_name(name)
            .and_then(|s| s.data().ok())
            .unwrap_or(&[])
    };
    let interp = std::str::from_utf8(section(".interp"))
        .ok()
        .map(|s| s.trim_end_matches('\0').to_string())
        .filter(|s| s.starts_with('/'));
    let dynstr = section(".dynstr");
    let libraries = dynamic_entries(section(".dynamic"), file.is_64())
        .filter(|&(tag, _)| tag == DT_NEEDED)
        .filter_map(|(_, offset)| c_string(dynstr, offset))
        .collect();
    Needs { interp, libraries }
}

/// `(tag, value)` pairs of a `.dynamic` section, up to `DT_NULL`.
fn dynamic_entries(data: &[u8], is_64: bool) -> impl Iterator<Item = (u64, u64)> + '_ {
    let width = if is_64 { 8 } else { 4 };
    let word = move |b: &[u8]| -> u64 {
        let mut v = [0u8; 8];
        v[..width].copy_from_slice(&b[..width]);
        u64::from_le_bytes(v)
    };
    data.chunks_exact(2 * width)
        .map(move |e| (word(&e[..width]), word(&e[width..])))
        .take_while(|&(tag, _)| tag != DT_NULL)
}

/// The NUL-terminated string at `offset` of a string table.
fn c_string(table: &[u8], offset: u64) -> Option<String> {
    let rest = table.get(usize::try_from(offset).ok()?..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_binary_names_libc_and_its_loader() {
        // This test's own executable is dynamically linked against glibc.
        let exe = std::env::current_exe().unwrap();
        let n = needs(&std::fs::read(exe).unwrap());
        assert!(
            n.libraries.iter().any(|l| l.starts_with("libc.so")),
            "{n:?}"
        );
        assert!(
            n.interp.as_deref().is_some_and(|i| i.contains("ld-linux")),
            "{n:?}"
        );
    }

    #[test]
    fn dynamic_entries_of_both_widths_stop_at_null() {
        let mut d32 = Vec::new();
        for (t, v) in [(1u32, 5u32), (1, 0), (0, 0), (1, 9)] {
            d32.extend(t.to_le_bytes());
            d32.extend(v.to_le_bytes());
        }
        assert_eq!(
            dynamic_entries(&d32, false).collect::<Vec<_>>(),
            [(1, 5), (1, 0)]
        );
        let mut d64 = Vec::new();
        for (t, v) in [(1u64, 7u64), (0, 0)] {
            d64.extend(t.to_le_bytes());
            d64.extend(v.to_le_bytes());
        }
        assert_eq!(dynamic_entries(&d64, true).collect::<Vec<_>>(), [(1, 7)]);
        // A torn last entry is ignored, not read past.
        assert_eq!(dynamic_entries(&d64[..20], true).count(), 1);
    }

    #[test]
    fn strings_out_of_the_table_are_none() {
        let t = b"\0libc.so.6\0libm";
        assert_eq!(c_string(t, 1).as_deref(), Some("libc.so.6"));
        assert_eq!(c_string(t, 11), None, "not terminated");
        assert_eq!(c_string(t, 99), None);
        assert_eq!(needs(b"not an elf file"), Needs::default());
    }
}
