//! Read-only TFTP for PXE ROMs (RFC 1350, 2347, 2348, 2349, 7440).
//!
//! Written by hand rather than with async-tftp: that crate has no RFC 7440 windowsize (the
//! biggest TFTP speed-up for large files) and, per its issue #18, ignores client ERROR packets,
//! which PXE ROMs send after every tsize probe.

pub mod packet;
pub mod sender;
pub mod server;
