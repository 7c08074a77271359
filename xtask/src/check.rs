//! `cargo xtask check`: the structure the project keeps, checked on every test run.
//!
//! - No import cycle among the head's top-level modules (`src/<module>`): a module that is
//!   used by another does not use it back, directly or around a loop.
//! - No function in `src/` longer than [`MAX_FN_LINES`] lines unless a `// Long:` comment
//!   right above it (or above its attributes) says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use syn::visit::Visit;

use crate::root;

pub const MAX_FN_LINES: usize = 80;

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(rust_files(&p)?);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(out)
}

/// The top-level module a file of `src/` belongs to (`src/dhcp/server.rs` -> `dhcp`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main" | "cli")).then_some(name)
}

/// `crate::<module>` paths in code (comments stripped, so doc links do not count).
fn uses_of(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for part in code.split("crate::").skip(1) {
            let m: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !m.is_empty() {
                out.insert(m);
            }
        }
    }
    out
}

/// The module graph of `src/`: module -> modules it uses.
pub fn module_graph(src: &Path) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in rust_files(src)? {
        let Some(m) = module_of(src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f)?;
        let entry = g.entry(m.clone()).or_default();
        for u in uses_of(&text) {
            if u != m {
                entry.insert(u);
            }
        }
    }
    Ok(g)
}

/// A cycle in `g`, if there is one (as the list of modules around it).
pub fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        m: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut c = stack[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for n in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, n, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|m| visit(g, m, &mut vec![], &mut done))
}

/// Functions longer than the limit without a `// Long:` reason: (file, line, name, lines).
fn long_functions(file: &Path) -> anyhow::Result<Vec<(String, usize, usize)>> {
    let text = std::fs::read_to_string(file)?;
    let ast = syn::parse_file(&text).with_context(|| file.display().to_string())?;
    let lines: Vec<&str> = text.lines().collect();
    struct V<'a> {
        lines: &'a [&'a str],
        found: Vec<(String, usize, usize)>,
    }
    impl V<'_> {
        fn check(&mut self, name: String, attrs: &[syn::Attribute], span: proc_macro2::Span) {
            let (start, end) = (span.start().line, span.end().line);
            let len = end.saturating_sub(start) + 1;
            if len <= MAX_FN_LINES {
                return;
            }
            // The first line of the item, attributes included; the comment goes above it.
            let first = attrs
                .iter()
                .map(|a| syn::spanned::Spanned::span(a).start().line)
                .min()
                .unwrap_or(start)
                .min(start);
            let reason = self.lines[..first.saturating_sub(1)]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("//"))
                .any(|l| l.trim_start().starts_with("// Long:"));
            if !reason {
                self.found.push((name, start, len));
            }
        }
    }
    impl<'ast> Visit<'ast> for V<'_> {
        fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
            self.check(
                f.sig.ident.to_string(),
                &f.attrs,
                syn::spanned::Spanned::span(f),
            );
            syn::visit::visit_item_fn(self, f);
        }
        fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
            self.check(
                f.sig.ident.to_string(),
                &f.attrs,
                syn::spanned::Spanned::span(f),
            );
            syn::visit::visit_impl_item_fn(self, f);
        }
        fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
            // Test modules are tests: their length is their cases.
            let is_test = m.attrs.iter().any(|a| {
                a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
            });
            if !is_test {
                syn::visit::visit_item_mod(self, m);
            }
        }
    }
    let mut v = V {
        lines: &lines,
        found: vec![],
    };
    v.visit_file(&ast);
    Ok(v.found)
}

pub fn run() -> anyhow::Result<()> {
    let src = root().join("src");
    let g = module_graph(&src)?;
    let mut problems = vec![];
    if let Some(c) = find_cycle(&g) {
        problems.push(format!(
            "import cycle among src/ modules: {}",
            c.join(" -> ")
        ));
    }
    for f in rust_files(&src)? {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        for (name, line, len) in long_functions(&f)? {
            let rel = f.strip_prefix(root()).unwrap_or(&f).display().to_string();
            problems.push(format!(
                "{rel}:{line}: fn {name} is {len} lines (over {MAX_FN_LINES}): split it, or say why above it with `// Long: ...`"
            ));
        }
    }
    if !problems.is_empty() {
        bail!("structure check:\n  {}", problems.join("\n  "));
    }
    eprintln!(
        "xtask: structure ok: {} modules, no import cycle, no function over {MAX_FN_LINES} lines without a reason",
        g.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cycle_and_none_where_there_is_none() {
        let g = |edges: &[(&str, &str)]| {
            let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (a, b) in edges {
                g.entry(a.to_string()).or_default().insert(b.to_string());
                g.entry(b.to_string()).or_default();
            }
            g
        };
        assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
        let c = find_cycle(&g(&[
            ("registry", "dhcp"),
            ("dhcp", "bootscript"),
            ("bootscript", "registry"),
        ]));
        assert_eq!(c.map(|c| c.len()), Some(4));
    }

    #[test]
    fn doc_links_are_not_uses() {
        let u = uses_of("//! see [`crate::registry`]\nuse crate::store::Store; // crate::x\nlet a = crate::metrics::labels;");
        assert_eq!(
            u,
            ["metrics", "store"].into_iter().map(String::from).collect()
        );
    }
}
