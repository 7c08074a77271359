//! enlist: the head service that boots a room of PCs into a cluster over the network.
//!
//! See ARCHITECTURE.md for the map of these modules and how a boot flows through them.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bootdisk;
pub mod bootfiles;
pub mod bootpath;
pub mod bootscript;
pub mod config;
pub mod cron;
pub mod dhcp;
pub mod env;
pub mod exec;
pub mod head;
pub mod hostlist;
pub mod http;
pub mod image;
pub mod jobs;
pub mod lifecycle;
pub mod metrics;
pub mod ndp;
pub mod netif;
pub mod nodelogs;
pub mod registry;
pub mod store;
pub mod tftp;
pub mod timetable;
pub mod wol;
pub mod workload;
