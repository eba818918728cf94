//! What the engine keeps: calls and their parties, agents and what they lost while away, records
//! with their holders, connections. Plain data with small helpers; no rule lives here (the rooms
//! decide, these types only hold the result).

use super::*;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PartyState {
    /// Ringing on this DN; it may never answer.
    Alerting,
    /// This DN placed the call (`Ringing.from_dn`) and is on it, dialing. It is on the call as
    /// far as leaving it goes (its `Released` ends a consultation, rule 5), and its desktop sees
    /// the call as established; but it answered nothing, so it gains no access by being here.
    Dialing,
    /// Answered (or joined by transfer or conference).
    Established,
}

impl PartyState {
    /// What the DN's desktop has been told: a dialing caller sees its call as established.
    pub(super) fn shown_established(state: Option<PartyState>) -> bool {
        matches!(state, Some(PartyState::Established | PartyState::Dialing))
    }
}

/// The DNs on a call and their state, sorted by DN. A call has a handful, so a sorted vector
/// beats a tree: one small allocation, and lookups that stay within a cache line or two.
#[derive(Debug, Clone, Default)]
pub(super) struct Parties(pub(super) Vec<(Dn, PartyState)>);

impl Parties {
    pub(super) fn position(&self, dn: &Dn) -> Result<usize, usize> {
        self.0.binary_search_by(|(d, _)| d.cmp(dn))
    }
    pub(super) fn get(&self, dn: &Dn) -> Option<PartyState> {
        self.position(dn).ok().map(|i| self.0[i].1)
    }
    pub(super) fn contains_key(&self, dn: &Dn) -> bool {
        self.position(dn).is_ok()
    }
    /// Adds `dn` as `state` if it is not a party yet; `Established` also upgrades one alerting
    /// or dialing.
    pub(super) fn add(&mut self, dn: &Dn, state: PartyState) {
        match self.position(dn) {
            Ok(i) => {
                if state == PartyState::Established {
                    self.0[i].1 = PartyState::Established;
                }
            }
            Err(i) => self.0.insert(i, (dn.clone(), state)),
        }
    }
    pub(super) fn remove(&mut self, dn: &Dn) -> Option<PartyState> {
        self.position(dn).ok().map(|i| self.0.remove(i).1)
    }
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The DNs, in order.
    pub(super) fn keys(&self) -> impl Iterator<Item = &Dn> {
        self.0.iter().map(|(d, _)| d)
    }
    /// The DNs that answered, in order.
    pub(super) fn established(&self) -> impl Iterator<Item = &Dn> {
        self.0
            .iter()
            .filter(|(_, p)| *p == PartyState::Established)
            .map(|(d, _)| d)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) parties: Parties,
    pub(super) ani: Option<String>,
    /// The keys of `ani_calls` this call is filed under, so that ending it touches only those.
    pub(super) ani_keys: Vec<String>,
    /// The call this one is a consultation of.
    pub(super) consult_of: Option<CallId>,
    /// The DN that placed the call (`Ringing.from_dn`), if the switch said.
    pub(super) caller: Option<Dn>,
    /// Set once a consultation has ended (released, transferred or conferenced): it grants nothing more.
    pub(super) consult_over: bool,
    /// Creation order, to prefer the most recent call when linking by ANI.
    pub(super) order: u64,
    /// When the switch last sent an event about this call.
    pub(super) last_event_ms: u64,
    /// The entry of `call_deadlines` filed for this call.
    pub(super) idle_deadline_ms: u64,
}

#[derive(Debug, Clone)]
pub(super) struct Agent {
    pub(super) dn: Dn,
    pub(super) conn: Option<ConnId>,
    pub(super) session: String,
    /// When the desktop dropped; `None` while connected.
    pub(super) away_since_ms: Option<u64>,
    pub(super) logout_pending: bool,
}

/// A revocation the desktop may not have heard of: the access it had, when, the record's call.
#[derive(Debug, Clone)]
pub(super) struct Lost {
    pub(super) previous: Access,
    pub(super) at_ms: u64,
    pub(super) call: CallId,
}

/// A record as it is kept, in memory and on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) call: CallId,
    pub(super) campaign: String,
    pub(super) chain_n: u32,
    pub(super) phone: Option<String>,
    /// The customer data and the chain never change after the attach: shared, so that the
    /// batch journal's copy of a record (taken before each change) does not copy them.
    pub(super) data: Arc<Object>,
    pub(super) chain: Arc<Vec<ChainEntry>>,
    pub(super) context: Context,
    pub(super) version: u64,
    pub(super) final_: Option<FinalInfo>,
    pub(super) holders: BTreeMap<AgentId, Access>,
    #[serde(rename = "orphaned_since")]
    pub(super) orphaned_since_ms: Option<u64>,
    /// For a final record in memory: since when, its key in `final_queue` (not stored).
    #[serde(skip)]
    pub(super) resident_since_ms: u64,
    /// The store holds this record's body (call, campaign, phone, data, chain) under its own
    /// key, so that a change writes only the state (not stored: read from how it was stored).
    /// False for a record just attached, and for one an older server wrote whole.
    #[serde(skip)]
    pub(super) body_stored: bool,
}

impl Record {
    pub(super) fn has_live_holder(&self) -> bool {
        self.holders.values().any(|a| a.is_granted())
    }
    pub(super) fn live_holders(&self) -> Vec<Holder> {
        self.holders
            .iter()
            .filter(|(_, a)| a.is_granted())
            .map(|(agent, access)| Holder {
                agent: agent.into(),
                access: *access,
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub(super) struct ConnState {
    pub(super) role: Role,
    pub(super) agent: Option<AgentId>,
}

/// A logged-in agent as it is kept on disk, so that its desktop can resume after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AgentState {
    pub(super) dn: Dn,
    pub(super) session: String,
}
