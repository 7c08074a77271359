//! The registry's blocking boundary: its methods that reach the database (SQLite with
//! `synchronous=FULL`: an fsync per write) must not run on the head's async workers, where one
//! slow disk would stall every DHCP, TFTP and HTTP task. Async code calls them only inside the
//! boundary: a closure given to `spawn_blocking`, `http::admin::blocking` or `block_in_place`.
//!
//! Found by reading the code (syn), not by types:
//! - a registry method blocks when it touches `self.store` or calls one that does;
//! - a function of the head blocks when, outside the boundary, it calls a blocking registry
//!   method (on a receiver named `registry`/`reg`, or a `.registry` field) or a blocking
//!   function; functions are told apart by name, so only names defined once count;
//! - in an `async fn` or `async` block, a call to either, outside the boundary, is a finding.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use syn::spanned::Spanned;
use syn::visit::Visit;

use super::{is_test_mod, rust_files};

/// Calls whose closure argument runs off the async workers.
const BOUNDARY: [&str; 3] = ["spawn_blocking", "blocking", "block_in_place"];

/// Whether `e` is the registry (`registry`, `reg`, `x.registry`, `x.registry()`).
fn is_registry(e: &syn::Expr) -> bool {
    match e {
        syn::Expr::Path(p) => p
            .path
            .get_ident()
            .is_some_and(|i| i == "registry" || i == "reg"),
        syn::Expr::Field(f) => matches!(&f.member, syn::Member::Named(n) if n == "registry"),
        syn::Expr::MethodCall(m) => {
            m.method == "registry" || m.method == "clone" && is_registry(&m.receiver)
        }
        syn::Expr::Reference(r) => is_registry(&r.expr),
        syn::Expr::Paren(p) => is_registry(&p.expr),
        _ => false,
    }
}

/// The registry's methods that reach the database.
fn registry_blocking(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    // method -> (touches the store itself, the self methods it calls)
    let mut methods: BTreeMap<String, (bool, BTreeSet<String>)> = BTreeMap::new();
    struct Body {
        store: bool,
        calls: BTreeSet<String>,
    }
    impl<'ast> Visit<'ast> for Body {
        fn visit_expr_field(&mut self, f: &'ast syn::ExprField) {
            let on_self = matches!(&*f.base, syn::Expr::Path(p) if p.path.is_ident("self"));
            if on_self && matches!(&f.member, syn::Member::Named(n) if n == "store") {
                self.store = true;
            }
            syn::visit::visit_expr_field(self, f);
        }
        fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
            if matches!(&*m.receiver, syn::Expr::Path(p) if p.path.is_ident("self")) {
                self.calls.insert(m.method.to_string());
            }
            syn::visit::visit_expr_method_call(self, m);
        }
    }
    for f in rust_files(dir)? {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f)?;
        let ast = syn::parse_file(&text).with_context(|| f.display().to_string())?;
        for item in &ast.items {
            let syn::Item::Impl(imp) = item else { continue };
            let is_registry = matches!(&*imp.self_ty, syn::Type::Path(p)
                if p.path.segments.last().is_some_and(|s| s.ident == "Registry"));
            if !is_registry || imp.trait_.is_some() {
                continue;
            }
            for it in &imp.items {
                let syn::ImplItem::Fn(func) = it else {
                    continue;
                };
                let mut b = Body {
                    store: false,
                    calls: BTreeSet::new(),
                };
                b.visit_block(&func.block);
                methods.insert(func.sig.ident.to_string(), (b.store, b.calls));
            }
        }
    }
    let mut blocking: BTreeSet<String> = methods
        .iter()
        .filter(|(_, (store, _))| *store)
        .map(|(n, _)| n.clone())
        .collect();
    loop {
        let more: Vec<String> = methods
            .iter()
            .filter(|(n, (_, calls))| {
                !blocking.contains(*n) && calls.iter().any(|c| blocking.contains(c))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if more.is_empty() {
            return Ok(blocking);
        }
        blocking.extend(more);
    }
}

/// One function of the head, as far as this check cares.
struct Func {
    name: String,
    is_async: bool,
    /// Calls outside the boundary: (line, callee, on the registry).
    calls: Vec<(usize, String, bool)>,
    /// Calls in async code (this async fn, or an async block inside it) outside the boundary.
    async_calls: Vec<(usize, String, bool)>,
}

/// Walks one function body, tracking whether the code runs on an async worker.
struct Walk {
    in_async: bool,
    in_boundary: bool,
    calls: Vec<(usize, String, bool)>,
    async_calls: Vec<(usize, String, bool)>,
}

impl Walk {
    fn note(&mut self, line: usize, name: String, on_registry: bool) {
        if self.in_boundary {
            return;
        }
        if self.in_async {
            self.async_calls.push((line, name.clone(), on_registry));
        }
        self.calls.push((line, name, on_registry));
    }
}

impl<'ast> Visit<'ast> for Walk {
    fn visit_expr_async(&mut self, a: &'ast syn::ExprAsync) {
        let was = std::mem::replace(&mut self.in_async, true);
        syn::visit::visit_expr_async(self, a);
        self.in_async = was;
    }
    fn visit_expr_call(&mut self, c: &'ast syn::ExprCall) {
        let name = match &*c.func {
            syn::Expr::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        if let Some(n) = &name {
            self.note(c.span().start().line, n.clone(), false);
        }
        if name.as_deref().is_some_and(|n| BOUNDARY.contains(&n)) {
            let (a, b) = (self.in_async, self.in_boundary);
            self.in_async = false;
            self.in_boundary = true;
            c.args.iter().for_each(|e| self.visit_expr(e));
            (self.in_async, self.in_boundary) = (a, b);
            return;
        }
        syn::visit::visit_expr_call(self, c);
    }
    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        let line = m.method.span().start().line;
        self.note(line, m.method.to_string(), is_registry(&m.receiver));
        syn::visit::visit_expr_method_call(self, m);
    }
    // A nested fn item is its own function (walked by the file walk).
    fn visit_item_fn(&mut self, _: &'ast syn::ItemFn) {}
}

fn walk(block: &syn::Block, is_async: bool) -> Walk {
    let mut w = Walk {
        in_async: is_async,
        in_boundary: false,
        calls: vec![],
        async_calls: vec![],
    };
    w.visit_block(block);
    w
}

/// Every function of the head's files (tests left out), with the file it is in.
fn functions(src: &Path) -> anyhow::Result<Vec<(String, Func)>> {
    struct Files<'a> {
        file: &'a str,
        out: &'a mut Vec<(String, Func)>,
    }
    impl Files<'_> {
        fn add(&mut self, sig: &syn::Signature, block: &syn::Block) {
            let w = walk(block, sig.asyncness.is_some());
            self.out.push((
                self.file.to_string(),
                Func {
                    name: sig.ident.to_string(),
                    is_async: sig.asyncness.is_some(),
                    calls: w.calls,
                    async_calls: w.async_calls,
                },
            ));
        }
    }
    impl<'ast> Visit<'ast> for Files<'_> {
        fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
            self.add(&f.sig, &f.block);
            syn::visit::visit_item_fn(self, f);
        }
        fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
            self.add(&f.sig, &f.block);
            syn::visit::visit_impl_item_fn(self, f);
        }
        fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
            if !is_test_mod(&m.attrs) {
                syn::visit::visit_item_mod(self, m);
            }
        }
    }
    let mut out = vec![];
    for f in rust_files(src)? {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f)?;
        let ast = syn::parse_file(&text).with_context(|| f.display().to_string())?;
        let rel = f
            .strip_prefix(src.parent().unwrap_or(src))
            .unwrap_or(&f)
            .display()
            .to_string();
        Files {
            file: &rel,
            out: &mut out,
        }
        .visit_file(&ast);
    }
    Ok(out)
}

/// Calls from async code that reach the database outside the boundary, one line each.
pub fn violations(src: &Path) -> anyhow::Result<Vec<String>> {
    let registry = registry_blocking(&src.join("registry"))?;
    let funcs = functions(src)?;
    let mut defined: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, f) in &funcs {
        *defined.entry(f.name.as_str()).or_default() += 1;
    }
    let blocks_call = |(_, name, on_reg): &(usize, String, bool), helpers: &BTreeSet<String>| {
        (*on_reg && registry.contains(name)) || helpers.contains(name)
    };
    // Sync functions that block, by a unique name; grown to a fixpoint.
    let mut helpers: BTreeSet<String> = BTreeSet::new();
    loop {
        let more: Vec<String> = funcs
            .iter()
            .filter(|(_, f)| !f.is_async && defined[f.name.as_str()] == 1)
            .filter(|(_, f)| !helpers.contains(&f.name))
            .filter(|(_, f)| f.calls.iter().any(|c| blocks_call(c, &helpers)))
            .map(|(_, f)| f.name.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        helpers.extend(more);
    }
    let mut out = vec![];
    for (file, f) in &funcs {
        for c in f.async_calls.iter().filter(|c| blocks_call(c, &helpers)) {
            out.push(format!(
                "{file}:{}: async code in fn {} calls {}(), which reaches the registry's database: call it inside spawn_blocking (or http::admin::blocking)",
                c.0, f.name, c.1
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small head: a registry with a store, a helper that writes history, async handlers.
    fn tree(handlers: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("registry")).unwrap();
        std::fs::write(
            src.join("registry/mod.rs"),
            "impl Registry {\n\
             pub fn store(&self) -> &Store { &self.store }\n\
             pub fn note(&self) { self.save() }\n\
             fn save(&self) { self.store.write() }\n\
             pub fn peers(&self) -> u64 { self.inner().peers }\n\
             }",
        )
        .unwrap();
        std::fs::write(
            src.join("exec.rs"),
            "impl Execs { pub fn answer_run(&self, registry: &Registry) { registry.note() } }",
        )
        .unwrap();
        std::fs::write(src.join("http.rs"), handlers).unwrap();
        dir
    }

    fn found(handlers: &str) -> Vec<String> {
        let dir = tree(handlers);
        violations(&dir.path().join("src")).unwrap()
    }

    #[test]
    fn a_database_call_from_async_code_is_found_directly_or_through_a_helper() {
        let direct = found("async fn h(s: S) { s.registry.note(); }");
        assert_eq!(direct.len(), 1, "{direct:?}");
        assert!(direct[0].contains("fn h calls note()"), "{direct:?}");
        let helper = found("async fn h(s: S) { s.execs.answer_run(&s.registry); }");
        assert_eq!(helper.len(), 1, "{helper:?}");
        assert!(helper[0].contains("answer_run"), "{helper:?}");
        let block = found("fn f(s: S) { tokio::spawn(async move { s.registry.store().x(); }); }");
        assert_eq!(block.len(), 1, "an async block counts: {block:?}");
    }

    #[test]
    fn the_boundary_and_memory_only_calls_are_allowed() {
        assert!(found(
            "async fn h(s: S) {\n\
             let reg = s.registry.clone();\n\
             tokio::task::spawn_blocking(move || reg.note()).await;\n\
             blocking(move || s.execs.answer_run(&reg)).await;\n\
             let n = s.registry.peers();\n\
             }\n\
             fn sync(registry: &Registry) { registry.note() }"
        )
        .is_empty());
    }
}
