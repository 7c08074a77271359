//! `enlist exec`: a command on many nodes at once, as clush prints it. Each node's lines as
//! they come (`node-01: ...`; the agents report new output every second), or with `-b` identical answers folded under one header with the
//! node set (`node-[01-03,07] (4)`). A node that fails, is killed, times out or cannot be
//! reached says so on stderr; `-S` exits with the largest code (a signal N counts 128+N, a
//! timeout 124, an unreachable node 255).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use enlist_api::admin::{
    CopyRequest, ExecRequest, ExecStarted, ExecStatus, NodeOutcome, RunView,
    DEFAULT_EXEC_TIMEOUT_SECS, DEFAULT_FANOUT,
};

use super::client::head;

/// The nodes a run goes to, as clush names them (exec and copy).
#[derive(Args)]
pub struct Selection {
    /// Nodes by name or host list: `node-[01-20],lab-pc-7`, `@group` too.
    #[arg(long, short = 'w', conflicts_with_all = ["group", "all"])]
    nodes: Option<String>,
    /// The nodes of a group.
    #[arg(long, short = 'g', conflicts_with = "all")]
    group: Option<String>,
    /// Every node that is up.
    #[arg(long, short = 'a')]
    all: bool,
    /// Leave these nodes out (a host list, `@group` too).
    #[arg(long, short = 'x')]
    exclude: Option<String>,
    /// Nodes running it at once at most.
    #[arg(long, short = 'f', default_value_t = DEFAULT_FANOUT)]
    fanout: usize,
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    select: Selection,
    /// Seconds a node may take before its command is killed.
    #[arg(long, short = 'u', default_value_t = DEFAULT_EXEC_TIMEOUT_SECS)]
    timeout: u32,
    /// Fold identical answers of several nodes under one header.
    #[arg(short = 'b')]
    fold: bool,
    /// Exit with the largest of the nodes' exit codes.
    #[arg(short = 'S')]
    maxrc: bool,
    /// Print the run as JSON once it has ended (each node's output, exit code or signal,
    /// or why it was unreachable), instead of the lines as they come.
    #[arg(long, conflicts_with = "fold")]
    json: bool,
    /// The command (run by /bin/sh -c on each node, as root).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
pub struct CopyArgs {
    #[command(flatten)]
    select: Selection,
    /// The file's permission bits on the nodes, in octal.
    #[arg(long, short = 'm', default_value = "0644", value_parser = octal_mode)]
    mode: u32,
    /// Print the run as JSON once it has ended.
    #[arg(long)]
    json: bool,
    /// The file on this machine (at most 1 MiB).
    source: std::path::PathBuf,
    /// Where it goes on each node: an absolute path (a folder's path ending in `/` takes the
    /// source's name).
    dest: String,
}

fn octal_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?}: permission bits in octal (0644)"))
}

/// One node's answer as the terminal shows it (output made printable), ordered so identical
/// answers fold together.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Answer(NodeOutcome);

impl Answer {
    fn from(o: &NodeOutcome) -> Answer {
        Answer(NodeOutcome {
            node: String::new(),
            output: printable(&o.output),
            reason: o.reason.as_deref().map(printable),
            ..o.clone()
        })
    }

    /// What goes to stderr besides the output, if anything.
    fn complaint(&self) -> Option<String> {
        let o = &self.0;
        match o.status {
            ExecStatus::Exited if o.exit == Some(0) => None,
            ExecStatus::Exited => Some(format!("exited with exit code {}", o.exit.unwrap_or(0))),
            ExecStatus::Signal => Some(format!("killed by signal {}", o.signal.unwrap_or(0))),
            ExecStatus::Timeout => Some("command timeout".into()),
            _ => Some(format!(
                "unreachable: {}",
                o.reason.as_deref().unwrap_or("")
            )),
        }
    }
}

/// A node's output as it may reach the admin's terminal: control characters other than newline
/// and tab shown as `^X` (as `cat -v`), so a node cannot send escape sequences that rewrite
/// the screen, the window title or the clipboard (a root shell on a node is not a root shell
/// on the admin's terminal).
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\u{7f}' => out.push_str("^?"),
            c if (c as u32) < 0x20 => {
                out.push('^');
                out.push(char::from(b'@' + c as u8));
            }
            // C1 controls (CSI, OSC as one character each in some terminals).
            c if ('\u{80}'..='\u{9f}').contains(&c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// With `-x`, or a `@group` in `-w`, the selection is made here and the head is sent the
/// names; otherwise the head selects (`-w`, `-g`, `-a` as they are).
fn narrowed(h: &super::client::Head, a: &Selection) -> anyhow::Result<Option<String>> {
    let groups_in_w = a.nodes.as_deref().is_some_and(|w| w.contains('@'));
    if a.exclude.is_none() && !groups_in_w {
        return Ok(None);
    }
    let spec = match (&a.nodes, &a.group) {
        (Some(w), _) => w.clone(),
        (None, Some(g)) => format!("@{g}"),
        (None, None) if a.all => {
            let enlist_api::admin::NodeList { nodes, .. } = h.get("/api/v1/nodes")?;
            let up: Vec<String> = nodes
                .into_iter()
                .filter(|n| n.online)
                .map(|n| n.name)
                .collect();
            anyhow::ensure!(!up.is_empty(), "no node is up");
            enlist::hostlist::fold(&up)
        }
        (None, None) => anyhow::bail!("name the nodes: -w, -g or -a"),
    };
    let names = super::nodes::selected(h, &spec, a.exclude.as_deref())?;
    Ok(Some(enlist::hostlist::fold(&names)))
}

/// Who a run goes to: the head's request fields (nodes, group, all).
fn targets(
    h: &super::client::Head,
    a: &Selection,
) -> anyhow::Result<(Option<String>, Option<String>, bool)> {
    Ok(match narrowed(h, a)? {
        Some(names) => (Some(names), None, false),
        None => (a.nodes.clone(), a.group.clone(), a.all),
    })
}

pub fn run(config: &Path, a: ExecArgs) -> anyhow::Result<i32> {
    let h = head(config)?;
    let (nodes, group, all) = targets(&h, &a.select)?;
    let request = ExecRequest {
        command: a.command.join(" "),
        timeout_secs: Some(a.timeout),
        nodes,
        group,
        all,
        fanout: Some(a.select.fanout),
    };
    let started: ExecStarted = h.post("/api/v1/exec", Some(&request))?;
    let (rc, _) = follow(&h, started.id, a.fold, a.json)?;
    Ok(if a.maxrc { rc } else { 0 })
}

/// `enlist copy`: the file sent to the nodes (each fetches it and checks it against the
/// signed size and hash); each node's failure named. Exits with the largest code, as pdcp.
pub fn copy(config: &Path, a: CopyArgs) -> anyhow::Result<i32> {
    use base64::Engine;
    use std::io::Read;
    let mut bytes = vec![];
    std::fs::File::open(&a.source)
        .and_then(|f| {
            f.take(enlist_api::MAX_COPY_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .with_context(|| format!("cannot read {}", a.source.display()))?;
    anyhow::ensure!(
        bytes.len() <= enlist_api::MAX_COPY_BYTES,
        "{}: larger than {} bytes (enlist copy is for configuration files and scripts; \
         put larger files in the shared home or an image)",
        a.source.display(),
        enlist_api::MAX_COPY_BYTES
    );
    let mut path = a.dest.clone();
    if path.ends_with('/') {
        let name = a
            .source
            .file_name()
            .context("the source has no file name")?;
        path.push_str(&name.to_string_lossy());
    }
    let h = head(config)?;
    let (nodes, group, all) = targets(&h, &a.select)?;
    let request = CopyRequest {
        path,
        mode: Some(a.mode),
        content_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
        nodes,
        group,
        all,
        fanout: Some(a.select.fanout),
    };
    let started: ExecStarted = h.post("/api/v1/copy", Some(&request))?;
    let (rc, view) = follow(&h, started.id, true, a.json)?;
    let written: Vec<&str> = view
        .results
        .iter()
        .filter(|r| r.status == ExecStatus::Exited && r.exit == Some(0))
        .map(|r| r.node.as_str())
        .collect();
    if !a.json && !written.is_empty() {
        println!(
            "{} ({} bytes): written on {} ({})",
            request.path,
            bytes.len(),
            enlist::hostlist::fold(&written),
            written.len()
        );
    }
    Ok(rc)
}

/// Poll run `id` until it ends, printing as it goes (or folded, or as JSON at the end); the
/// largest of the nodes' exit codes (a signal 128+N, a timeout 124, unreachable 255).
fn follow(
    h: &super::client::Head,
    id: u64,
    fold: bool,
    json: bool,
) -> anyhow::Result<(i32, RunView)> {
    // Per node: bytes of its output printed so far, and whether it has ended.
    let mut printed: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    let view = loop {
        let v: RunView = h.get(&format!("/api/v1/exec/{id}"))?;
        if !fold && !json {
            for r in &v.results {
                let seen = printed.entry(r.node.clone()).or_default();
                if !seen.1 {
                    *seen = print_new(&r.node, &Answer::from(r), seen.0);
                }
            }
        }
        if v.done {
            break v;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let answers: Vec<(String, Answer)> = view
        .results
        .iter()
        .map(|r| (r.node.clone(), Answer::from(r)))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else if fold {
        print_folded(&answers);
    }
    let rc = answers.iter().map(|(_, a)| a.0.code()).max().unwrap_or(0);
    Ok((rc.clamp(0, 255), view))
}

/// Print what `node` has printed since byte `from`: whole lines while it runs, the rest and
/// how it ended once it has. Returns the new position and whether it has ended.
fn print_new(node: &str, a: &Answer, from: usize) -> (usize, bool) {
    let ended = !a.0.status.pending();
    let new = a.0.output.get(from..).unwrap_or("");
    let upto = if ended {
        new.len()
    } else {
        new.rfind('\n').map_or(0, |i| i + 1)
    };
    // A closed stdout (`| head`) ends the printing, not the program.
    let mut out = std::io::stdout().lock();
    for line in new[..upto].lines() {
        let _ = writeln!(out, "{node}: {line}");
    }
    if ended {
        if a.0.cut_bytes > 0 {
            eprintln!(
                "{node}: [output cut: {} more bytes not shown]",
                a.0.cut_bytes
            );
        }
        if let Some(c) = a.complaint() {
            eprintln!("enlist: {node}: {c}");
        }
    }
    (from + upto, ended)
}

/// Nodes with the same answer under one header, as `clush -b` does.
fn print_folded(answers: &[(String, Answer)]) {
    let mut groups: BTreeMap<&Answer, Vec<&str>> = BTreeMap::new();
    for (node, a) in answers {
        groups.entry(a).or_default().push(node);
    }
    let mut text = String::new();
    for (a, nodes) in &groups {
        if !a.0.output.is_empty() || a.0.cut_bytes > 0 {
            let set = enlist::hostlist::fold(nodes);
            text.push_str(&format!(
                "---------------\n{set} ({})\n---------------\n",
                nodes.len()
            ));
            text.push_str(&a.0.output);
            if !a.0.output.ends_with('\n') {
                text.push('\n');
            }
            if a.0.cut_bytes > 0 {
                text.push_str(&format!(
                    "[output cut: {} more bytes not shown]\n",
                    a.0.cut_bytes
                ));
            }
        }
    }
    // A closed stdout (`| head`) ends the printing, not the program.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    for (a, nodes) in &groups {
        if let Some(c) = a.complaint() {
            eprintln!("enlist: {}: {c}", enlist::hostlist::fold(nodes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escape_sequences_from_a_node_do_not_reach_the_terminal() {
        // Clear screen, set the window title, a C1 CSI, a bell, DEL: all shown, none sent.
        let hostile = "ok\n\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}31m\u{7f}\tend\r";
        let shown = printable(hostile);
        assert_eq!(shown, "ok\n^[[2J^[]0;owned^G\\u{9b}31m^?\tend^M");
        assert!(!shown
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'));
        assert_eq!(printable("plain é\n"), "plain é\n");
    }
}
