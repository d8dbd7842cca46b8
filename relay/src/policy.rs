//! What a guest may see and do on the host compositor: allow-listed globals with capped
//! versions, and the per-VM tagging of its windows.
//!
//! The defaults ([`Policy::default`]) allow what a desktop app needs and nothing else; a TOML
//! file ([`Policy::from_toml`], [`Policy::load`]) overrides them:
//!
//! ```toml
//! # Start from the built-in allow-list (default true); false starts from nothing.
//! inherit_defaults = true
//!
//! [globals]
//! wl_seat = 7                         # allow, advertise at most version 7
//! wp_tearing_control_manager_v1 = true  # allow at the highest version the proxy understands
//! zwp_text_input_manager_v3 = false   # deny
//!
//! [tagging]
//! title_prefix = "[{vm}] "            # "{vm}" is replaced by the VM's name
//! app_id_prefix = "{vm}."
//! ```
//!
//! Every name must be a global interface the protocol tables describe (the relay cannot parse
//! anything else, so it can never allow it), and a version cannot exceed the tables' version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crossway_protocols::tables::ProtocolTable;

/// Globals allowed by default, with the highest version advertised.
///
/// Versions are those of the protocol tables (what the relay parses), except
/// `zwp_linux_dmabuf_v1`, held at 5: the plane checks follow version 5's rules.
pub const DEFAULT_GLOBALS: &[(&str, u32)] = &[
    ("wl_compositor", 7),
    ("wl_subcompositor", 1),
    ("wl_shm", 3),
    ("wl_seat", 11),
    ("wl_output", 4),
    ("wl_data_device_manager", 4),
    ("wl_fixes", 2),
    ("xdg_wm_base", 7),
    ("xdg_wm_dialog_v1", 1),
    ("xdg_activation_v1", 1),
    ("zxdg_decoration_manager_v1", 2),
    ("zxdg_output_manager_v1", 3),
    ("wp_viewporter", 1),
    ("wp_fractional_scale_manager_v1", 1),
    ("wp_presentation", 2),
    ("wp_single_pixel_buffer_manager_v1", 1),
    ("wp_cursor_shape_manager_v1", 2),
    ("wp_content_type_manager_v1", 1),
    ("wp_alpha_modifier_v1", 1),
    ("wp_fifo_manager_v1", 1),
    ("wp_commit_timing_manager_v1", 1),
    ("zwp_linux_dmabuf_v1", 5),
    ("zwp_primary_selection_device_manager_v1", 1),
    ("zwp_relative_pointer_manager_v1", 1),
    ("zwp_pointer_constraints_v1", 1),
    ("zwp_pointer_gestures_v1", 3),
    ("zwp_text_input_manager_v3", 2),
    ("zwp_idle_inhibit_manager_v1", 1),
];

/// Globals a VM must not have, denied by the defaults (as is everything not in
/// [`DEFAULT_GLOBALS`]); listed so the choice is explicit and tested. A policy file may still
/// allow one of them, with a warning.
pub const DENIED_GLOBALS: &[(&str, &str)] = &[
    ("zwlr_screencopy_manager_v1", "reads the whole screen"),
    (
        "ext_image_copy_capture_manager_v1",
        "reads the screen or other windows",
    ),
    (
        "ext_output_image_capture_source_manager_v1",
        "names outputs to capture",
    ),
    (
        "ext_foreign_toplevel_image_capture_source_manager_v1",
        "names windows to capture",
    ),
    ("zwlr_export_dmabuf_manager_v1", "exports output frames"),
    ("zwp_virtual_keyboard_manager_v1", "injects key presses"),
    ("zwlr_virtual_pointer_manager_v1", "injects pointer input"),
    (
        "zwlr_layer_shell_v1",
        "draws panels and overlays over the desktop",
    ),
    (
        "zwlr_data_control_manager_v1",
        "reads and sets the clipboard without focus",
    ),
    (
        "ext_data_control_manager_v1",
        "reads and sets the clipboard without focus",
    ),
    (
        "wp_security_context_manager_v1",
        "creates connections with other privileges",
    ),
    ("ext_session_lock_manager_v1", "locks the session"),
    ("zwlr_input_inhibit_manager_v1", "grabs all input"),
    ("zwlr_output_manager_v1", "changes outputs"),
    ("zwlr_output_power_manager_v1", "turns outputs off"),
    ("zwlr_gamma_control_manager_v1", "changes output colours"),
    ("ext_foreign_toplevel_list_v1", "lists other windows"),
    (
        "zwlr_foreign_toplevel_manager_v1",
        "lists and controls other windows",
    ),
    (
        "zwp_keyboard_shortcuts_inhibit_manager_v1",
        "captures the desktop's shortcuts",
    ),
    (
        "zwp_input_method_manager_v2",
        "sees every key typed elsewhere",
    ),
    ("ext_workspace_manager_v1", "controls workspaces"),
    ("ext_transient_seat_manager_v1", "creates seats"),
];

/// The default title prefix template.
pub const DEFAULT_TITLE_PREFIX: &str = "[{vm}] ";
/// The default app id prefix template.
pub const DEFAULT_APP_ID_PREFIX: &str = "{vm}.";
/// Longest prefix template accepted.
pub const MAX_PREFIX_BYTES: usize = 256;

/// Globals the guest may see, each with the highest version the proxy understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Interface name → highest version advertised to the guest. Absent: denied.
    pub globals: BTreeMap<String, u32>,
    /// Window tagging.
    pub tagging: Tagging,
}

impl Default for Policy {
    /// [`DEFAULT_GLOBALS`] and the default tagging (no VM name: off).
    fn default() -> Self {
        Policy {
            globals: DEFAULT_GLOBALS
                .iter()
                .map(|&(name, version)| (name.to_owned(), version))
                .collect(),
            tagging: Tagging::default(),
        }
    }
}

/// How a VM's windows are marked on the host, done by the proxy so a guest cannot avoid it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagging {
    /// The VM's name (`--vm-name`); `None` disables tagging.
    pub vm_name: Option<String>,
    /// Put before every title; `{vm}` stands for the VM's name.
    pub title_prefix: String,
    /// Put before every app id; `{vm}` stands for the VM's name.
    pub app_id_prefix: String,
}

impl Default for Tagging {
    fn default() -> Self {
        Tagging {
            vm_name: None,
            title_prefix: DEFAULT_TITLE_PREFIX.to_owned(),
            app_id_prefix: DEFAULT_APP_ID_PREFIX.to_owned(),
        }
    }
}

impl Tagging {
    /// The title prefix with the VM's name filled in; `None` when tagging is off.
    pub fn title_prefix(&self) -> Option<String> {
        self.vm_name
            .as_deref()
            .map(|vm| self.title_prefix.replace("{vm}", vm))
    }

    /// The app id prefix with the VM's name filled in; `None` when tagging is off.
    pub fn app_id_prefix(&self) -> Option<String> {
        self.vm_name
            .as_deref()
            .map(|vm| self.app_id_prefix.replace("{vm}", vm))
    }
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("reading policy file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or keys and types not as documented.
    #[error("policy file syntax")]
    Syntax(#[source] Box<toml::de::Error>),
    /// The protocol tables do not describe this interface, so the relay cannot parse it.
    #[error("unknown interface {0:?}: the proxy cannot relay it")]
    UnknownInterface(String),
    /// The interface exists but is not advertised as a global.
    #[error("{0:?} is not a global interface")]
    NotGlobal(String),
    /// A version of 0 or above what the proxy understands.
    #[error("{interface} version {version} is not between 1 and {max}")]
    BadVersion {
        /// Interface.
        interface: String,
        /// Version given.
        version: i64,
        /// Highest version the tables describe.
        max: u32,
    },
    /// A prefix with a NUL byte or too long.
    #[error("{which} must be at most {MAX_PREFIX_BYTES} bytes with no NUL")]
    BadPrefix {
        /// Which setting.
        which: &'static str,
    },
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "yes")]
    inherit_defaults: bool,
    #[serde(default)]
    globals: BTreeMap<String, GlobalSetting>,
    #[serde(default)]
    tagging: TaggingFile,
}

fn yes() -> bool {
    true
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum GlobalSetting {
    Allow(bool),
    Version(i64),
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TaggingFile {
    title_prefix: Option<String>,
    app_id_prefix: Option<String>,
}

impl Policy {
    /// Nothing allowed, default tagging.
    pub fn deny_all() -> Policy {
        Policy {
            globals: BTreeMap::new(),
            tagging: Tagging::default(),
        }
    }

    /// The version cap of `interface`, `None` when it is denied.
    pub fn cap(&self, interface: &str) -> Option<u32> {
        self.globals.get(interface).copied()
    }

    /// Parses a policy file (format in the module documentation). The VM name is not part of
    /// the file: callers set `tagging.vm_name` from `--vm-name`.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(Box::new(e)))?;
        let mut policy = if file.inherit_defaults {
            Policy::default()
        } else {
            Policy::deny_all()
        };
        let table = ProtocolTable::builtin();
        for (name, setting) in file.globals {
            let interface = table
                .get(&name)
                .ok_or_else(|| PolicyError::UnknownInterface(name.clone()))?;
            if !table.globals().iter().any(|g| g.name == interface.name) {
                return Err(PolicyError::NotGlobal(name));
            }
            let max = interface.version;
            let version = match setting {
                GlobalSetting::Allow(false) => {
                    policy.globals.remove(&name);
                    continue;
                }
                GlobalSetting::Allow(true) => max,
                GlobalSetting::Version(v) => u32::try_from(v)
                    .ok()
                    .filter(|&v| v >= 1 && v <= max)
                    .ok_or(PolicyError::BadVersion {
                        interface: name.clone(),
                        version: v,
                        max,
                    })?,
            };
            if let Some((_, why)) = DENIED_GLOBALS.iter().find(|(n, _)| *n == name) {
                tracing::warn!(interface = %name, "policy file allows a global that {why}");
            }
            policy.globals.insert(name, version);
        }
        for (value, slot, which) in [
            (
                file.tagging.title_prefix,
                &mut policy.tagging.title_prefix,
                "title_prefix",
            ),
            (
                file.tagging.app_id_prefix,
                &mut policy.tagging.app_id_prefix,
                "app_id_prefix",
            ),
        ] {
            if let Some(v) = value {
                if v.len() > MAX_PREFIX_BYTES || v.contains('\0') {
                    return Err(PolicyError::BadPrefix { which });
                }
                *slot = v;
            }
        }
        Ok(policy)
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Policy::from_toml(&text)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_are_known_globals_within_table_versions() {
        let table = ProtocolTable::builtin();
        for (name, version) in DEFAULT_GLOBALS {
            let iface = table.get(name).unwrap_or_else(|| panic!("{name} unknown"));
            assert!(table.globals().iter().any(|g| g.name == *name), "{name}");
            assert!(*version >= 1 && *version <= iface.version, "{name}");
        }
    }

    #[test]
    fn defaults_deny_the_dangerous_globals() {
        let policy = Policy::default();
        let table = ProtocolTable::builtin();
        for (name, _) in DENIED_GLOBALS {
            assert!(table.get(name).is_some(), "{name} unknown to the tables");
            assert_eq!(policy.cap(name), None, "{name}");
        }
        for name in [
            "wl_compositor",
            "xdg_wm_base",
            "zwp_linux_dmabuf_v1",
            "wl_shm",
        ] {
            assert!(policy.cap(name).is_some(), "{name}");
        }
    }

    #[test]
    fn from_toml_overrides_versions_and_denials() {
        let p = Policy::from_toml(
            "[globals]\nwl_seat = 5\nzwp_text_input_manager_v3 = false\nwp_tearing_control_manager_v1 = true\n",
        )
        .unwrap();
        assert_eq!(p.cap("wl_seat"), Some(5));
        assert_eq!(p.cap("zwp_text_input_manager_v3"), None);
        assert_eq!(p.cap("wp_tearing_control_manager_v1"), Some(1));
        assert_eq!(p.cap("wl_compositor"), Some(7));
    }

    #[test]
    fn from_toml_without_inherit_starts_empty() {
        let p = Policy::from_toml("inherit_defaults = false\n[globals]\nwl_shm = 1\n").unwrap();
        assert_eq!(p.globals.len(), 1);
        assert_eq!(p.cap("wl_shm"), Some(1));
    }

    #[test]
    fn from_toml_unknown_interface_is_an_error() {
        let err = Policy::from_toml("[globals]\nevil_grabber_v1 = 1\n").unwrap_err();
        assert!(matches!(err, PolicyError::UnknownInterface(n) if n == "evil_grabber_v1"));
    }

    #[test]
    fn from_toml_non_global_interface_is_an_error() {
        let err = Policy::from_toml("[globals]\nwl_surface = 1\n").unwrap_err();
        assert!(matches!(err, PolicyError::NotGlobal(_)));
    }

    #[test]
    fn from_toml_version_above_tables_is_an_error() {
        let err = Policy::from_toml("[globals]\nwl_shm = 99\n").unwrap_err();
        assert!(matches!(err, PolicyError::BadVersion { version: 99, .. }));
        let err = Policy::from_toml("[globals]\nwl_shm = 0\n").unwrap_err();
        assert!(matches!(err, PolicyError::BadVersion { version: 0, .. }));
    }

    #[test]
    fn from_toml_unknown_key_is_a_syntax_error() {
        assert!(matches!(
            Policy::from_toml("allow_everything = true\n").unwrap_err(),
            PolicyError::Syntax(_)
        ));
        assert!(matches!(
            Policy::from_toml("[globals]\nwl_shm = \"yes\"\n").unwrap_err(),
            PolicyError::Syntax(_)
        ));
    }

    #[test]
    fn from_toml_sets_tagging_prefixes() {
        let mut p = Policy::from_toml(
            "[tagging]\ntitle_prefix = \"<{vm}> \"\napp_id_prefix = \"vm-{vm}-\"\n",
        )
        .unwrap();
        assert_eq!(p.tagging.title_prefix(), None);
        p.tagging.vm_name = Some("work".into());
        assert_eq!(p.tagging.title_prefix().unwrap(), "<work> ");
        assert_eq!(p.tagging.app_id_prefix().unwrap(), "vm-work-");
        assert!(matches!(
            Policy::from_toml("[tagging]\ntitle_prefix = \"a\\u0000b\"\n").unwrap_err(),
            PolicyError::BadPrefix { .. }
        ));
    }

    #[test]
    fn load_missing_file_names_the_path() {
        let err = Policy::load(Path::new("/nonexistent/crossway-policy.toml")).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent/crossway-policy.toml")
        );
    }
}
