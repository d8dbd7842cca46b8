//! The start-up probe of the host compositor (`HostInfo::probe`): globals, the dmabuf
//! preference list read from the default feedback (format table fd + tranches, scanout marks,
//! preference order), security-context support; a host that never answers times out.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use crossway_headless::DmabufConfig;
use crossway_proxy::host::{HostConnector, HostError, HostInfo, ProbeLimits};
use crossway_tests::Runtime;

#[test]
fn probe_reads_globals_feedback_and_security_context() {
    let rt = Runtime::new().unwrap();
    let spec = "AR24:linear,XR24:0x100000000000001:scanout,AB24:linear";
    let headless = rt
        .headless_with("probe", |c| {
            c.dmabuf.preferences = DmabufConfig::parse_preferences(spec).unwrap();
        })
        .unwrap();
    let info = HostInfo::probe(&HostConnector::new(headless.socket_path().into())).unwrap();
    assert!(info.global("wl_compositor").is_some_and(|g| g.version >= 5));
    assert!(info.global("xdg_wm_base").is_some());
    assert!(info.security_context);
    assert_eq!(info.dmabuf_version, Some(5));
    let list: Vec<String> = info
        .dmabuf_formats
        .unwrap()
        .iter()
        .map(|p| format!("{}{}", p.pair, if p.scanout { " scanout" } else { "" }))
        .collect();
    // The scanout tranche comes first; the main tranche adds the rest in its order.
    let expected: Vec<String> =
        DmabufConfig::parse_preferences("XR24:0x100000000000001:scanout,AR24:linear,AB24:linear")
            .unwrap()
            .iter()
            .map(|p| format!("{}{}", p.pair, if p.scanout { " scanout" } else { "" }))
            .collect();
    assert_eq!(list, expected);
}

#[test]
fn probe_of_a_silent_host_times_out() {
    let rt = Runtime::new().unwrap();
    let path = rt.path().join("silent");
    // Accepts (the kernel queues the connection) but never reads or answers.
    let _listener = UnixListener::bind(&path).unwrap();
    let start = Instant::now();
    let result = HostInfo::probe_with(
        &HostConnector::new(path),
        ProbeLimits {
            timeout: Duration::from_millis(300),
            ..ProbeLimits::default()
        },
    );
    assert!(matches!(result, Err(HostError::Timeout(_))), "{result:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn probe_of_a_missing_host_is_an_error() {
    let rt = Runtime::new().unwrap();
    let result = HostInfo::probe(&HostConnector::new(rt.path().join("none")));
    assert!(matches!(result, Err(HostError::Io { .. })), "{result:?}");
}
