//! The engine's names for what it keeps apart: agents, DNs, calls and records, each a type of its
//! own, so that a call id passed where a record id is meant does not compile. They are converted
//! from and to the protocol's `String`s only where the engine meets the wire and the store; they
//! never validate, never change how anything is written (on disk they are plain strings, byte for
//! byte), and compare, hash and sort exactly as the text they hold.
//!
//! Each is a shared `Arc<str>`: the engine copies ids far more often than it makes them (a record
//! id goes into the holders' sets, the dirty set, deadlines and journals), and a copy is then a
//! count, not an allocation.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub(super) struct $name(Arc<str>);

        impl $name {
            pub(super) fn as_str(&self) -> &str {
                &self.0
            }
        }

        // Hash, Eq and Ord above are those of the `str` inside, so maps keyed by the id can be
        // read with a plain `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(Arc::from(s))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(Arc::from(s))
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                $name(Arc::from(s.as_str()))
            }
        }

        impl From<&$name> for String {
            fn from(id: &$name) -> String {
                id.as_str().to_owned()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.as_str().to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self.as_str(), f)
            }
        }

        // As the string itself, so that `Engine::dump` reads as it did with plain strings.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        // Written as the bare string, exactly as a `String` field was (what
        // `#[serde(transparent)]` over a `String` would do).
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map($name::from)
            }
        }
    };
}

id_type!(
    /// An agent, as it logs in (`Login.agent`).
    AgentId
);
id_type!(
    /// A directory number: the phone an agent logs in on.
    Dn
);
id_type!(
    /// A call, as the switch names it.
    CallId
);
id_type!(
    /// A record, as the dialer names it when it attaches one.
    RecordId
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn an_id_is_stored_as_the_string_it_holds() {
        let id = RecordId::from("r-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"r-1\"");
        let back: RecordId = serde_json::from_str("\"r-1\"").unwrap();
        assert_eq!(back, id);
        let map = BTreeMap::from([(AgentId::from("a"), 1)]);
        assert_eq!(serde_json::to_string(&map).unwrap(), "{\"a\":1}");
        assert_eq!(format!("{id} {id:?}"), "r-1 \"r-1\"");
    }

    #[test]
    fn maps_keyed_by_an_id_are_read_with_a_str() {
        let mut m = HashMap::new();
        m.insert(CallId::from("c"), 1);
        assert_eq!(m.get("c"), Some(&1));
        let t = BTreeMap::from([(Dn::from("b"), 2), (Dn::from("a"), 1)]);
        assert_eq!(t.get("a"), Some(&1));
        assert_eq!(t.keys().next().map(Dn::as_str), Some("a"));
    }
}
