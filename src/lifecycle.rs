//! The life of a node as a pure state machine: a state, an event and the time limits go in; the
//! next state and what else must happen come out. No clock, no database, no I/O: the registry
//! (`super::Registry`) feeds it events and applies its effects.
//!
//! ```text
//!            PXE DHCP           boot files              agent registers     heartbeat
//!   (new) ──► seen ──────────► booting ──────────────► registered ───────► healthy
//!                ▲               │ OS fetched, silent          │ silent         │
//!                │               ▼ for stuck_after             ▼ for lost_after │
//!                │             stuck                          lost ◄────────────┘
//!                │                                             │ heartbeat: healthy again
//!   leaving ─────┘ (its next boot)    agent says leaving: any alive state ──► leaving
//!   registered/healthy ── released with jobs on ──► draining ── (jobs done, agent leaves) ──► leaving
//!   gone ◄── leaving, silent for gone_after; or a released PC answered "boot local disk"
//!   any state ── quarantined (another inventory; its MAC booted while it was up) ──► pending
//!   pending ── approved by an admin ──► seen (its next boot)
//! ```
//!
//! The one rule that matters for security: a node whose agent is alive (`pending`,
//! `registered`, `healthy`) changes only on events that carry the node's signature (or an
//! admin's, or the clock's); DHCP, script and file requests, which anyone can forge, leave it
//! as it is.

use std::time::Duration;

/// Where a node is: the API's type, so the CLI and dashboard read the same names.
pub use enlist_api::admin::NodeState;

/// The state a PC starts in when the head first sees it: `seen`, or `pending` when an admin
/// must let it in first (enrollment `approve`; kept in memory as a candidate until then).
pub fn first_state(awaits_approval: bool) -> NodeState {
    if awaits_approval {
        NodeState::Pending
    } else {
        NodeState::Seen
    }
}

/// Something that happened to a node. Who vouches for it is in the doc of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A network-boot client's DHCP (anyone can send it).
    PxeDhcp,
    /// A boot file was served (anyone can ask for one).
    Fetched,
    /// A released PC was answered "boot from your own disk" (anyone can ask for its script).
    LocalDiskAnswered,
    /// Its agent registered (signed with the node key over a fresh nonce).
    Registered,
    /// A heartbeat (signed).
    Heartbeat,
    /// The agent says it is going (signed).
    Leaving,
    /// An admin approved it.
    Approved,
    /// An admin released it while no agent was online.
    ReleasedOffline,
    /// An admin released it while it runs jobs: the scheduler drains it first.
    DrainStarted,
    /// The head holds it back until an admin approves it again: it registered with another
    /// inventory than before, or another PC booted with its MAC while it was up (both seen
    /// by the head itself: a signed registration, or its own refusal of a boot).
    Quarantined,
    /// The clock: `silent` since the last sign of life.
    Tick { silent: Duration },
}

impl Event {
    /// One of each kind, for exhaustive tests (`Tick` with a zero silence).
    pub const KINDS: [Event; 11] = [
        Event::PxeDhcp,
        Event::Fetched,
        Event::LocalDiskAnswered,
        Event::Registered,
        Event::Heartbeat,
        Event::Leaving,
        Event::Approved,
        Event::ReleasedOffline,
        Event::DrainStarted,
        Event::Quarantined,
        Event::Tick {
            silent: Duration::ZERO,
        },
    ];
}

/// What the state machine knows about a node besides its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// An admin released it: its PXE boots are answered "boot from your own disk".
    pub released: bool,
    /// It fetched its node OS (kernel and initrd) in this boot.
    pub os_fetched: bool,
}

/// How long silence may last in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// An alive node silent this long is `lost`.
    pub lost_after: Duration,
    /// A `leaving` node silent this long is `gone`.
    pub gone_after: Duration,
    /// A booting node that fetched its OS and is silent this long is `stuck`.
    pub stuck_after: Duration,
}

/// What else must happen with a transition. All false: nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Effects {
    /// Forget the agent's session (it is gone; a new one must register).
    pub end_session: bool,
    /// A new boot starts: restart the boot clock and its trace.
    pub new_boot: bool,
    /// The boot is complete: record how long it took, end its boot token.
    pub boot_done: bool,
    /// Revoke the node key (bump its epoch): the PC is handed back.
    pub revoke_key: bool,
}

/// The outcome of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The new state; `None`: unchanged.
    pub to: Option<NodeState>,
    pub effects: Effects,
}

impl Step {
    const STAY: Step = Step {
        to: None,
        effects: Effects {
            end_session: false,
            new_boot: false,
            boot_done: false,
            revoke_key: false,
        },
    };

    fn to(state: NodeState) -> Step {
        Step {
            to: Some(state),
            ..Step::STAY
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Effects)) -> Step {
        f(&mut self.effects);
        self
    }
}

/// The next step of a node in `state` with `facts`, on `event`, under `limits`.
pub fn next(state: NodeState, facts: Facts, event: Event, limits: &Limits) -> Step {
    use NodeState as S;
    match event {
        // Forgeable boot traffic never touches an alive node (see the module doc).
        Event::PxeDhcp | Event::Fetched | Event::LocalDiskAnswered if state.is_alive() => {
            Step::STAY
        }
        // A released PC boots from the network every morning and is sent to its own disk: its
        // script's answer marks it gone, its DHCP and files change nothing.
        Event::PxeDhcp | Event::Fetched if facts.released => Step::STAY,
        Event::PxeDhcp => match state {
            // iPXE's own DHCP after the ROM's is the same boot.
            S::Seen | S::Booting => Step::STAY,
            _ => Step::to(S::Seen).with(|e| {
                e.new_boot = true;
                e.end_session = true;
            }),
        },
        Event::Fetched => match state {
            S::Booting => Step::STAY,
            // A file without a DHCP first: a boot from a floppy or a head restarted mid-boot.
            S::Seen => Step::to(S::Booting),
            _ => Step::to(S::Booting).with(|e| e.new_boot = true),
        },
        Event::LocalDiskAnswered => match state {
            S::Gone => Step::STAY,
            _ => Step::to(S::Gone),
        },
        Event::Registered => Step::to(S::Registered).with(|e| {
            e.boot_done = state.is_booting();
        }),
        Event::Heartbeat => match state {
            S::Registered | S::Lost => Step::to(S::Healthy),
            _ => Step::STAY,
        },
        Event::DrainStarted => match state {
            S::Registered | S::Healthy => Step::to(S::Draining),
            _ => Step::STAY,
        },
        Event::Leaving => match state {
            S::Leaving => Step::STAY,
            _ => Step::to(S::Leaving).with(|e| e.revoke_key = facts.released),
        },
        // Approved, a held-back PC may boot: its next network boot starts it afresh.
        Event::Approved => match state {
            S::Pending => Step::to(S::Seen),
            _ => Step::STAY,
        },
        Event::Quarantined => match state {
            S::Pending => Step::STAY,
            _ => Step::to(S::Pending).with(|e| {
                e.end_session = true;
                e.revoke_key = true;
            }),
        },
        Event::ReleasedOffline => match state {
            S::Released => Step::STAY,
            _ => Step::to(S::Released).with(|e| {
                e.end_session = true;
                e.revoke_key = true;
            }),
        },
        Event::Tick { silent } => tick(state, facts, silent, limits),
    }
}

fn tick(state: NodeState, facts: Facts, silent: Duration, limits: &Limits) -> Step {
    use NodeState as S;
    match state {
        // Held back for an admin: it stays pending, however long it is silent.
        S::Pending => Step::STAY,
        _ if state.is_alive() && silent > limits.lost_after => {
            Step::to(S::Lost).with(|e| e.end_session = true)
        }
        S::Leaving if silent > limits.gone_after => {
            Step::to(S::Gone).with(|e| e.end_session = true)
        }
        S::Booting if facts.os_fetched && silent > limits.stuck_after => Step::to(S::Stuck),
        _ => Step::STAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeState as S;

    const LIMITS: Limits = Limits {
        lost_after: Duration::from_secs(30),
        gone_after: Duration::from_secs(10),
        stuck_after: Duration::from_secs(120),
    };

    fn kind(e: Event) -> &'static str {
        match e {
            Event::PxeDhcp => "dhcp",
            Event::Fetched => "fetch",
            Event::LocalDiskAnswered => "local",
            Event::Registered => "register",
            Event::Heartbeat => "heartbeat",
            Event::Leaving => "leaving",
            Event::Approved => "approve",
            Event::ReleasedOffline => "release",
            Event::DrainStarted => "drain",
            Event::Quarantined => "quarantine",
            Event::Tick { .. } => "tick",
        }
    }

    /// Every state x every event kind: the next state (`-` for unchanged). Ticks here are
    /// silent for longer than every limit; the shorter ones are tested below.
    #[rustfmt::skip]
    const TABLE: [(S, [&str; 11]); 11] = [
        //                dhcp    fetch      local   register      heartbeat  leaving    approve    release     drain       quarantine tick
        (S::Seen,       ["-",    "booting", "gone", "registered", "-",       "leaving", "-",       "released", "-",        "pending", "-"]),
        (S::Booting,    ["-",    "-",       "gone", "registered", "-",       "leaving", "-",       "released", "-",        "pending", "stuck"]),
        (S::Stuck,      ["seen", "booting", "gone", "registered", "-",       "leaving", "-",       "released", "-",        "pending", "-"]),
        (S::Pending,    ["-",    "-",       "-",    "registered", "-",       "leaving", "seen",    "released", "-",        "-",       "-"]),
        (S::Registered, ["-",    "-",       "-",    "registered", "healthy", "leaving", "-",       "released", "draining", "pending", "lost"]),
        (S::Healthy,    ["-",    "-",       "-",    "registered", "-",       "leaving", "-",       "released", "draining", "pending", "lost"]),
        (S::Draining,   ["-",    "-",       "-",    "registered", "-",       "leaving", "-",       "released", "-",        "pending", "lost"]),
        (S::Leaving,    ["seen", "booting", "gone", "registered", "-",       "-",       "-",       "released", "-",        "pending", "gone"]),
        (S::Gone,       ["seen", "booting", "-",    "registered", "-",       "leaving", "-",       "released", "-",        "pending", "-"]),
        (S::Lost,       ["seen", "booting", "gone", "registered", "healthy", "leaving", "-",       "released", "-",        "pending", "-"]),
        (S::Released,   ["seen", "booting", "gone", "registered", "-",       "leaving", "-",       "-",        "-",        "pending", "-"]),
    ];

    #[test]
    fn every_state_and_event_goes_where_the_table_says() {
        let facts = Facts {
            released: false,
            os_fetched: true,
        };
        let long = Duration::from_secs(3600);
        for (state, row) in TABLE {
            assert_eq!(
                row.len(),
                Event::KINDS.len(),
                "{state}: one column per event kind"
            );
            for (event, want) in Event::KINDS.into_iter().zip(row) {
                let event = match event {
                    Event::Tick { .. } => Event::Tick { silent: long },
                    e => e,
                };
                let got = next(state, facts, event, &LIMITS)
                    .to
                    .map_or("-", NodeState::as_str);
                assert_eq!(got, want, "{state} on {}", kind(event));
            }
        }
        // The table names every state once.
        let mut states: Vec<S> = TABLE.iter().map(|(s, _)| *s).collect();
        states.sort();
        assert_eq!(states, S::ALL.to_vec());
    }

    #[test]
    fn forgeable_events_never_change_an_alive_node() {
        for state in S::ALL.into_iter().filter(|s| s.is_alive()) {
            for event in [Event::PxeDhcp, Event::Fetched, Event::LocalDiskAnswered] {
                assert_eq!(
                    next(state, Facts::default(), event, &LIMITS),
                    Step::STAY,
                    "{state} on {}",
                    kind(event)
                );
            }
        }
    }

    #[test]
    fn a_released_pc_booting_its_disk_each_morning_is_only_marked_gone() {
        let f = Facts {
            released: true,
            os_fetched: false,
        };
        for state in [S::Gone, S::Released] {
            assert_eq!(next(state, f, Event::PxeDhcp, &LIMITS).to, None);
            assert_eq!(next(state, f, Event::Fetched, &LIMITS).to, None);
        }
        assert_eq!(
            next(S::Released, f, Event::LocalDiskAnswered, &LIMITS).to,
            Some(S::Gone)
        );
    }

    #[test]
    fn silence_counts_only_past_each_limit() {
        let f = Facts {
            released: false,
            os_fetched: true,
        };
        let tick = |s: u64| Event::Tick {
            silent: Duration::from_secs(s),
        };
        assert_eq!(next(S::Healthy, f, tick(30), &LIMITS).to, None);
        assert_eq!(next(S::Healthy, f, tick(31), &LIMITS).to, Some(S::Lost));
        assert_eq!(next(S::Leaving, f, tick(10), &LIMITS).to, None);
        assert_eq!(next(S::Leaving, f, tick(11), &LIMITS).to, Some(S::Gone));
        assert_eq!(next(S::Booting, f, tick(120), &LIMITS).to, None);
        assert_eq!(next(S::Booting, f, tick(121), &LIMITS).to, Some(S::Stuck));
        let no_os = Facts {
            os_fetched: false,
            ..f
        };
        assert_eq!(
            next(S::Booting, no_os, tick(3600), &LIMITS).to,
            None,
            "a PC that never got its OS is not stuck, it is still booting"
        );
    }

    #[test]
    fn effects_follow_the_transition() {
        let f = Facts::default();
        let lost = next(
            S::Healthy,
            f,
            Event::Tick {
                silent: Duration::from_secs(60),
            },
            &LIMITS,
        );
        assert!(lost.effects.end_session);
        let reboot = next(S::Gone, f, Event::PxeDhcp, &LIMITS);
        assert!(reboot.effects.new_boot && reboot.effects.end_session);
        assert!(
            next(S::Booting, f, Event::Registered, &LIMITS)
                .effects
                .boot_done
        );
        assert!(
            !next(S::Healthy, f, Event::Registered, &LIMITS)
                .effects
                .boot_done
        );
        let released = Facts {
            released: true,
            ..f
        };
        assert!(
            next(S::Healthy, released, Event::Leaving, &LIMITS)
                .effects
                .revoke_key
        );
        assert!(
            !next(S::Healthy, f, Event::Leaving, &LIMITS)
                .effects
                .revoke_key
        );
        assert!(
            next(S::Lost, f, Event::ReleasedOffline, &LIMITS)
                .effects
                .revoke_key
        );
    }

    #[test]
    fn names_round_trip() {
        for s in S::ALL {
            assert_eq!(NodeState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(NodeState::parse("bogus"), None);
    }
}
