//! `enlist schedule`: where each scheduled group stands and its next change; skip it, or run
//! it now.

use std::path::Path;

use clap::Subcommand;
use enlist_api::admin::{GroupSchedule, ScheduleAction, ScheduleList};

use super::client::head;

#[derive(Subcommand)]
pub enum ScheduleCmd {
    /// Each scheduled group: enlisted or released, since when, and the next change.
    List {
        /// Print it as JSON (for scripts), not as a table.
        #[arg(long)]
        json: bool,
    },
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
    let (group, action) = match cmd.unwrap_or(ScheduleCmd::List { json: false }) {
        ScheduleCmd::List { json } => {
            let ScheduleList { schedules } = h.get("/api/v1/schedules")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&schedules)?);
                return Ok(());
            }
            if schedules.is_empty() {
                println!("no schedules: see schedules: in the config");
            }
            for s in &schedules {
                println!("{}", line(s));
            }
            return Ok(());
        }
        ScheduleCmd::Skip { group } => (group, ScheduleAction::Skip),
        ScheduleCmd::Unskip { group } => (group, ScheduleAction::Unskip),
        ScheduleCmd::RunNow { group } => (group, ScheduleAction::RunNow),
    };
    let path = format!("/api/v1/schedules/{group}/{}", action.name());
    let v: GroupSchedule = h.post(&path, None::<&()>)?;
    println!("{}", line(&v));
    Ok(())
}

/// `night: enlisted since 2026-11-27T20:00:00+01:00; next: released at ... (skipped)`.
fn line(s: &GroupSchedule) -> String {
    let mut out = format!("{}: {}", s.group, s.phase);
    if let Some(since) = &s.since {
        out += &format!(" since {since}");
    }
    match &s.next {
        Some(n) => {
            out += &format!("; next: {} at {}", n.phase, n.at);
            if n.skipped {
                out += " (skipped)";
            }
        }
        None => out += "; no change ahead",
    }
    out + &format!("  [enlist \"{}\", release \"{}\"]", s.enlist, s.release)
}
