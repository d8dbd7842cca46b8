//! The guest's view of the host's globals: only allow-listed interfaces the tables describe,
//! at capped versions; binds checked against exactly what was advertised.

use std::ffi::CStr;

use crossway_protocols::tables::ProtocolTable;
use crossway_protocols::wire::ObjectId;

use super::IdMap;
use super::fault::{Fault, display};
use super::policy::Policy;

#[derive(Debug, Clone, Copy)]
struct Advertised {
    interface: &'static str,
    version: u32,
}

/// Globals advertised to one guest client, by the host's global name.
#[derive(Debug, Default)]
pub struct Registry {
    advertised: IdMap<Advertised>,
}

impl Registry {
    /// A host `wl_registry.global`: the version to advertise, or `None` to hide it.
    pub fn on_global(
        &mut self,
        policy: &Policy,
        dmabuf_formats_known: bool,
        name: u32,
        interface: &CStr,
        version: u32,
    ) -> Option<u32> {
        let interface = interface.to_str().ok()?;
        let cap = policy.cap(interface)?;
        // Never advertise what the relay cannot parse, whatever the policy says.
        let known = ProtocolTable::builtin().get(interface)?;
        if interface == "zwp_linux_dmabuf_v1" && !dmabuf_formats_known {
            return None;
        }
        let version = version.min(cap).min(known.version);
        if version == 0 {
            return None;
        }
        self.advertised.insert(
            name,
            Advertised {
                interface: known.name,
                version,
            },
        );
        Some(version)
    }

    /// A host `wl_registry.global_remove`: whether the guest saw that global.
    ///
    /// The name stays bindable: a guest may bind it before it reads the removal, and the host
    /// answers such a bind with an inert object.
    pub fn on_global_remove(&self, name: u32) -> bool {
        self.advertised.contains_key(&name)
    }

    /// A guest `wl_registry.bind(name, interface, version, id)` on `registry`.
    pub fn check_bind(
        &self,
        registry: ObjectId,
        name: u32,
        interface: &CStr,
        version: u32,
    ) -> Result<(), Fault> {
        let deny = |why: String| Fault::new(registry, display::INVALID_OBJECT, why);
        let iface = interface.to_string_lossy();
        let Some(g) = self.advertised.get(&name) else {
            return Err(deny(format!(
                "invalid global {iface} ({name}): not advertised"
            )));
        };
        if g.interface != iface {
            return Err(deny(format!(
                "invalid global {iface} ({name}): global {name} is {}",
                g.interface
            )));
        }
        if version == 0 || version > g.version {
            return Err(deny(format!(
                "invalid version {version} of {iface} ({name}): {} advertised",
                g.version
            )));
        }
        Ok(())
    }
}
