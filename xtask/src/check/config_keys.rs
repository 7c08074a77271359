//! Every key of the head's config (each field of the structs in `src/config/wire.rs`) is in
//! `config.example.yaml`, set or commented out (`key:` or `# key:`): the example is where a
//! sysadmin reads what can be set, so a key added without a word there fails the check.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;

/// Keys named in the example: the word before a `:` at the start of a line (past
/// indentation, a comment's `#` and a list's `- `) or of a flow mapping's entry (`{ a: 1, b: 2 }`).
fn example_keys(text: &str) -> HashSet<String> {
    text.lines()
        .flat_map(|l| {
            let t = l.trim_start().trim_start_matches('#').trim_start();
            let t = t.strip_prefix("- ").unwrap_or(t);
            let line_key = t.split_once(':').map(|(k, _)| k.trim());
            let flow = t
                .split(['{', ','])
                .skip(1)
                .filter_map(|part| part.split_once(':').map(|(k, _)| k.trim()));
            line_key.into_iter().chain(flow).collect::<Vec<_>>()
        })
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_string)
        .collect()
}

/// One line per key of `wire` (Rust source) that `example` (YAML) does not name.
pub fn missing(wire: &Path, example: &Path) -> anyhow::Result<Vec<String>> {
    let src = std::fs::read_to_string(wire).with_context(|| wire.display().to_string())?;
    let file = syn::parse_file(&src).with_context(|| wire.display().to_string())?;
    let text = std::fs::read_to_string(example).with_context(|| example.display().to_string())?;
    let keys = example_keys(&text);
    let mut out = vec![];
    for item in file.items {
        let syn::Item::Struct(s) = item else { continue };
        for f in s.fields {
            let Some(name) = f.ident.map(|i| i.to_string()) else {
                continue;
            };
            if !keys.contains(&name) {
                out.push(format!(
                    "config.example.yaml: no `{name}:` ({}.{name} in src/config/wire.rs): document it with its default, set or as a comment",
                    s.ident
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_settings_comments_and_list_items() {
        let k = example_keys(
            "a:\n  b: 1   # c: no\n  # d: 2\n  - e: x\n#   - f: y\nnot a key\nurl: http://x\n# - { g: 1, h: 2 }\n",
        );
        for want in ["a", "b", "d", "e", "f", "url", "g", "h"] {
            assert!(k.contains(want), "{want}: {k:?}");
        }
        assert!(!k.contains("c") && !k.contains("http"), "{k:?}");
    }
}
