//! What a user or a supervisor reads on stderr: plain text when stderr is a pipe or a file,
//! colour only on a terminal and never with `NO_COLOR`, one JSON object per line with
//! `--log-format json` (or `$CROSSWAY_LOG_FORMAT`), and a fatal error whose first line names
//! what failed, with no earlier line claiming the start went well.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crossway_tests::{Runtime, require, workspace_binary};

const ESC: char = '\u{1b}';

fn run(rt: &Runtime, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(workspace_binary(program).unwrap())
        .args(args)
        .env("XDG_RUNTIME_DIR", rt.path())
        .env("TMPDIR", rt.path())
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("NO_COLOR")
        .env_remove("CROSSWAY_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn missing_dir_socket(rt: &Runtime) -> String {
    rt.path()
        .join("no/such/dir/gpu.sock")
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn serve_socket_path_in_missing_dir_first_line_names_the_path() {
    let rt = Runtime::new().unwrap();
    let path = missing_dir_socket(&rt);
    let out = run(
        &rt,
        "crossway-proxy",
        &["serve", "--socket-path", &path],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("ERROR"), "{err}");
    assert!(first.contains("--socket-path"), "{err}");
    assert!(first.contains(&path), "{err}");
    for claim in ["listening for the VMM", "VMM disconnected", "device ready"] {
        assert!(
            !err.contains(claim),
            "{claim:?} logged before the error:\n{err}"
        );
    }
}

#[test]
fn agent_missing_device_first_line_names_the_device() {
    let rt = Runtime::new().unwrap();
    let device = rt.path().join("no-such-virtgpu.sock");
    let spec = format!("loopback:{}", device.display());
    let out = run(&rt, "crossway-agent", &["--device", &spec], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("ERROR"), "{err}");
    assert!(first.contains(&device.display().to_string()), "{err}");
    assert!(!err.contains("listening"), "{err}");
}

#[test]
fn logs_to_a_pipe_have_no_colour() {
    let rt = Runtime::new().unwrap();
    let path = missing_dir_socket(&rt);
    for (program, args) in [
        (
            "crossway-proxy",
            vec!["serve", "--socket-path", path.as_str()],
        ),
        ("crossway-agent", vec!["--device", "loopback:/nonexistent"]),
    ] {
        let out = run(&rt, program, &args, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.is_empty(), "{program} logged nothing");
        assert!(
            !err.contains(ESC),
            "{program} wrote colour escapes to a pipe:\n{err:?}"
        );
    }
}

#[test]
fn log_format_json_is_one_object_per_line() {
    let rt = Runtime::new().unwrap();
    let path = missing_dir_socket(&rt);
    let runs = [
        // The flag before the subcommand, after it, and from the environment.
        run(
            &rt,
            "crossway-proxy",
            &["--log-format", "json", "serve", "--socket-path", &path],
            &[],
        ),
        run(
            &rt,
            "crossway-proxy",
            &["serve", "--log-format", "json", "--socket-path", &path],
            &[],
        ),
        run(
            &rt,
            "crossway-agent",
            &["--device", "loopback:/nonexistent"],
            &[("CROSSWAY_LOG_FORMAT", "json")],
        ),
    ];
    for out in runs {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let mut lines = 0;
        for line in err.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{err}"));
            assert!(v["level"].is_string(), "{line}");
            assert!(v["fields"]["message"].is_string(), "{line}");
            lines += 1;
        }
        assert!(lines > 0, "no log lines");
        let last: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
        assert_eq!(last["level"], "ERROR", "{err}");
    }
}

/// `script` gives the program a pseudo-terminal as stderr, as an interactive shell would.
fn on_a_terminal(test: &str, program: &Path, no_color: Option<&str>) -> Option<String> {
    let script = require(test, "script", "bsdutils")?;
    let rt = Runtime::new().unwrap();
    let mut cmd = Command::new(script);
    cmd.arg("-qec")
        .arg(format!(
            "{} --device loopback:/nonexistent",
            program.display()
        ))
        .arg("/dev/null")
        .env("XDG_RUNTIME_DIR", rt.path())
        .env_remove("NO_COLOR")
        .env_remove("CROSSWAY_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color() {
    let test = "logs_on_a_terminal_are_coloured_unless_no_color";
    let agent = workspace_binary("crossway-agent").unwrap();
    let Some(tty) = on_a_terminal(test, &agent, None) else {
        return;
    };
    assert!(tty.contains("ERROR"), "{tty:?}");
    assert!(tty.contains(ESC), "no colour on a terminal: {tty:?}");
    let Some(plain) = on_a_terminal(test, &agent, Some("1")) else {
        return;
    };
    assert!(plain.contains("ERROR"), "{plain:?}");
    assert!(!plain.contains(ESC), "colour despite NO_COLOR: {plain:?}");
}
