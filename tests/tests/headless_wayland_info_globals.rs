//! wayland-info sees every global the headless compositor promises, and the dmabuf feedback
//! tranches it was configured with.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::time::Duration;

use crossway_headless::DmabufConfig;
use crossway_tests::{Process, Runtime, require};

fn wayland_info(configure: impl FnOnce(&mut crossway_headless::HeadlessConfig)) -> Option<String> {
    let program = require("wayland_info", "wayland-info", "wayland-utils")?;
    let rt = Runtime::new().unwrap();
    let headless = rt.headless_with("info", configure).unwrap();
    let (code, out, err) = Process::spawn(
        "wayland-info",
        &mut rt.client(program, headless.socket_path()),
    )
    .unwrap()
    .wait(Duration::from_secs(10))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    Some(out)
}

fn version_of(out: &str, interface: &str) -> Option<u32> {
    let line = out
        .lines()
        .find(|l| l.contains(&format!("'{interface}'")))?;
    line.split("version:")
        .nth(1)?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn wayland_info_lists_globals_and_versions() {
    let Some(out) = wayland_info(|_| {}) else {
        return;
    };
    for (interface, version) in [
        ("wl_compositor", 6),
        ("wl_subcompositor", 1),
        ("xdg_wm_base", 6),
        ("wl_shm", 2),
        ("wl_seat", 9),
        ("wl_output", 4),
        ("zxdg_output_manager_v1", 3),
        ("wl_data_device_manager", 3),
        ("zwp_primary_selection_device_manager_v1", 1),
        ("zxdg_decoration_manager_v1", 1),
        ("wp_viewporter", 1),
        ("wp_fractional_scale_manager_v1", 1),
        ("wp_presentation", 2),
        ("zwp_linux_dmabuf_v1", 5),
    ] {
        assert_eq!(
            version_of(&out, interface),
            Some(version),
            "{interface} in:\n{out}"
        );
    }
    for format in ["'AR24'", "'XR24'", "'AB24'", "'XB24'", "'RG16'"] {
        assert!(
            out.contains(format),
            "wl_shm format {format} missing:\n{out}"
        );
    }
    // The default table: a scanout tranche and a main one, tiled modifiers and LINEAR.
    assert!(out.contains("main device: 0xE280"), "{out}");
    assert!(out.contains("flags: scanout"), "{out}");
    assert!(out.contains("flags: none"), "{out}");
    assert!(
        out.contains("'XR24'; 0x0100000000000001 = INTEL_X_TILED"),
        "{out}"
    );
    assert!(
        out.contains("'AR24'; 0x0100000000000002 = INTEL_Y_TILED"),
        "{out}"
    );
    assert!(out.contains("'XR24'; 0x0000000000000000 = LINEAR"), "{out}");
    // The output mode.
    assert!(
        out.contains("width: 1280 px, height: 800 px, refresh: 60.000 Hz"),
        "{out}"
    );
}

#[test]
fn wayland_info_prints_configured_dmabuf_table() {
    let Some(out) = wayland_info(|config| {
        config.size = (640, 480);
        config.dmabuf = DmabufConfig {
            main_device: (226 << 8) | 129,
            preferences: DmabufConfig::parse_preferences("AB24:0x0:scanout,XB24:0x0").unwrap(),
        };
    }) else {
        return;
    };
    assert!(out.contains("main device: 0xE281"), "{out}");
    assert!(out.contains("'AB24'; 0x0000000000000000 = LINEAR"), "{out}");
    assert!(out.contains("'XB24'; 0x0000000000000000 = LINEAR"), "{out}");
    assert!(!out.contains("INTEL_"), "only the configured pairs: {out}");
    assert!(out.contains("width: 640 px, height: 480 px"), "{out}");
}
