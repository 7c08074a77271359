//! Host lists as Slurm and clush write them: `node-[01-03,07],gpu1` for node-01, node-02,
//! node-03, node-07 and gpu1. Expanded when read from Slurm, folded when shown. Pure.

use std::collections::BTreeMap;

/// Why a host list is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad host list {0:?}")]
pub struct BadHostList(pub String);

/// Most names one list may expand to (a typo like `n[1-99999999]` is an error, not a hang).
pub const MAX_HOSTS: usize = 100_000;

/// Split at the commas that are not inside brackets.
fn top_level(list: &str) -> Result<Vec<&str>, BadHostList> {
    let (mut out, mut depth, mut start) = (vec![], 0i32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(BadHostList(list.into()));
        }
    }
    if depth != 0 {
        return Err(BadHostList(list.into()));
    }
    out.push(&list[start..]);
    Ok(out.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Expand a host list into names, in order.
pub fn expand(list: &str) -> Result<Vec<String>, BadHostList> {
    let bad = || BadHostList(list.into());
    let mut out = vec![];
    for item in top_level(list.trim())? {
        // `a, b` is `a,b`; a name with a space or a control character inside is no host name.
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if item.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let Some(open) = item.find('[') else {
            out.push(item.to_string());
            continue;
        };
        let close = item.find(']').ok_or_else(bad)?;
        let (prefix, ranges, suffix) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
        if suffix.contains(['[', ']']) {
            return Err(bad());
        }
        for r in ranges.split(',') {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let width = a.len();
            let (lo, hi): (u64, u64) =
                (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if lo > hi || out.len() as u64 + (hi - lo) >= MAX_HOSTS as u64 {
                return Err(bad());
            }
            for n in lo..=hi {
                out.push(format!("{prefix}{n:0width$}{suffix}"));
            }
        }
    }
    Ok(out)
}

/// A node selection as clush and scontrol users write it: a host list whose items may also
/// be `@group` (that group's nodes, from `nodes`: name and group of each), minus the names
/// `exclude` selects. In order, each name once; names no node has stay (the head answers
/// "no such node" for them).
pub fn select(
    spec: &str,
    exclude: Option<&str>,
    nodes: &[(String, String)],
) -> Result<Vec<String>, BadHostList> {
    let names = |spec: &str| -> Result<Vec<String>, BadHostList> {
        let mut out = vec![];
        for item in top_level(spec.trim())? {
            match item.trim().strip_prefix('@') {
                Some(group) => out.extend(
                    nodes
                        .iter()
                        .filter(|(_, g)| g == group)
                        .map(|(n, _)| n.clone()),
                ),
                None => out.extend(expand(item)?),
            }
        }
        Ok(out)
    };
    let out = names(spec)?;
    let gone = exclude.map(names).transpose()?.unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    Ok(out
        .into_iter()
        .filter(|n| !gone.contains(n) && seen.insert(n.clone()))
        .collect())
}

/// Fold names into a host list: names that differ only in a trailing number share brackets
/// (`node-01,node-02,node-03` -> `node-[01-03]`). Order: by prefix, then number.
pub fn fold<S: AsRef<str>>(names: &[S]) -> String {
    // prefix -> (digit width, numbers); names without a trailing number stand alone.
    let mut groups: BTreeMap<(String, usize), Vec<u64>> = BTreeMap::new();
    let mut alone = vec![];
    for n in names {
        let n = n.as_ref();
        let digits = n.len() - n.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        match n[n.len() - digits..].parse::<u64>() {
            Ok(num) if digits > 0 => groups
                .entry((n[..n.len() - digits].to_string(), digits))
                .or_default()
                .push(num),
            _ => alone.push(n.to_string()),
        }
    }
    let mut parts = alone;
    for ((prefix, width), mut nums) in groups {
        nums.sort_unstable();
        nums.dedup();
        if nums.len() == 1 {
            parts.push(format!("{prefix}{:0width$}", nums[0]));
            continue;
        }
        let mut ranges = vec![];
        let mut i = 0;
        while i < nums.len() {
            let mut j = i;
            while j + 1 < nums.len() && nums[j + 1] == nums[j] + 1 {
                j += 1;
            }
            ranges.push(if i == j {
                format!("{:0width$}", nums[i])
            } else {
                format!("{:0width$}-{:0width$}", nums[i], nums[j])
            });
            i = j + 1;
        }
        parts.push(format!("{prefix}[{}]", ranges.join(",")));
    }
    parts.sort();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_takes_groups_and_exclusions_as_clush_does() {
        let nodes: Vec<(String, String)> = [
            ("lab101-01", "lab101"),
            ("lab101-02", "lab101"),
            ("lab101-03", "lab101"),
            ("lab102-01", "lab102"),
        ]
        .iter()
        .map(|(n, g)| (n.to_string(), g.to_string()))
        .collect();
        assert_eq!(
            select("@lab101", Some("lab101-03"), &nodes).unwrap(),
            ["lab101-01", "lab101-02"]
        );
        assert_eq!(
            select("lab101-[01-02],@lab102,lab101-01", None, &nodes).unwrap(),
            ["lab101-01", "lab101-02", "lab102-01"],
            "each once, in order"
        );
        assert_eq!(
            select("@lab101,@lab102", Some("@lab101,lab102-01"), &nodes).unwrap(),
            Vec::<String>::new()
        );
        assert!(select("@nope", None, &nodes).unwrap().is_empty());
        assert_eq!(
            select("pc-9", None, &nodes).unwrap(),
            ["pc-9"],
            "unknown names stay"
        );
        assert!(select("lab101-[01", None, &nodes).is_err());
        assert!(select("@lab101", Some("x[1-"), &nodes).is_err());
    }

    #[test]
    fn expands_ranges_lists_and_plain_names() {
        assert_eq!(
            expand("node-[01-03,07],gpu1").unwrap(),
            ["node-01", "node-02", "node-03", "node-07", "gpu1"]
        );
        assert_eq!(expand("n[8-10]").unwrap(), ["n8", "n9", "n10"]);
        assert_eq!(expand("").unwrap(), Vec::<String>::new());
        for bad in [
            "n[1-",
            "n]",
            "n[3-1]",
            "n[a-b]",
            "n[1-2]x[3]",
            "n[[1]]",
            "n[1-999999999]",
            "node 1",
            "no\0de",
        ] {
            assert!(expand(bad).is_err(), "{bad:?}");
        }
        assert_eq!(expand(" a, b ").unwrap(), ["a", "b"], "spaces around names");
    }

    #[test]
    fn folds_back_to_the_short_form() {
        let names = [
            "node-03", "node-05", "node-04", "node-07", "gpu1", "node-12", "head",
        ];
        assert_eq!(fold(&names), "gpu1,head,node-[03-05,07,12]");
        assert_eq!(expand(&fold(&names)).unwrap().len(), names.len());
        assert_eq!(fold(&["node-0a1b2c"]), "node-0a1b2c");
        assert_eq!(fold(&["n1", "n1"]), "n1");
    }
}
