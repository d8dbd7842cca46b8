//! `crossway-demo`: `crossway-proxy demo`, the whole chain, each part its own process over real sockets, a guest
//! app's window on a host compositor, and what it cost.
//!
//! ```text
//!  demo ─┬▶ crossway-proxy headless --socket T/host-0 --control T/host-0.control   (or --host)
//!        ├▶ crossway-proxy serve --socket-path T/gpu.sock --wayland-display HOST
//!        │                       --vm-name demo --stats-file T/serve-stats.json
//!        ├▶ crossway-proxy vm --serve-socket T/gpu.sock --socket T/virtgpu.sock --     (own group)
//!        │     crossway-agent --device auto --socket T/guest-0 -- APP ARGS
//!        └─ latency probe: a Wayland client on T/guest-0 timing wl_display.sync round trips
//! ```
//!
//! While it runs, SIGUSR1 makes `serve` rewrite its stats file, read back for the progress
//! line. At the end: a screenshot of the host output and its toplevels (headless control
//! socket), then every process is stopped in order (the guest side first, so `serve` counts
//! everything, then `serve`, whose SIGTERM writes its final counters, then the compositor):
//! SIGTERM, then SIGKILL after a grace period, the VM's whole process group included. The
//! private directory T goes last, on every way out.

mod args;

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};

pub use args::DemoArgs;

use crossway_relay::stats::VmSnapshot;

/// How long a child has between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
/// How long a server process may take to create its socket.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the progress line and the counters are refreshed.
const TICK: Duration = Duration::from_millis(500);
/// How long one `wl_display.sync` round trip may take before the probe gives up.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);
/// The default app's window.
const DEFAULT_APP_SIZE: (u32, u32) = (480, 320);

/// Runs the demo; returns the exit code (the app's when it failed, 130 after Ctrl-C).
pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let bins = Binaries::find(&args)?;
    let out = args.out.clone();
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    // Removed once `Demo::run` has stopped every child.
    let dir = private_dir()?;
    let demo = Demo {
        args,
        bins,
        dir: dir.path().to_owned(),
        logs,
        stop,
    };
    let result = demo.run();
    drop(dir);
    result
}

/// The binaries the demo runs, found next to the running executable.
#[derive(Debug, Clone)]
struct Binaries {
    proxy: PathBuf,
    /// `None` with `--no-agent`.
    agent: Option<PathBuf>,
    /// The guest program and its arguments (the agent's APP, or the program `vm` runs).
    app: Vec<OsString>,
}

impl Binaries {
    fn find(args: &DemoArgs) -> Result<Binaries> {
        let proxy = std::env::current_exe().context("finding crossway-proxy's own binary")?;
        let dir = proxy
            .parent()
            .context("crossway-proxy's binary has no directory")?
            .to_owned();
        let agent = if args.no_agent {
            None
        } else {
            Some(sibling(&dir, "crossway-agent", "crossway-agent")?)
        };
        let app = if !args.command.is_empty() {
            args.command.clone()
        } else if args.no_agent {
            let guest = sibling(&dir, "crossway-xd-guest", "crossway-tests")?;
            let mut app = vec![guest.into_os_string()];
            app.extend(
                [
                    "shm-window",
                    "--frames",
                    "1000000000",
                    "--title",
                    "xd-guest",
                ]
                .map(OsString::from),
            );
            app
        } else {
            let client = sibling(&dir, "crossway-test-client", "crossway-tests")?;
            let (w, h) = DEFAULT_APP_SIZE;
            let mut app = vec![client.into_os_string()];
            app.extend(
                [
                    // Draws into virtio-gpu guest blobs, which the agent forwards by resource
                    // id: on a host with udmabuf, no byte is copied anywhere.
                    "--buffer",
                    "virtgpu",
                    "--width",
                    &w.to_string(),
                    "--height",
                    &h.to_string(),
                    "--title",
                    "crossway demo",
                    "--frames",
                    "1000000000",
                ]
                .map(OsString::from),
            );
            app
        };
        Ok(Binaries { proxy, agent, app })
    }
}

/// `dir/name`, or an error naming the cargo command that builds it.
fn sibling(dir: &Path, name: &str, package: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let release = if dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    bail!(
        "{name} not found next to crossway-proxy in {}; build it with \
         `cargo build{release} -p {package} --bin {name}` (scripts/demo builds everything)",
        dir.display()
    )
}

/// A mode-0700 directory for the sockets, under `$XDG_RUNTIME_DIR` when there is one.
fn private_dir() -> Result<tempfile::TempDir> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("crossway-demo-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a private directory in {}", base.display()))
}

/// A child process, stopped (SIGTERM, then SIGKILL) and reaped on drop. With `group` it leads
/// a process group of its own and signals go to the whole group, so what it started (the
/// agent, the app) goes too.
#[derive(Debug)]
struct Supervised {
    name: &'static str,
    child: Option<Child>,
    group: bool,
    status: Option<ExitStatus>,
    grace: Duration,
}

impl Supervised {
    fn spawn(name: &'static str, cmd: &mut Command, group: bool, log: &Path) -> Result<Supervised> {
        use std::os::unix::process::CommandExt as _;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        // Every child leads a group of its own: a terminal's Ctrl-C reaches the demo alone,
        // which stops the chain in order instead of every process at once.
        cmd.process_group(0);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(Supervised {
            name,
            child: Some(child),
            group,
            status: None,
            grace: GRACE,
        })
    }

    fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(|c| Pid::from_raw(c.id() as i32))
    }

    /// Its exit status once it has exited by itself (reaped here).
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            self.status = Some(status);
        }
        self.status
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = if self.group {
                rustix::process::kill_process_group(pid, signal)
            } else if self.status.is_none() {
                rustix::process::kill_process(pid, signal)
            } else {
                Ok(())
            };
        }
    }

    /// Whether anything of it is left: the process, or with `group` any member of its group.
    fn alive(&mut self) -> bool {
        let leader = self.exited().is_none() && self.child.is_some();
        let members = self.group && self.pid().is_some_and(group_has_live_members);
        leader || members
    }

    /// SIGTERM, then SIGKILL after its grace period; returns how the process ended (its own status if
    /// it had already exited).
    fn stop(&mut self) -> Option<ExitStatus> {
        if self.child.is_none() {
            return self.status;
        }
        if self.alive() {
            self.signal(Signal::TERM);
            let deadline = Instant::now() + self.grace;
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.alive() {
                tracing::warn!(name = self.name, "still running after SIGTERM: killing it");
                self.signal(Signal::KILL);
                // SIGKILL is delivered, and orphans reaped by init, a moment later.
                let deadline = Instant::now() + Duration::from_secs(1);
                while self.alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        if let Some(mut c) = self.child.take()
            && self.status.is_none()
        {
            self.status = c.wait().ok();
        }
        self.status
    }
}

/// Whether any process of group `pgid` is still running. Zombies do not count: they are
/// dead, waiting for their parent or init to reap them (which some container inits do slowly).
fn group_has_live_members(pgid: Pid) -> bool {
    if rustix::process::test_kill_process_group(pgid).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|e| {
        let Some(stat) = e
            .file_name()
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| std::fs::read_to_string(format!("/proc/{n}/stat")).ok())
        else {
            return false;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        let mut fields = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace())
            .into_iter()
            .flatten();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        pgrp == Some(pgid.as_raw_nonzero().get()) && !matches!(state, Some("Z" | "X"))
    })
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One run: what it was asked and where things go.
struct Demo {
    args: DemoArgs,
    bins: Binaries,
    dir: PathBuf,
    logs: PathBuf,
    stop: Arc<AtomicBool>,
}

/// How the guest side ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppEnd {
    /// Still running when the demo's time was up; stopped by the demo.
    StoppedAfterRun,
    /// Still running when Ctrl-C (or SIGTERM) came.
    Interrupted,
    /// Exited by itself with this code (the shell's convention for signals).
    Exited(u8),
}

impl Demo {
    fn run(&self) -> Result<ExitCode> {
        let env = |cmd: &mut Command| {
            // Logs go to files: no colour codes in them.
            cmd.env("XDG_RUNTIME_DIR", &self.dir)
                .env("TMPDIR", &self.dir)
                .env("NO_COLOR", "1")
                .env_remove("DISPLAY");
        };

        // The host compositor.
        let (host_display, _headless, control) = if self.args.host {
            let display = std::env::var_os("WAYLAND_DISPLAY")
                .filter(|d| !d.is_empty())
                .context(
                    "--host needs $WAYLAND_DISPLAY (run it inside a Wayland desktop session)",
                )?;
            // A bare name is relative to the user's runtime directory, not to ours.
            let display = match std::env::var_os("XDG_RUNTIME_DIR") {
                Some(run) if !Path::new(&display).is_absolute() => Path::new(&run).join(&display),
                _ => PathBuf::from(display),
            };
            (display, None, None)
        } else {
            let socket = self.dir.join("host-0");
            let control = self.dir.join("host-0.control");
            let (w, h) = self.args.size;
            let mut cmd = Command::new(&self.bins.proxy);
            cmd.arg("headless")
                .arg("--socket")
                .arg(&socket)
                .arg("--control")
                .arg(&control)
                .arg("--size")
                .arg(format!("{w}x{h}"));
            env(&mut cmd);
            let mut headless =
                Supervised::spawn("headless", &mut cmd, false, &self.logs.join("headless.log"))?;
            self.wait_listening(&mut headless, &[&socket, &control])?;
            (socket, Some(headless), Some(control))
        };

        // The VM's backend.
        let gpu = self.dir.join("gpu.sock");
        let stats_file = self.dir.join("serve-stats.json");
        let mut cmd = Command::new(&self.bins.proxy);
        cmd.arg("serve")
            .arg("--socket-path")
            .arg(&gpu)
            .arg("--wayland-display")
            .arg(&host_display)
            .arg("--vm-name")
            .arg(&self.args.vm_name)
            .arg("--stats-file")
            .arg(&stats_file);
        env(&mut cmd);
        let mut serve = Supervised::spawn("serve", &mut cmd, false, &self.logs.join("serve.log"))?;
        self.wait_listening(&mut serve, &[&gpu])?;

        // The VM, the agent inside it and the app.
        let guest_socket = self.dir.join("guest-0");
        let agent_stats_file = self.dir.join("agent-stats.json");
        let mut cmd = Command::new(&self.bins.proxy);
        cmd.arg("vm")
            .arg("--serve-socket")
            .arg(&gpu)
            .arg("--socket")
            .arg(self.dir.join("virtgpu.sock"))
            .arg("--");
        match &self.bins.agent {
            Some(agent) => {
                cmd.arg(agent)
                    .args(["--device", "auto", "--socket"])
                    .arg(&guest_socket)
                    .arg("--stats-file")
                    .arg(&agent_stats_file)
                    .arg("--")
                    .args(&self.bins.app);
            }
            None => {
                cmd.args(&self.bins.app);
            }
        }
        env(&mut cmd);
        cmd.env_remove("WAYLAND_DISPLAY");
        let started = Instant::now();
        let mut vm = Supervised::spawn("vm", &mut cmd, true, &self.logs.join("guest.log"))?;

        let mut progress = Progress::new(started);
        let mut sampler = StatsSampler {
            file: stats_file.clone(),
            requested: None,
            last: None,
        };
        let shot = self.args.out.join("screenshot.png");

        // Wait for the window.
        let window_deadline = started + Duration::from_secs_f64(self.args.startup_timeout);
        let mut next_tick = Instant::now();
        let shown_at = loop {
            if self.stop.load(Ordering::Relaxed) {
                progress.finish();
                bail!("interrupted before the window appeared");
            }
            if let Some(status) = vm.exited() {
                progress.finish();
                bail!(
                    "the guest side exited ({status}) before its window appeared; logs in {}{}",
                    self.logs.display(),
                    log_tail(&self.logs.join("guest.log"))
                );
            }
            if serve.exited().is_some() {
                progress.finish();
                bail!(
                    "crossway-proxy serve exited{}",
                    log_tail(&self.logs.join("serve.log"))
                );
            }
            if Instant::now() >= window_deadline {
                progress.finish();
                bail!(
                    "no window within {:.0} s; logs in {}{}",
                    self.args.startup_timeout,
                    self.logs.display(),
                    log_tail(&self.logs.join("guest.log"))
                );
            }
            if Instant::now() >= next_tick {
                next_tick += TICK;
                let snapshot = sampler.sample(&serve);
                progress.update(snapshot.as_ref(), "starting");
            }
            // The embedded compositor is asked directly, often; a desktop only through serve's
            // counters.
            let shown = match &control {
                Some(c) => host_toplevels(c)
                    .map(|t| t.iter().any(|t| t.mapped))
                    .unwrap_or(false),
                None => sampler
                    .last
                    .as_ref()
                    .is_some_and(|(_, s)| s.total.frames > 0),
            };
            if shown {
                break Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        };

        // The round trips, while the app runs.
        let latency = if self.args.latency_samples == 0 {
            Err("not measured (--latency-samples 0)".to_owned())
        } else if self.bins.agent.is_none() {
            Err("not measured: no agent socket with --no-agent".to_owned())
        } else {
            measure_latency(&guest_socket, self.args.latency_samples, ROUND_TRIP_TIMEOUT)
                .map(|samples| Latency::from_samples(&samples))
                .map_err(|e| format!("{e:#}"))
        };
        let mut host_view = control
            .as_deref()
            .map(|c| HostView::capture(c, &shot))
            .unwrap_or_default();

        // Run. Frame rate from the first and last samples taken while the window was up.
        let mut steady: Option<(Instant, u64)> = None;
        let mut steady_last: Option<(Instant, u64)> = None;
        let run_until = shown_at + Duration::from_secs_f64(self.args.duration);
        let end = loop {
            if self.stop.load(Ordering::Relaxed) {
                break AppEnd::Interrupted;
            }
            if let Some(status) = vm.exited() {
                break AppEnd::Exited(exit_code(status));
            }
            let now = Instant::now();
            if now >= run_until {
                break AppEnd::StoppedAfterRun;
            }
            if now >= next_tick {
                next_tick += TICK;
                let snapshot = sampler.sample(&serve);
                progress.update(snapshot.as_ref(), "running");
                if let Some((at, s)) = snapshot
                    && at >= shown_at
                {
                    steady.get_or_insert((at, s.total.frames));
                    steady_last = Some((at, s.total.frames));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ran_for = shown_at.elapsed();
        progress.finish();

        // The last look, while the window is still there.
        if !matches!(end, AppEnd::Exited(_))
            && let Some(c) = control.as_deref()
        {
            host_view = HostView::capture(c, &shot);
        }
        // The guest side first, so serve has counted everything, then serve, whose SIGTERM
        // writes the final counters.
        let vm_status = vm.stop();
        tracing::debug!(?vm_status, "guest side stopped");
        serve.stop();
        let relay = read_stats(&stats_file)
            .ok()
            .or_else(|| sampler.last.clone().map(|(_, s)| s))
            .unwrap_or_default();
        // The agent wrote its counters when the guest side stopped.
        let agent_stats = std::fs::read_to_string(&agent_stats_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());

        let report = Report::new(ReportInput {
            args: &self.args,
            app: &self.bins.app,
            agent: self.bins.agent.is_some(),
            host: if control.is_some() {
                "embedded headless compositor".into()
            } else {
                format!("{} ($WAYLAND_DISPLAY)", host_display.display())
            },
            ran_for,
            steady_fps: match (steady, steady_last) {
                (Some((t0, f0)), Some((t1, f1))) if t1.duration_since(t0) >= TICK => {
                    Some(f1.saturating_sub(f0) as f64 / t1.duration_since(t0).as_secs_f64())
                }
                _ => None,
            },
            end,
            relay,
            agent_stats,
            udmabuf: Path::new("/dev/udmabuf").exists(),
            latency,
            view: host_view,
        });
        let stats_path = self.args.out.join("stats.json");
        std::fs::write(&stats_path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", stats_path.display()))?;
        write_stdout(&report.summary(&self.args.out))?;
        Ok(match end {
            AppEnd::StoppedAfterRun | AppEnd::Exited(0) => ExitCode::SUCCESS,
            AppEnd::Interrupted => ExitCode::from(130),
            AppEnd::Exited(code) => ExitCode::from(code),
        })
    }

    /// Waits until every path in `paths` exists, failing if `child` exits, a signal comes or
    /// [`LISTEN_TIMEOUT`] passes.
    fn wait_listening(&self, child: &mut Supervised, paths: &[&Path]) -> Result<()> {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while !paths.iter().all(|p| p.exists()) {
            if let Some(status) = child.exited() {
                bail!(
                    "{} exited before listening ({status}){}",
                    child.name,
                    log_tail(&self.logs.join(format!("{}.log", child.name)))
                );
            }
            if self.stop.load(Ordering::Relaxed) {
                bail!("interrupted while starting {}", child.name);
            }
            if Instant::now() >= deadline {
                bail!("{} did not listen within {LISTEN_TIMEOUT:?}", child.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// The last lines of a log, indented, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(12)..];
    if tail.is_empty() {
        return String::new();
    }
    let mut out = format!("\nlast lines of {}:", path.display());
    for line in tail {
        out.push_str("\n  ");
        out.push_str(line);
    }
    out
}

/// The shell's convention: the code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(255),
        (None, None) => 1,
    }
}

/// Reads `serve`'s stats file, asking for a fresh one each time.
struct StatsSampler {
    file: PathBuf,
    /// When the file now on disk was asked for.
    requested: Option<Instant>,
    /// The latest counters and when they were asked for.
    last: Option<(Instant, VmSnapshot)>,
}

impl StatsSampler {
    /// The counters of the previous request (serve rewrites the file on SIGUSR1, atomically)
    /// with the time of that request, then asks for the next.
    fn sample(&mut self, serve: &Supervised) -> Option<(Instant, VmSnapshot)> {
        if let (Some(at), Ok(s)) = (self.requested, read_stats(&self.file)) {
            self.last = Some((at, s));
        }
        serve.signal(Signal::USR1);
        self.requested = Some(Instant::now());
        self.last.clone()
    }
}

fn read_stats(path: &Path) -> Result<VmSnapshot> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// A toplevel as the headless compositor's control socket lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostToplevel {
    /// The title the host sees (tagged with the VM's name).
    #[serde(default)]
    pub title: Option<String>,
    /// The app id the host sees.
    #[serde(default)]
    pub app_id: Option<String>,
    /// x, y, width, height on the output.
    #[serde(default)]
    pub rect: (i32, i32, i32, i32),
    /// Whether it has a buffer.
    #[serde(default)]
    pub mapped: bool,
    /// The security context's app id its client connected through.
    #[serde(default)]
    pub security_context_app_id: Option<String>,
}

fn host_toplevels(control: &Path) -> Result<Vec<HostToplevel>> {
    let value =
        crossway_headless::control::request(control, &serde_json::json!({ "toplevels": null }))?;
    Ok(serde_json::from_value(value)?)
}

/// What the host showed: its toplevels and whether the screenshot was written.
#[derive(Debug, Clone, Default)]
struct HostView {
    toplevels: Vec<HostToplevel>,
    screenshot: bool,
    error: Option<String>,
}

impl HostView {
    fn capture(control: &Path, png: &Path) -> HostView {
        let mut view = HostView::default();
        match host_toplevels(control) {
            Ok(t) => view.toplevels = t,
            Err(e) => view.error = Some(format!("toplevels: {e:#}")),
        }
        // The compositor writes the file: give it a path that does not depend on its cwd.
        let png = std::path::absolute(png).unwrap_or_else(|_| png.to_owned());
        match crossway_headless::control::request(
            control,
            &serde_json::json!({ "screenshot": png }),
        ) {
            Ok(_) => view.screenshot = true,
            Err(e) => view.error = Some(format!("screenshot: {e:#}")),
        }
        view
    }
}

/// The live progress line on stderr: rewritten in place on a terminal, a line a second
/// otherwise.
struct Progress {
    started: Instant,
    tty: bool,
    shown: bool,
    last_line: Instant,
    prev: Option<(Instant, VmSnapshot)>,
}

impl Progress {
    fn new(started: Instant) -> Progress {
        use std::io::IsTerminal as _;
        Progress {
            started,
            tty: std::io::stderr().is_terminal(),
            shown: false,
            last_line: started,
            prev: None,
        }
    }

    /// Shows `now`, counters asked for at its instant.
    fn update(&mut self, now: Option<&(Instant, VmSnapshot)>, phase: &str) {
        let t = Instant::now();
        let empty = (t, VmSnapshot::default());
        let (at, now) = now.unwrap_or(&empty);
        let rates = self
            .prev
            .as_ref()
            .filter(|(prev_at, _)| at > prev_at)
            .map(|(prev_at, prev)| Rates::between(prev, now, at.duration_since(*prev_at)));
        let line = progress_line(phase, t.duration_since(self.started), now, rates.as_ref());
        if rates.is_some() || self.prev.is_none() {
            self.prev = Some((*at, now.clone()));
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
        } else if t.duration_since(self.last_line) >= Duration::from_secs(1) {
            self.last_line = t;
            let _ = writeln!(err, "{line}");
        } else {
            return;
        }
        let _ = err.flush();
        self.shown = true;
    }

    fn finish(&mut self) {
        if self.tty && self.shown {
            let _ = writeln!(std::io::stderr());
        }
        self.shown = false;
    }
}

/// Rates between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Frames per second.
    pub fps: f64,
    /// Wayland bytes per second through the relay, both ways, in MB/s.
    pub relay_mb_s: f64,
    /// Pixel bytes copied per second on the copy path, in MB/s.
    pub copied_mb_s: f64,
}

impl Rates {
    /// From `prev` to `now`, `dt` apart (counters that went backwards count as zero).
    pub fn between(prev: &VmSnapshot, now: &VmSnapshot, dt: Duration) -> Rates {
        let secs = dt.as_secs_f64().max(1e-3);
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        let (p, n) = (&prev.total, &now.total);
        Rates {
            fps: d(p.frames, n.frames),
            relay_mb_s: (d(p.bytes_to_host, n.bytes_to_host)
                + d(p.bytes_to_guest, n.bytes_to_guest))
                / 1e6,
            copied_mb_s: d(p.bytes_copied, n.bytes_copied) / 1e6,
        }
    }
}

/// `demo running 3.5 s | frames 180 at 59.8 fps | relay 0.03 MB/s | copied 36.7 MB/s`.
pub fn progress_line(
    phase: &str,
    elapsed: Duration,
    now: &VmSnapshot,
    rates: Option<&Rates>,
) -> String {
    let t = &now.total;
    let mut line = format!(
        "demo {phase} {:.1} s | frames {}",
        elapsed.as_secs_f64(),
        t.frames
    );
    if let Some(r) = rates {
        line.push_str(&format!(
            " at {:.1} fps | relay {:.2} MB/s | copied {:.1} MB/s",
            r.fps, r.relay_mb_s, r.copied_mb_s
        ));
    }
    line.push_str(&format!(
        " | buffers {} ({} zero-copy)",
        t.buffers_copy + t.buffers_dmabuf_zero_copy + t.buffers_shm_zero_copy,
        t.buffers_dmabuf_zero_copy + t.buffers_shm_zero_copy
    ));
    line
}

/// Round-trip latency percentiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Round trips timed.
    pub samples: usize,
    /// Median, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Fastest, µs.
    pub min_us: f64,
    /// Slowest, µs.
    pub max_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
}

impl Latency {
    /// Percentiles of `samples` (nearest rank); all zero when there are none.
    pub fn from_samples(samples: &[Duration]) -> Latency {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let p = |q: f64| percentile(&us, q).unwrap_or(0.0);
        let mean = if us.is_empty() {
            0.0
        } else {
            us.iter().sum::<f64>() / us.len() as f64
        };
        Latency {
            samples: us.len(),
            p50_us: p(50.0),
            p90_us: p(90.0),
            p99_us: p(99.0),
            min_us: us.first().copied().unwrap_or(0.0),
            max_us: us.last().copied().unwrap_or(0.0),
            mean_us: mean,
        }
    }
}

/// The `q`th percentile (0 < q <= 100) of ascending `sorted` by nearest rank: the smallest
/// value with at least q % of the samples at or below it.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(q > 0.0 && q <= 100.0) {
        return None;
    }
    let rank = (q / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Times `samples` `wl_display.sync` round trips on a fresh connection to `socket` (after one
/// untimed warm-up, which also carries the connection's first bytes).
pub fn measure_latency(socket: &Path, samples: u32, timeout: Duration) -> Result<Vec<Duration>> {
    use wayland_client::protocol::wl_callback;
    use wayland_client::{Connection, Dispatch, QueueHandle};

    struct Probe {
        done: bool,
    }
    impl Dispatch<wl_callback::WlCallback, ()> for Probe {
        fn event(
            state: &mut Probe,
            _: &wl_callback::WlCallback,
            event: wl_callback::Event,
            _: &(),
            _: &Connection,
            _: &QueueHandle<Probe>,
        ) {
            if let wl_callback::Event::Done { .. } = event {
                state.done = true;
            }
        }
    }

    let stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let conn = Connection::from_socket(stream)?;
    let mut queue = conn.new_event_queue();
    let qh = queue.handle();
    let display = conn.display();
    let mut state = Probe { done: false };
    let mut out = Vec::with_capacity(samples as usize);
    for i in 0..=samples {
        state.done = false;
        let start = Instant::now();
        let _callback = display.sync(&qh, ());
        let deadline = start + timeout;
        while !state.done {
            conn.flush().context("sending wl_display.sync")?;
            queue
                .dispatch_pending(&mut state)
                .context("dispatching events")?;
            if state.done {
                break;
            }
            let Some(guard) = queue.prepare_read() else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no answer to wl_display.sync within {timeout:?}");
            }
            let ready = {
                let fd = guard.connection_fd();
                let mut fds = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::IN,
                )];
                let ts = rustix::time::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                };
                match rustix::event::poll(&mut fds, Some(&ts)) {
                    Ok(n) => n > 0,
                    Err(rustix::io::Errno::INTR) => false,
                    Err(e) => return Err(e.into()),
                }
            };
            if ready {
                guard.read().context("reading events")?;
            }
        }
        if i > 0 {
            out.push(start.elapsed());
        }
    }
    Ok(out)
}

/// What [`Report::new`] is made from.
struct ReportInput<'a> {
    args: &'a DemoArgs,
    app: &'a [OsString],
    agent: bool,
    host: String,
    ran_for: Duration,
    steady_fps: Option<f64>,
    end: AppEnd,
    relay: VmSnapshot,
    agent_stats: Option<serde_json::Value>,
    udmabuf: bool,
    latency: std::result::Result<Latency, String>,
    view: HostView,
}

/// `stats.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The VM's name.
    pub vm_name: String,
    /// The guest app and its arguments.
    pub app: Vec<String>,
    /// The chain, guest to host.
    pub chain: String,
    /// The host compositor.
    pub host: String,
    /// Seconds from the window's appearance to the end of the run.
    pub seconds: f64,
    /// `stopped after the run`, `interrupted` or `exited with N`.
    pub app_end: String,
    /// Commits with a buffer attached, as the proxy's relay counted them.
    pub frames: u64,
    /// Frames per second while the window was up, from `serve`'s counters sampled every
    /// half second (`frames / seconds` when the run was too short to sample).
    pub fps: f64,
    /// Buffers by path.
    pub buffers: Buffers,
    /// Pixel bytes the proxy copied from guest pages into host memory.
    pub bytes_copied: u64,
    /// `bytes_copied / frames`.
    pub bytes_copied_per_frame: f64,
    /// Wayland messages and bytes each way.
    pub messages: Messages,
    /// Zero-copy ratio.
    pub zero_copy: ZeroCopy,
    /// `wl_display.sync` round trips through the whole chain, or why not.
    pub latency: Option<Latency>,
    /// Why `latency` is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_error: Option<String>,
    /// The host's toplevels at the end (embedded compositor only).
    pub toplevels: Vec<HostToplevel>,
    /// `screenshot.png`, or null when none was taken.
    pub screenshot: Option<String>,
    /// What went wrong looking at the host, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_view_error: Option<String>,
    /// `serve`'s own counters, whole (the latency probe is one of its clients).
    pub relay: VmSnapshot,
    /// The agent's own counters (`crossway-agent --stats-file`): bytes it copied from guest
    /// apps' memory into blobs, dmabufs forwarded by resource id, ...; null with `--no-agent`.
    #[serde(default)]
    pub agent: Option<serde_json::Value>,
    /// Whether this host has `/dev/udmabuf` (without it, guest blobs are copied on the host).
    #[serde(default)]
    pub udmabuf: bool,
}

/// Buffers by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffers {
    /// dmabufs imported without a copy.
    pub dmabuf_zero_copy: u64,
    /// shm pools shared without a copy.
    pub shm_zero_copy: u64,
    /// Buffers whose damaged rows are copied at commit.
    pub copy: u64,
}

/// Messages and bytes each way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Messages {
    /// Messages guest → host.
    pub to_host: u64,
    /// Messages host → guest.
    pub to_guest: u64,
    /// Bytes guest → host.
    pub bytes_to_host: u64,
    /// Bytes host → guest.
    pub bytes_to_guest: u64,
}

/// The zero-copy ratio, by buffers (the relay does not count buffer bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZeroCopy {
    /// Buffers on a zero-copy path / all buffers; null without buffers.
    pub ratio: Option<f64>,
    /// What the ratio divides.
    pub basis: String,
}

impl Report {
    fn new(i: ReportInput<'_>) -> Report {
        let t = &i.relay.total;
        let seconds = i.ran_for.as_secs_f64();
        let zero = t.buffers_dmabuf_zero_copy + t.buffers_shm_zero_copy;
        let all = zero + t.buffers_copy;
        let (latency, latency_error) = match i.latency {
            Ok(l) => (Some(l), None),
            Err(e) => (None, Some(e)),
        };
        Report {
            vm_name: i.args.vm_name.clone(),
            app: i
                .app
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            chain: if i.agent {
                "app → crossway-agent → loopback VM (crossway-proxy vm) → crossway-proxy serve → host"
            } else {
                "guest program → loopback VM (crossway-proxy vm) → crossway-proxy serve → host"
            }
            .into(),
            host: i.host,
            seconds,
            app_end: match i.end {
                AppEnd::StoppedAfterRun => "stopped by the demo at the end of the run".into(),
                AppEnd::Interrupted => "interrupted".into(),
                AppEnd::Exited(c) => format!("exited with {c}"),
            },
            frames: t.frames,
            fps: match i.steady_fps {
                Some(f) => f,
                None if seconds > 0.0 => t.frames as f64 / seconds,
                None => 0.0,
            },
            buffers: Buffers {
                dmabuf_zero_copy: t.buffers_dmabuf_zero_copy,
                shm_zero_copy: t.buffers_shm_zero_copy,
                copy: t.buffers_copy,
            },
            bytes_copied: t.bytes_copied,
            bytes_copied_per_frame: if t.frames > 0 {
                t.bytes_copied as f64 / t.frames as f64
            } else {
                0.0
            },
            messages: Messages {
                to_host: t.messages_to_host,
                to_guest: t.messages_to_guest,
                bytes_to_host: t.bytes_to_host,
                bytes_to_guest: t.bytes_to_guest,
            },
            zero_copy: ZeroCopy {
                ratio: (all > 0).then(|| zero as f64 / all as f64),
                basis: "buffers on a zero-copy path (dmabuf or shm) / all buffers".into(),
            },
            latency,
            latency_error,
            toplevels: i.view.toplevels,
            screenshot: i.view.screenshot.then(|| "screenshot.png".into()),
            host_view_error: i.view.error,
            relay: i.relay,
            agent: i.agent_stats,
            udmabuf: i.udmabuf,
        }
    }

    /// The short human summary printed at the end.
    pub fn summary(&self, out: &Path) -> String {
        let mut s = String::new();
        let app = self.app.first().map_or("?", |a| {
            Path::new(a)
                .file_name()
                .and_then(OsStr::to_str)
                .unwrap_or(a)
        });
        s.push_str(&format!(
            "crossway demo: {app} in VM \"{}\" on the {}\n  chain: {}\n",
            self.vm_name, self.host, self.chain
        ));
        if self.toplevels.is_empty() {
            s.push_str("  window: no toplevel seen on the host at the end");
            if self.host.contains("WAYLAND_DISPLAY") {
                s.push_str(" (your desktop: look at it)");
            }
            s.push('\n');
        }
        for w in &self.toplevels {
            let (x, y, width, height) = w.rect;
            s.push_str(&format!(
                "  window on the host: title {:?}, app id {:?}, at {x},{y} size {width}x{height}{}\n",
                w.title.as_deref().unwrap_or(""),
                w.app_id.as_deref().unwrap_or(""),
                w.security_context_app_id
                    .as_deref()
                    .map(|a| format!(", security context {a:?}"))
                    .unwrap_or_default()
            ));
        }
        s.push_str(&format!(
            "  app: {} frames ({:.1} fps) in {:.1} s with its window up; {}\n",
            self.frames, self.fps, self.seconds, self.app_end
        ));
        let b = &self.buffers;
        s.push_str(&format!(
            "  buffers: {} dmabuf zero-copy, {} shm zero-copy, {} copied; bytes copied {} ({} per frame)\n",
            b.dmabuf_zero_copy,
            b.shm_zero_copy,
            b.copy,
            human_bytes(self.bytes_copied as f64),
            human_bytes(self.bytes_copied_per_frame),
        ));
        if !self.udmabuf && b.copy > 0 {
            s.push_str("  (this host has no /dev/udmabuf: the proxy copies guest blobs into host memory)\n");
        }
        if let Some(a) = &self.agent {
            let n = |k: &str| a.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            s.push_str(&format!(
                "  guest side: the agent copied {} ({} dmabufs forwarded by resource id, {} copied, {} shm pools)\n",
                human_bytes(n("bytes_copied") as f64),
                n("dmabufs_forwarded"),
                n("dmabufs_copied"),
                n("shm_pools"),
            ));
        }
        s.push_str(&match self.zero_copy.ratio {
            Some(r) => format!(
                "  zero-copy ratio: {:.0} % ({})\n",
                r * 100.0,
                self.zero_copy.basis
            ),
            None => "  zero-copy ratio: no buffers\n".into(),
        });
        let m = &self.messages;
        s.push_str(&format!(
            "  messages: {} guest → host ({}), {} host → guest ({})\n",
            m.to_host,
            human_bytes(m.bytes_to_host as f64),
            m.to_guest,
            human_bytes(m.bytes_to_guest as f64)
        ));
        s.push_str(&match (&self.latency, &self.latency_error) {
            (Some(l), _) => format!(
                "  wl_display.sync round trip through the chain ({} samples): p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs\n",
                l.samples, l.p50_us, l.p90_us, l.p99_us
            ),
            (None, Some(e)) => format!("  latency: {e}\n"),
            (None, None) => "  latency: not measured\n".into(),
        });
        if let Some(e) = &self.host_view_error {
            s.push_str(&format!("  host view: {e}\n"));
        }
        let shot = match &self.screenshot {
            Some(f) => format!("{} and ", out.join(f).display()),
            None => String::new(),
        };
        s.push_str(&format!(
            "  wrote {shot}{} (logs in {})\n",
            out.join("stats.json").display(),
            out.join("logs").display()
        ));
        s
    }
}

/// `12.3 MB`, `4.0 kB`, `17 B`.
pub fn human_bytes(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n:.0} B")
    }
}

#[cfg(test)]
mod tests;

/// A command's real output goes to stdout; logs go to stderr.
fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
