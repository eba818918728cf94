//! Baton's tools, apart from the server: `baton load` plays a centre against a running server,
//! `baton fill` writes a large store as a busy centre would leave it, and `baton restart-time`
//! times the server's start on such a store. The `baton` command runs them from the
//! `baton-tools` binary next to it.

pub mod demo;
pub mod fill;
pub mod load;
pub mod restart_time;
