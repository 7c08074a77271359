//! No function longer than [`MAX_FN_LINES`] lines unless a `// Long:` comment right above it
//! (or above its attributes) says why. Test modules are left out: their length is their cases.

use std::path::Path;

use anyhow::Context;
use syn::visit::Visit;

use super::is_test_mod;

pub const MAX_FN_LINES: usize = 80;

/// Functions longer than the limit without a `// Long:` reason: (file, line, name, lines).
pub fn long_functions(file: &Path) -> anyhow::Result<Vec<(String, usize, usize)>> {
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
            if !is_test_mod(&m.attrs) {
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
