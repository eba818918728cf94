//! Where a cluster keeps its data in etcd, under its `prefix` (`/baton` by default):
//!
//! - `<prefix>/election`: the election (etcd's election API keeps one key per candidate under
//!   it, each on its node's lease; the oldest is the active node, its value the node's address);
//! - `<prefix>/s/<key>`: the state, under exactly the keys the sled store uses (records, agents,
//!   audit entries, the index of final records);
//! - `<prefix>/head`: rewritten by every transaction of the active node (which node, when): its
//!   revision is the revision of the last write;
//! - `<prefix>/fold`: a batch too big for one transaction, committed whole (one transaction)
//!   and then written into the state keys in several, the last deleting it;
//! - `<prefix>/nodes/<node_id>`: each node's own report (role, how far its copy has followed), on
//!   its lease, for `baton cluster status`.

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn election(&self) -> String {
        format!("{}/election", self.prefix)
    }

    pub(crate) fn head(&self) -> String {
        format!("{}/head", self.prefix)
    }

    pub(crate) fn fold(&self) -> String {
        format!("{}/fold", self.prefix)
    }

    pub(crate) fn node(&self, node_id: &str) -> String {
        format!("{}/nodes/{node_id}", self.prefix)
    }

    pub(crate) fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// The whole cluster's keys (what a standby watches).
    pub(crate) fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub(crate) fn state_prefix(&self) -> String {
        format!("{}/s/", self.prefix)
    }

    /// A key of the store's layout as etcd holds it.
    pub(crate) fn state(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.state_prefix().into_bytes();
        k.extend_from_slice(key);
        k
    }

    /// The store's key of an etcd state key; `None` for keys outside the state.
    pub(crate) fn store_key<'a>(&self, etcd_key: &'a [u8]) -> Option<&'a [u8]> {
        etcd_key.strip_prefix(self.state_prefix().as_bytes())
    }
}
