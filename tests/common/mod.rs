//! Helpers shared by the integration tests that need root (each test file takes what it uses).

#![allow(dead_code)]

pub mod dhcp;
