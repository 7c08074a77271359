//! No import cycle at any depth: among the top-level modules of a crate, and among the child
//! modules of every module (`image/`'s files, `registry/`'s files, ...). An edge A -> B means
//! code in A (or below it) names something in B (or below it) by `crate::...`, `super::...` or
//! `self::...`; a child naming its parent's own items is not an edge between siblings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use syn::visit::Visit;

use super::{is_test_mod, rust_files};

/// A module's path below the crate root (`["registry", "live"]`; the root is empty).
pub type ModPath = Vec<String>;

/// The module a file of the crate at `src` is (`src/dhcp/server.rs` -> `dhcp::server`,
/// `src/dhcp/mod.rs` -> `dhcp`, `src/lib.rs` -> the root).
pub fn module_of(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && matches!(parts[0].as_str(), "lib" | "main") {
        parts.clear();
    }
    Some(parts)
}

/// The module paths named by code in a file of module `me` (test modules left out), as
/// absolute paths below the crate root, not yet cut down to a module.
fn named_paths(me: &ModPath, ast: &syn::File) -> Vec<Vec<String>> {
    struct V<'a> {
        me: &'a ModPath,
        found: Vec<Vec<String>>,
    }
    impl V<'_> {
        fn add(&mut self, segs: Vec<String>) {
            let mut abs: Vec<String> = match segs.first().map(String::as_str) {
                Some("crate") => vec![],
                Some("super") | Some("self") => self.me.clone(),
                _ => return,
            };
            for s in segs.into_iter().skip_while(|s| s == "crate") {
                match s.as_str() {
                    "super" => {
                        abs.pop();
                    }
                    "self" => {}
                    _ => abs.push(s),
                }
            }
            self.found.push(abs);
        }
    }
    fn flatten(prefix: &[String], t: &syn::UseTree, out: &mut Vec<Vec<String>>) {
        match t {
            syn::UseTree::Path(p) => {
                let mut v = prefix.to_vec();
                v.push(p.ident.to_string());
                flatten(&v, &p.tree, out);
            }
            syn::UseTree::Name(n) => {
                let mut v = prefix.to_vec();
                v.push(n.ident.to_string());
                out.push(v);
            }
            syn::UseTree::Rename(r) => {
                let mut v = prefix.to_vec();
                v.push(r.ident.to_string());
                out.push(v);
            }
            syn::UseTree::Glob(_) => out.push(prefix.to_vec()),
            syn::UseTree::Group(g) => g.items.iter().for_each(|i| flatten(prefix, i, out)),
        }
    }
    impl<'ast> Visit<'ast> for V<'_> {
        fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
            let mut paths = vec![];
            flatten(&[], &u.tree, &mut paths);
            paths.into_iter().for_each(|p| self.add(p));
        }
        fn visit_path(&mut self, p: &'ast syn::Path) {
            self.add(p.segments.iter().map(|s| s.ident.to_string()).collect());
            syn::visit::visit_path(self, p);
        }
        fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
            if !is_test_mod(&m.attrs) {
                syn::visit::visit_item_mod(self, m);
            }
        }
    }
    let mut v = V { me, found: vec![] };
    v.visit_file(ast);
    v.found
}

/// Every module of the crate at `src` and the modules its code names (each named path cut
/// down to the longest module it is in).
pub fn crate_uses(src: &Path) -> anyhow::Result<BTreeMap<ModPath, BTreeSet<ModPath>>> {
    let mut files = vec![];
    for f in rust_files(src)? {
        let Some(m) = module_of(src, &f) else {
            continue;
        };
        if m.last().is_some_and(|l| l == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(&f)?;
        let ast = syn::parse_file(&text).with_context(|| f.display().to_string())?;
        files.push((m, ast));
    }
    let modules: BTreeSet<ModPath> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut uses: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (m, ast) in &files {
        let entry = uses.entry(m.clone()).or_default();
        for mut p in named_paths(m, ast) {
            while !p.is_empty() && !modules.contains(&p) {
                p.pop();
            }
            if !p.is_empty() && &p != m {
                entry.insert(p);
            }
        }
    }
    Ok(uses)
}

/// For every module, the graph among its children: child -> siblings it names (through
/// anything below them).
pub fn sibling_graphs(
    uses: &BTreeMap<ModPath, BTreeSet<ModPath>>,
) -> BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> {
    let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, targets) in uses {
        for to in targets {
            // The deepest common parent, and the children of it that hold each end.
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            let (Some(a), Some(b)) = (from.get(common), to.get(common)) else {
                continue; // one is inside the other: a parent and its child
            };
            let parent = from[..common].to_vec();
            let g = graphs.entry(parent).or_default();
            g.entry(a.clone()).or_default().insert(b.clone());
            g.entry(b.clone()).or_default();
        }
    }
    graphs
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

/// Every import cycle of the crate at `src`, one line each; and how many modules it has.
pub fn cycles(src: &Path) -> anyhow::Result<(Vec<String>, usize)> {
    let uses = crate_uses(src)?;
    let mut out = vec![];
    for (parent, g) in sibling_graphs(&uses) {
        if let Some(c) = find_cycle(&g) {
            let at = if parent.is_empty() {
                "the crate root".to_string()
            } else {
                parent.join("::")
            };
            out.push(format!(
                "{}: import cycle inside {at}: {}",
                src.display(),
                c.join(" -> ")
            ));
        }
    }
    Ok((out, uses.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ModPath {
        s.split("::")
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    }

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
    fn paths_resolve_to_modules_and_siblings_are_found_at_any_depth() {
        let ast: syn::File = syn::parse_str(
            "use super::{view::NodeView, Registry};\n\
             use crate::store::{now, NodeRow};\n\
             fn f() { crate::image::store::Store::open(); self::inner::g(); }\n\
             #[cfg(test)] mod tests { use crate::jobs::x; }",
        )
        .unwrap();
        let me = p("registry::live");
        let named = named_paths(&me, &ast);
        assert!(named.contains(&p("registry::view::NodeView")));
        assert!(named.contains(&p("registry::Registry")));
        assert!(named.contains(&p("store::now")));
        assert!(named.contains(&p("image::store::Store::open")));
        assert!(named.contains(&p("registry::live::inner::g")));
        assert!(
            !named.iter().any(|n| n.first().is_some_and(|f| f == "jobs")),
            "tests do not count"
        );

        let uses: BTreeMap<ModPath, BTreeSet<ModPath>> = [
            (
                p("registry::live"),
                [p("registry::view"), p("registry")].into(),
            ),
            (p("registry::view"), [p("registry::live")].into()),
            (p("registry"), [p("store")].into()),
            (p("image::store"), [p("registry::live")].into()),
        ]
        .into();
        let graphs = sibling_graphs(&uses);
        let inner = &graphs[&p("registry")];
        assert_eq!(find_cycle(inner).map(|c| c.len()), Some(3), "live <-> view");
        let root = &graphs[&p("")];
        assert!(root["image"].contains("registry"));
        assert!(root["registry"].contains("store"));
        assert_eq!(find_cycle(root), None);
    }
}
