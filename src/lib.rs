//! Baton: an outbound record-sharing server.
//!
//! Dialers attach calling-list records to calls; the telephony link reports what happens to those
//! calls; Baton decides, at every moment, which agent may do what to which record and tells every
//! desktop at once. The crate is layered so that each layer can be tested on its own:
//!
//! - [`codec`] cuts TCP bytes into frames, [`messages`] turns frames into typed requests and back;
//! - [`engine`] is the pure state machine holding agents, DNs, calls, records and access;
//! - [`server`] is the thin I/O shell (connections, queues, timers, shutdown) around the engine;
//! - [`client`] is a typed client (the admin commands, the tests and the tools use it); [`config`]
//!   holds every limit; [`admin`] is what the `baton` admin commands print, [`timeline`] tells
//!   one record's life from the audit log; [`auth`] checks who an agent is at `Login`.

pub mod admin;
pub mod agents;
pub mod auth;
pub mod client;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod codec;
pub mod config;
pub mod engine;
pub mod messages;
pub mod server;
pub mod store;
pub mod timeline;
