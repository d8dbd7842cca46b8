//! foot, a real terminal, renders text in its window.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::time::Duration;

use crossway_headless::ToplevelMatch;
use crossway_tests::{Process, Runtime, require};

#[test]
fn foot_draws_text() {
    let Some(foot) = require("foot_draws_text", "foot", "foot") else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let headless = rt.headless("foot").unwrap();
    let mut cmd = rt.client(foot, headless.socket_path());
    cmd.env("HOME", rt.path()).args([
        "--config=/dev/null",
        "--title=foot-under-test",
        "--app-id=foot-test",
        "sh",
        "-c",
        "printf 'CROSSWAY HEADLESS %s\\n' ok; sleep 30",
    ]);
    let mut terminal = Process::spawn("foot", &mut cmd).unwrap();
    let info = match headless
        .wait_for_toplevel(&ToplevelMatch::app_id("foot-test"), Duration::from_secs(15))
    {
        Ok(info) => info,
        Err(err) => {
            let (out, errs) = terminal.finish();
            panic!("{err:#}\nfoot stdout:\n{out}\nfoot stderr:\n{errs}");
        }
    };
    assert_eq!(info.title.as_deref(), Some("foot-under-test"));
    // foot sizes itself when the compositor does not: a real terminal, not a sliver.
    assert!(info.rect.2 >= 200 && info.rect.3 >= 100, "{info:?}");

    // Wait for the text: the window then holds background, foreground and anti-aliased edges.
    let mut colours = 0;
    for _ in 0..50 {
        let image = headless
            .toplevel_image(&ToplevelMatch::app_id("foot-test"))
            .unwrap();
        let distinct: std::collections::HashSet<_> = image.rgba.chunks(4).collect();
        colours = distinct.len();
        if colours > 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(terminal.running(), "foot exited");
    assert!(
        colours > 4,
        "foot's window has only {colours} colours: no text drawn"
    );
}
