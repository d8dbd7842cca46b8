//! End-to-end scenarios: each file in `tests/tests/` is one scenario that starts real processes
//! (Crossway's binaries, Debian's Wayland clients, our test clients) over real sockets and
//! checks what they did from the outside. This library holds what the scenarios share.
//!
//! A scenario that needs a program the machine lacks prints a line starting with `SKIP:` and
//! the reason, then returns; `scripts/test` counts those lines as skipped, not passed.

#![forbid(unsafe_code)]

pub mod compositors;
pub mod pixels;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use crossway_headless::{Headless, HeadlessConfig, SocketSpec};

pub mod rutabaga;

/// A private `XDG_RUNTIME_DIR` (mode 0700, as libwayland wants), removed on drop.
#[derive(Debug)]
pub struct Runtime {
    dir: tempfile::TempDir,
}

impl Runtime {
    /// A fresh runtime directory.
    pub fn new() -> Result<Runtime> {
        let dir = tempfile::Builder::new()
            .prefix("crossway-test-")
            .tempdir()?;
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        Ok(Runtime { dir })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A headless compositor listening in this directory on `name`, with default settings.
    pub fn headless(&self, name: &str) -> Result<Headless> {
        self.headless_with(name, |_| {})
    }

    /// A headless compositor with settings changed by `configure`.
    pub fn headless_with(
        &self,
        name: &str,
        configure: impl FnOnce(&mut HeadlessConfig),
    ) -> Result<Headless> {
        let mut config = HeadlessConfig::new(SocketSpec::Path(self.path().join(name)));
        configure(&mut config);
        Headless::start(config)
    }

    /// A command for a Wayland client of the compositor at `socket`.
    pub fn client(&self, program: impl AsRef<std::ffi::OsStr>, socket: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("XDG_RUNTIME_DIR", self.path())
            .env("WAYLAND_DISPLAY", socket)
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        cmd
    }
}

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    name: String,
}

impl Process {
    /// Starts `cmd` with stdout and stderr captured.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Process> {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process {
            child: Some(child),
            name: name.into(),
        })
    }

    /// Its process id, until it is finished.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills it and returns what it printed (stdout, stderr).
    pub fn finish(mut self) -> (String, String) {
        let Some(mut child) = self.child.take() else {
            return Default::default();
        };
        let _ = child.kill();
        match child.wait_with_output() {
            Ok(out) => (
                String::from_utf8_lossy(&out.stdout).into(),
                String::from_utf8_lossy(&out.stderr).into(),
            ),
            Err(_) => Default::default(),
        }
    }

    /// Waits up to `timeout` for it to exit by itself; returns its exit code and output.
    pub fn wait(mut self, timeout: Duration) -> Result<(Option<i32>, String, String)> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("already finished")?;
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let name = self.name.clone();
                let (out, err) = self.finish();
                bail!("{name} still running after {timeout:?}\nstdout:\n{out}\nstderr:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let child = self.child.take().context("already finished")?;
        let out = child.wait_with_output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        ))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The path of `program` on `PATH`, or a loud `SKIP:` line naming the Debian package that
/// provides it and `None`.
pub fn require(test: &str, program: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file());
    if found.is_none() {
        // Straight to the process's stderr: the test harness captures print macros, and this
        // line must reach the log that scripts/test counts skips from.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: {test}: {program} is not installed (Debian package {package}; scripts/deps test installs it)"
        );
    }
    found
}

/// The path of one of this workspace's binaries, freshly built for the current profile.
///
/// `cargo test --workspace` has already built it; running one scenario alone would otherwise
/// pick up a stale binary, so cargo is asked once per test process (a no-op when up to date).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    // Every binary of this workspace but the test package's is named after its package.
    package_binary(name, name)
}

/// The path of binary `bin` of workspace package `package`, built as [`workspace_binary`]
/// builds one.
pub fn package_binary(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target dir")?;
    let path = profile_dir.join(bin);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == bin) {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", package, "--bin", bin])
            .args(if profile_dir.ends_with("release") {
                &["--release"][..]
            } else {
                &[]
            })
            .status()?;
        if !status.success() {
            bail!("could not build {bin}");
        }
        built.push(bin.to_owned());
    }
    if !path.is_file() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}

/// The lines `child` prints on its (piped) stdout, read by a thread of their own so that a
/// caller can wait for one with a deadline (`recv_timeout`).
pub fn stdout_lines(child: &mut Child) -> Result<std::sync::mpsc::Receiver<String>> {
    use std::io::BufRead as _;
    let stdout = child.stdout.take().context("stdout not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Sends `child` `signal`.
pub fn signal_child(child: &Child, signal: rustix::process::Signal) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).context("bad pid")?;
    rustix::process::kill_process(pid, signal)?;
    Ok(())
}

/// SIGTERM, then waits up to `timeout` for `child` to exit: its exit code. When it is still
/// running then, it is killed and this fails.
pub fn terminate_child(mut child: Child, timeout: Duration) -> Result<Option<i32>> {
    signal_child(&child, rustix::process::Signal::TERM)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running {timeout:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops `child` as a user would: SIGTERM (so it removes its sockets), up to `grace` to exit,
/// then SIGKILL; reaps it either way.
pub fn stop_child(mut child: Child, grace: Duration) {
    let _ = signal_child(&child, rustix::process::Signal::TERM);
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A long-running `crossway-proxy` subcommand (`headless`, `filter`) that announces
/// `WAYLAND_DISPLAY=…` (and, with a headless compositor, `CROSSWAY_HEADLESS_CONTROL=…`) on
/// stdout. Its stderr goes to a log file in the runtime directory. Killed on drop.
#[derive(Debug)]
pub struct ProxyProcess {
    child: Option<Child>,
    /// The socket it announced.
    pub socket: PathBuf,
    /// The control socket it announced, if any.
    pub control: Option<PathBuf>,
    /// Its stderr.
    pub log: PathBuf,
}

impl ProxyProcess {
    /// Starts `crossway-proxy ARGS` with `XDG_RUNTIME_DIR` set to `rt` and waits up to 20 s
    /// for its announcement.
    pub fn start<I, S>(rt: &Runtime, log_name: &str, args: I) -> Result<ProxyProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let log = rt.path().join(format!("{log_name}.log"));
        let mut child = Command::new(workspace_binary("crossway-proxy")?)
            .args(args)
            .env("XDG_RUNTIME_DIR", rt.path())
            // Whatever it makes in the temporary directory goes with the runtime directory.
            .env("TMPDIR", rt.path())
            .env_remove("WAYLAND_DISPLAY")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "crossway_proxy=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting crossway-proxy")?;
        let rx = stdout_lines(&mut child)?;
        let mut process = ProxyProcess {
            child: Some(child),
            socket: PathBuf::new(),
            control: None,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let announced = |line: String, p: &mut ProxyProcess| {
            if let Some(v) = line.strip_prefix("WAYLAND_DISPLAY=") {
                p.socket = v.into();
            } else if let Some(v) = line.strip_prefix("CROSSWAY_HEADLESS_CONTROL=") {
                p.control = Some(v.into());
            }
        };
        while process.socket.as_os_str().is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => announced(line, &mut process),
                Err(_) => bail!(
                    "crossway-proxy did not announce its socket\n{}",
                    process.log_text()
                ),
            }
        }
        // The control line, when there is one, is printed together with the display's.
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            announced(line, &mut process);
        }
        Ok(process)
    }

    /// `crossway-proxy filter --listen <rt>/f ARGS`: a filter whose host, VM name and other
    /// options `args` give.
    pub fn filter(rt: &Runtime, args: &[&str]) -> Result<ProxyProcess> {
        let listen = rt.path().join("f");
        let mut all = vec!["filter".as_ref(), "--listen".as_ref(), listen.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        ProxyProcess::start(rt, "filter", all)
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<()> {
        signal_child(self.child.as_ref().context("not running")?, signal)
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits up to `timeout` for it to exit; returns its exit code.
    pub fn terminate(mut self, timeout: Duration) -> Result<Option<i32>> {
        let child = self.child.take().context("not running")?;
        terminate_child(child, timeout)
            .with_context(|| format!("crossway-proxy\n{}", self.log_text()))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Duration::from_secs(2));
        }
    }
}

/// weston 10 with its headless backend and the pixman renderer, listening on `name` in
/// `rt`, with `--debug` so `weston-screenshooter` works. `None` (after a `SKIP:` line)
/// when weston is not installed.
pub fn start_weston(rt: &Runtime, test: &str, name: &str) -> Result<Option<(Process, PathBuf)>> {
    let Some(weston) = require(test, "weston", "weston") else {
        return Ok(None);
    };
    let log = rt.path().join(format!("{name}.weston.log"));
    let mut cmd = Command::new(weston);
    cmd.env("XDG_RUNTIME_DIR", rt.path())
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
        .stdin(Stdio::null())
        .arg("--backend=headless-backend.so")
        .arg("--use-pixman")
        .args(["--width=640", "--height=480", "--no-config", "--debug"])
        .arg(format!("--socket={name}"))
        .arg(format!("--log={}", log.display()));
    let process = Process::spawn("weston", &mut cmd)?;
    let socket = rt.path().join(name);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() >= deadline {
            bail!(
                "weston did not create {}\n{}",
                socket.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some((process, socket)))
}

/// The globals `wayland-info` (at `program`) lists on `socket`: interface → version.
pub fn wayland_info_globals(
    rt: &Runtime,
    program: &Path,
    socket: &Path,
) -> Result<std::collections::BTreeMap<String, u32>> {
    let (code, out, err) = Process::spawn("wayland-info", &mut rt.client(program, socket))?
        .wait(Duration::from_secs(10))?;
    if code != Some(0) {
        bail!("wayland-info exited with {code:?}\n{err}");
    }
    Ok(parse_wayland_info(&out))
}

/// The globals in `wayland-info`'s output (`interface: 'wl_shm', version: 2, name: 3`):
/// interface → version.
pub fn parse_wayland_info(out: &str) -> std::collections::BTreeMap<String, u32> {
    out.lines()
        .filter_map(|l| {
            let interface = l.split('\'').nth(1)?;
            let version = l
                .split("version:")
                .nth(1)?
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()?;
            Some((interface.to_owned(), version))
        })
        .collect()
}

/// What `wl-paste --no-newline ARGS` (at `program`) reads from the compositor at `socket`,
/// asked up to 50 times 100 ms apart until it exits 0 with something: the copying client may
/// not have set its selection yet. Empty if it never did.
pub fn paste(rt: &Runtime, program: &Path, socket: &Path, args: &[&str]) -> Result<String> {
    for _ in 0..50 {
        let mut cmd = rt.client(program, socket);
        cmd.arg("--no-newline").args(args);
        let (code, out, _) = Process::spawn("wl-paste", &mut cmd)?.wait(Duration::from_secs(5))?;
        if code == Some(0) && !out.is_empty() {
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(String::new())
}

/// Calls `look` every 50 ms until it is true or `timeout` has passed; true if it ever was.
pub fn eventually(timeout: Duration, mut look: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if look() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `tests/vm/run SCENARIO` (QEMU 10 TCG with bookworm's 6.12 kernel) with `env` set and
/// returns its report (stdout), failing with its output when it failed. `None` after a
/// `SKIP: TEST: …` line when the script exited 77: it could not get QEMU or the kernel (no
/// network, not Debian amd64). The script bounds the VM with its own hard timeout and apt
/// with its network timeouts.
pub fn run_vm_scenario(
    test: &str,
    scenario: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<Option<String>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/vm/run");
    let out = Command::new(script)
        .arg(scenario)
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("running {script}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(77) {
        let reason = stdout
            .lines()
            .chain(stderr.lines())
            .find_map(|l| l.strip_prefix("SKIP: "))
            .unwrap_or("tests/vm/run could not obtain QEMU 10 or the guest kernel");
        // Straight to the process's stderr, past the harness's capture: scripts/test counts
        // these lines as skips.
        let _ = writeln!(
            std::io::stderr(),
            "{stdout}{stderr}\nSKIP: {test}: {reason}"
        );
        return Ok(None);
    }
    if !out.status.success() {
        bail!("tests/vm/run {scenario}: {}\n{stdout}{stderr}", out.status);
    }
    Ok(Some(stdout.into_owned()))
}
