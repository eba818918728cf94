//! The sharing rules of SCENARIOS.md (rules 2 to 12 and the scenarios), one test or more each,
//! through real sockets: desktops, a dialer and a switch link as separate clients, in the
//! three-agent centre of the kit. One file per rule or group of rules.

mod audit;
mod conference;
mod consultation;
mod leaving;
mod logout;
mod orphans;
mod requests;
mod single_step;

pub(crate) use baton::messages::*;
pub(crate) use baton_kit::*;
pub(crate) use serde_json::json;
pub(crate) use std::time::Duration;
