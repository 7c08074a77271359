//! `enlist schedule`: where each scheduled group stands and its next change; skip it, or run
//! it now.

use std::path::Path;

use clap::Subcommand;
use serde_json::Value;

use super::client::head;

#[derive(Subcommand)]
pub enum ScheduleCmd {
    /// Each scheduled group: enlisted or released, since when, and the next change.
    List,
    /// The group's next scheduled change does not happen.
    Skip { group: String },
    /// Undo a skip: the group's next change happens as scheduled.
    Unskip { group: String },
    /// Make the group's next change now (enlist: wake and boot the room; release: drain and
    /// hand the PCs back); it holds until the scheduled change after it.
    RunNow { group: String },
}

pub fn run(config: &Path, cmd: Option<ScheduleCmd>) -> anyhow::Result<()> {
    let h = head(config)?;
    let (group, action) = match cmd.unwrap_or(ScheduleCmd::List) {
        ScheduleCmd::List => {
            let v = h.call("GET", "/api/v1/schedules", None)?;
            let list = v["schedules"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no schedules: see schedules: in the config");
            }
            for s in &list {
                println!("{}", line(s));
            }
            return Ok(());
        }
        ScheduleCmd::Skip { group } => (group, "skip"),
        ScheduleCmd::Unskip { group } => (group, "unskip"),
        ScheduleCmd::RunNow { group } => (group, "run-now"),
    };
    let v = h.call("POST", &format!("/api/v1/schedules/{group}/{action}"), None)?;
    println!("{}", line(&v));
    Ok(())
}

/// `night: enlisted since 2026-11-27T20:00:00+01:00; next: released at ... (skipped)`.
fn line(s: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = format!("{}: {}", text(&s["group"]), text(&s["phase"]));
    if let Some(since) = s["since"].as_str() {
        out += &format!(" since {since}");
    }
    match s["next"].as_object() {
        Some(n) => {
            out += &format!("; next: {} at {}", text(&n["phase"]), text(&n["at"]));
            if n["skipped"].as_bool() == Some(true) {
                out += " (skipped)";
            }
        }
        None => out += "; no change ahead",
    }
    out + &format!(
        "  [enlist \"{}\", release \"{}\"]",
        text(&s["enlist"]),
        text(&s["release"])
    )
}
