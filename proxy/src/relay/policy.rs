//! What a guest may see and do on the host compositor: allow-listed globals with capped
//! versions, and the per-VM tagging of its windows.
//!
//! Skeleton: the engine issue fills in the defaults and the TOML policy file.

use std::collections::BTreeMap;

/// Globals the guest may see, each with the highest version the proxy understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Interface name → highest version advertised to the guest.
    pub globals: BTreeMap<String, u32>,
    /// Window tagging.
    pub tagging: Tagging,
}

/// How a VM's windows are marked on the host, done by the proxy so a guest cannot avoid it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tagging {
    /// The VM's name (`--vm-name`); `None` disables tagging.
    pub vm_name: Option<String>,
}
