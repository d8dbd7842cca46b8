//! A gtk4 app (gtk4-widget-factory, GSK_RENDERER=cairo: software rendering) in the guest on the
//! headless host: its window appears tagged with the VM's name and has real content.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::time::{Duration, Instant};

use crossway_tests::compositors::{Guest, Host, HostKind};
use crossway_tests::{Process, Runtime, eventually, require};

#[test]
fn gtk4_widget_factory_renders_in_software() {
    let test = "gtk4_widget_factory_renders_in_software";
    let Some(factory) = require(test, "gtk4-widget-factory", "gtk-4-examples") else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = Host::start(&rt, test, HostKind::Headless).unwrap().unwrap();
    let guest = Guest::start(&rt, &host.display, "gtk").unwrap();
    let mut cmd = guest.client(&rt, factory);
    cmd.env("HOME", rt.path())
        .env("GSK_RENDERER", "cairo")
        .env("GDK_BACKEND", "wayland")
        .env("GTK_A11Y", "none")
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    let mut app = Process::spawn("gtk4-widget-factory", &mut cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let title = loop {
        let titles = host.toplevel_titles().unwrap().unwrap_or_default();
        if let Some(t) = titles.iter().find(|t| t.starts_with("[gtk] ")) {
            break t.clone();
        }
        if !app.running() || Instant::now() >= deadline {
            let (out, err) = app.finish();
            panic!(
                "no gtk window; titles {titles:?}\n{out}\n{err}\n{}",
                guest.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(title.contains("Widget Factory"), "{title}");
    let mut colours = 0;
    eventually(deadline.saturating_duration_since(Instant::now()), || {
        colours = host.window_colours(&rt, &title).unwrap();
        colours > 50
    });
    assert!(
        app.running(),
        "gtk4-widget-factory exited\n{}",
        guest.log_text()
    );
    assert!(
        colours > 50,
        "only {colours} colours: the window is not drawn"
    );
}
