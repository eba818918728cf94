//! What Baton's tests, benches, the model test and the load tools share: one set of message
//! builders, one way to start a server (in process or as a child process) and wait until it
//! serves, and one fixture for a small centre of agents.
//!
//! Nothing here is needed to serve: the server binary never links this crate.

pub mod centre;
pub mod etcd;
pub mod expect;
pub mod http;
pub mod identity;
pub mod ledger;
pub mod msg;
pub mod schema;
pub mod server;
pub mod wire;

pub use centre::Centre;
pub use expect::*;
pub use http::{http_get, http_post_json, HttpReply};
pub use msg::*;
pub use server::{
    config_file, desktop_transport, free_addr, log_in, log_in_with_password, token, ServerProcess,
    TestServer,
};
pub use wire::{raw_session, request_frame, RawReader};
