//! The parsers of text an admin or a tool writes: Slurm host lists (`enlist exec -w`, the
//! admin API), Slurm's `scontrol`/`squeue` output, and a kernel's driver table. None panics;
//! a host list expands within its cap and folds back to the same names.
#![no_main]

use std::path::Path;

use enlist::hostlist;
use enlist::jobs::slurm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(names) = hostlist::expand(text) {
        assert!(names.len() <= hostlist::MAX_HOSTS);
        let folded = hostlist::fold(&names);
        let mut again = hostlist::expand(&folded).expect("a folded list expands");
        let mut names = names;
        names.sort();
        names.dedup();
        again.sort();
        again.dedup();
        assert_eq!(again, names, "{text:?} -> {folded:?}");
    }
    let nodes = slurm::parse_nodes(text);
    let _ = slurm::smallest_mem_per_cpu(&nodes);
    let _ = slurm::jobs_per_node(text);
    let _ = slurm::plain_state(text);
    let _ = enlist::image::alias_table::parse(text, Path::new("modules.alias-fuzz"));
});
