//! A whole floor's desktops drop at once (a network cut) and stay away past `resume_grace_ms`:
//! every agent is logged out in the same tick, and each switch link gets one `AgentLogout` per
//! agent but only one `Monitor`, with the list as it ends up. One `Monitor` per agent would send a
//! link a list of every remaining DN for each agent ended: for 5,000 agents, gigabytes at once.
//!
//! Played on the engine itself with explicit times, so that every expiry falls in one tick.

use baton::config::Config;
use baton::engine::{ConnId, Engine, EngineConfig, Input, Output};
use baton::messages::*;
use baton_kit::*;

const T0: u64 = 1_700_000_000_000;
const AGENTS: usize = 300;
const SWITCHES: [ConnId; 2] = [1, 2];

fn desk(i: usize) -> ConnId {
    100 + i as ConnId
}

#[test]
fn a_floor_whose_grace_expires_at_once_costs_each_switch_one_monitor() {
    let config = Config::default();
    let grace = config.resume_grace_ms;
    let mut engine = Engine::new(EngineConfig::from_config(&config), [7; 32], T0);
    let mut out = Vec::new();
    for conn in SWITCHES {
        engine.handle(
            T0,
            Input::Connected {
                conn,
                role: Role::Switch,
            },
            &mut out,
        );
    }
    for i in 0..AGENTS {
        let conn = desk(i);
        engine.handle(
            T0,
            Input::Connected {
                conn,
                role: Role::Desktop,
            },
            &mut out,
        );
        let request = login(&format!("a{i}"), &format!("7{i:03}"), None);
        engine.handle(
            T0,
            Input::Request {
                conn,
                r#ref: Some(1),
                request,
            },
            &mut out,
        );
    }
    assert_eq!(engine.counts().dns, AGENTS as u64);
    for i in 0..AGENTS {
        engine.handle(T0 + 1, Input::Disconnected { conn: desk(i) }, &mut out);
    }
    out.clear();

    engine.handle(T0 + 1 + grace, Input::Tick, &mut out);

    assert_eq!(engine.counts().agents, 0, "every agent was logged out");
    for switch in SWITCHES {
        let frames: Vec<&ServerMsg> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send { conn, env } if *conn == switch => Some(&env.msg),
                _ => None,
            })
            .collect();
        let logouts = frames
            .iter()
            .filter(|m| matches!(m, ServerMsg::AgentLogout { .. }))
            .count();
        let monitors: Vec<&&ServerMsg> = frames
            .iter()
            .filter(|m| matches!(m, ServerMsg::Monitor { .. }))
            .collect();
        assert_eq!(
            logouts, AGENTS,
            "switch {switch}: one AgentLogout per agent"
        );
        assert_eq!(
            monitors,
            [&&ServerMsg::Monitor { dns: vec![] }],
            "switch {switch}: one Monitor, the final list"
        );
        assert!(
            matches!(frames.last(), Some(ServerMsg::Monitor { .. })),
            "the Monitor comes after the logouts it sums up"
        );
    }
}
