#![allow(clippy::unwrap_used)]

use super::*;
use crossway_relay::stats::ClientSnapshot;

fn snapshot(frames: u64, copied: u64, to_host: u64, to_guest: u64) -> VmSnapshot {
    VmSnapshot {
        vm_name: "demo".into(),
        total: ClientSnapshot {
            label: "total".into(),
            frames,
            bytes_copied: copied,
            bytes_to_host: to_host,
            bytes_to_guest: to_guest,
            ..ClientSnapshot::default()
        },
        clients_live: 1,
        clients: Vec::new(),
    }
}

fn args() -> DemoArgs {
    use clap::Parser as _;
    /// `crossway-proxy demo` with no options.
    #[derive(clap::Parser)]
    struct Demo {
        #[command(flatten)]
        args: DemoArgs,
    }
    Demo::parse_from(["demo"]).args
}

#[test]
fn percentile_nearest_rank_of_one_to_hundred_is_the_rank() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&v, 50.0), Some(50.0));
    assert_eq!(percentile(&v, 90.0), Some(90.0));
    assert_eq!(percentile(&v, 99.0), Some(99.0));
    assert_eq!(percentile(&v, 100.0), Some(100.0));
    assert_eq!(percentile(&v, 0.5), Some(1.0));
}

#[test]
fn percentile_of_few_samples_rounds_rank_up() {
    let v = [10.0, 20.0, 30.0];
    // ceil(0.5 * 3) = 2nd, ceil(0.9 * 3) = 3rd.
    assert_eq!(percentile(&v, 50.0), Some(20.0));
    assert_eq!(percentile(&v, 90.0), Some(30.0));
    assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
}

#[test]
fn percentile_empty_or_out_of_range_is_none() {
    assert_eq!(percentile(&[], 50.0), None);
    assert_eq!(percentile(&[1.0], 0.0), None);
    assert_eq!(percentile(&[1.0], 101.0), None);
    assert_eq!(percentile(&[1.0], f64::NAN), None);
}

#[test]
fn latency_from_unsorted_samples_sorts_and_summarises() {
    let samples: Vec<Duration> = [300u64, 100, 200, 400]
        .iter()
        .map(|&us| Duration::from_micros(us))
        .collect();
    let l = Latency::from_samples(&samples);
    assert_eq!(l.samples, 4);
    assert!((l.p50_us - 200.0).abs() < 1e-6, "{l:?}");
    assert!((l.p90_us - 400.0).abs() < 1e-6, "{l:?}");
    assert!((l.min_us - 100.0).abs() < 1e-6);
    assert!((l.max_us - 400.0).abs() < 1e-6);
    assert!((l.mean_us - 250.0).abs() < 1e-6);
    assert_eq!(Latency::from_samples(&[]).samples, 0);
}

#[test]
fn rates_between_snapshots_divide_by_elapsed_time() {
    let a = snapshot(10, 1_000_000, 500, 500);
    let b = snapshot(40, 4_000_000, 1_500, 1_500);
    let r = Rates::between(&a, &b, Duration::from_millis(500));
    assert!((r.fps - 60.0).abs() < 1e-9, "{r:?}");
    assert!((r.copied_mb_s - 6.0).abs() < 1e-9, "{r:?}");
    assert!((r.relay_mb_s - 0.004).abs() < 1e-9, "{r:?}");
}

#[test]
fn rates_with_counters_going_backwards_are_zero() {
    let r = Rates::between(
        &snapshot(40, 9, 9, 9),
        &snapshot(10, 1, 1, 1),
        Duration::from_secs(1),
    );
    assert_eq!(r.fps, 0.0);
    assert_eq!(r.copied_mb_s, 0.0);
}

#[test]
fn progress_line_shows_frames_rates_and_buffers() {
    let mut s = snapshot(120, 0, 0, 0);
    s.total.buffers_copy = 2;
    s.total.buffers_dmabuf_zero_copy = 1;
    let r = Rates {
        fps: 59.94,
        relay_mb_s: 0.031,
        copied_mb_s: 36.66,
    };
    let line = progress_line("running", Duration::from_millis(3500), &s, Some(&r));
    assert_eq!(
        line,
        "demo running 3.5 s | frames 120 at 59.9 fps | relay 0.03 MB/s | copied 36.7 MB/s \
         | buffers 3 (1 zero-copy)"
    );
    assert!(!progress_line("starting", Duration::ZERO, &s, None).contains("fps"));
}

fn report(relay: VmSnapshot, latency: std::result::Result<Latency, String>) -> Report {
    let a = args();
    let app = [OsString::from("/x/crossway-test-client"), "--frames".into()];
    Report::new(ReportInput {
        args: &a,
        app: &app,
        agent: true,
        host: "embedded headless compositor".into(),
        ran_for: Duration::from_secs(2),
        steady_fps: None,
        end: AppEnd::StoppedAfterRun,
        relay,
        agent_stats: Some(serde_json::json!({"bytes_copied": 0, "dmabufs_forwarded": 2})),
        udmabuf: false,
        latency,
        view: HostView {
            toplevels: vec![HostToplevel {
                title: Some("[demo] crossway demo".into()),
                app_id: Some("demo.crossway.test-client".into()),
                rect: (0, 0, 480, 320),
                mapped: true,
                security_context_app_id: None,
            }],
            screenshot: true,
            error: None,
        },
    })
}

#[test]
fn report_zero_copy_ratio_counts_buffers_on_zero_copy_paths() {
    let mut s = snapshot(100, 6_144_000, 10, 10);
    s.total.buffers_copy = 1;
    s.total.buffers_shm_zero_copy = 1;
    s.total.buffers_dmabuf_zero_copy = 2;
    let r = report(s, Err("x".into()));
    assert_eq!(r.zero_copy.ratio, Some(0.75));
    assert!(r.zero_copy.basis.contains("buffers"));
    assert!((r.fps - 50.0).abs() < 1e-9);
    assert!((r.bytes_copied_per_frame - 61_440.0).abs() < 1e-9);
    assert_eq!(r.latency, None);
    assert_eq!(r.latency_error.as_deref(), Some("x"));
}

#[test]
fn report_without_buffers_has_no_ratio() {
    let r = report(snapshot(0, 0, 0, 0), Err("x".into()));
    assert_eq!(r.zero_copy.ratio, None);
    assert_eq!(r.bytes_copied_per_frame, 0.0);
    assert!(
        r.summary(Path::new("out"))
            .contains("zero-copy ratio: no buffers")
    );
}

#[test]
fn report_json_has_the_documented_fields() {
    let l = Latency::from_samples(&[Duration::from_micros(100)]);
    let r = report(snapshot(3, 0, 1, 1), Ok(l));
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    for key in [
        "frames",
        "fps",
        "buffers",
        "bytes_copied",
        "messages",
        "zero_copy",
        "latency",
        "toplevels",
        "screenshot",
        "relay",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["latency"]["samples"], 1);
    assert_eq!(v["screenshot"], "screenshot.png");
    assert_eq!(v["toplevels"][0]["app_id"], "demo.crossway.test-client");
    assert!(v.get("latency_error").is_none());
    let back: Report = serde_json::from_value(v).unwrap();
    assert_eq!(back, r);
}

#[test]
fn summary_says_where_the_window_went_and_the_latency() {
    let l = Latency::from_samples(&[Duration::from_micros(120), Duration::from_micros(180)]);
    let text = report(snapshot(3, 0, 1, 1), Ok(l)).summary(Path::new("out"));
    assert!(
        text.contains(r#"title "[demo] crossway demo", app id "demo.crossway.test-client""#),
        "{text}"
    );
    assert!(text.contains("p50 120 µs"), "{text}");
    assert!(text.contains("out/screenshot.png"), "{text}");
    assert!(
        text.contains("crossway-test-client in VM \"demo\""),
        "{text}"
    );
}

#[test]
fn human_bytes_picks_a_unit() {
    assert_eq!(human_bytes(17.0), "17 B");
    assert_eq!(human_bytes(4_000.0), "4.0 kB");
    assert_eq!(human_bytes(12_340_000.0), "12.3 MB");
    assert_eq!(human_bytes(2.5e9), "2.50 GB");
}

#[test]
fn sibling_missing_names_the_cargo_command() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    std::fs::create_dir(&release).unwrap();
    let err = sibling(&release, "crossway-agent", "crossway-agent")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cargo build --release -p crossway-agent --bin crossway-agent"),
        "{err}"
    );
    let err = sibling(dir.path(), "crossway-agent", "crossway-agent")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`cargo build -p crossway-agent"), "{err}");
    std::fs::write(release.join("crossway-agent"), b"").unwrap();
    assert!(sibling(&release, "crossway-agent", "crossway-agent").is_ok());
}

#[test]
fn demo_args_defaults_match_the_readme() {
    let a = args();
    assert_eq!(a.out, PathBuf::from("crossway-demo"));
    assert_eq!(a.duration, 5.0);
    assert_eq!(a.vm_name, "demo");
    assert!(!a.host);
    assert!(a.command.is_empty());
}

#[test]
fn supervised_stop_reaches_the_whole_group_and_kills_what_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    // A grandchild that ignores SIGTERM, in the child's group.
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {}; while :; do sleep 0.05; done' & wait",
        pidfile.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    let mut child = Supervised::spawn("group", &mut cmd, true, &dir.path().join("g.log")).unwrap();
    child.grace = Duration::from_millis(300);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pidfile)
        .map(|s| s.trim().is_empty())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "grandchild never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let grandchild: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pgid = child.pid().unwrap();
    assert!(child.alive());
    child.stop();
    // Nothing of the group is left running (zombies wait for init to reap them).
    assert!(!group_has_live_members(pgid));
    let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "grandchild {grandchild} survived: {stat}"
    );
}

#[test]
fn supervised_reports_its_own_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exit 7"]);
    let mut child = Supervised::spawn("seven", &mut cmd, true, &dir.path().join("s.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.exited().is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(child.stop().and_then(|s| s.code()), Some(7));
    assert_eq!(exit_code(child.status.unwrap()), 7);
}

#[test]
fn measure_latency_times_sync_round_trips_against_a_compositor() {
    use crossway_headless::{Headless, HeadlessConfig, SocketSpec};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("w");
    let h = Headless::start(HeadlessConfig::new(SocketSpec::Path(socket.clone()))).unwrap();
    let samples = measure_latency(h.socket_path(), 20, Duration::from_secs(5)).unwrap();
    assert_eq!(samples.len(), 20);
    assert!(samples.iter().all(|d| *d > Duration::ZERO));
    let l = Latency::from_samples(&samples);
    assert!(l.p50_us <= l.p90_us && l.p90_us <= l.p99_us && l.p99_us <= l.max_us);
}

#[test]
fn measure_latency_without_a_server_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = measure_latency(&dir.path().join("none"), 5, Duration::from_millis(100))
        .unwrap_err()
        .to_string();
    assert!(err.contains("connecting to"), "{err}");
}

#[test]
fn measure_latency_times_out_on_a_silent_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let started = Instant::now();
    let err = measure_latency(&path, 5, Duration::from_millis(200))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no answer"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
