//! The cross-domain context type (capset 5), wire-compatible with crosvm/rutabaga: each Wayland
//! channel becomes one [`crate::relay::Relay`] in front of the host compositor.
//!
//! Skeleton: filled in by the cross-domain issue.
