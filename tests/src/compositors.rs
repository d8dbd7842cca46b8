//! Host compositors for scenarios with real clients, and the guest side in front of them.
//!
//! A [`Host`] is one running compositor of a [`HostKind`]: the embedded headless compositor
//! (`crossway-proxy headless`, its own process), weston 10 (bookworm, pixman), weston 14 with
//! the GL renderer on llvmpipe (bookworm-backports, unpacked by `scripts/deps weston14` into a
//! private cache, never installed: it is the one that accepts dmabufs here), or sway 1.7 (run
//! as an unprivileged user, because it refuses root). Each gives its socket, a screenshot
//! ([`Host::screenshot`]) and, where the compositor can tell, the toplevels' titles; dropping
//! it stops the compositor and removes what it made.
//!
//! A [`Guest`] is what a guest app connects to for one VM named `vm_name`:
//! ```text
//!   [`Route::Chain`] (the default):
//!   app ─▶ crossway-agent ─▶ crossway-proxy vm (loopback VM) ─▶ crossway-proxy serve ─▶ host
//!   [`Route::Filter`] (CROSSWAY_GUEST_ROUTE=filter):
//!   app ─▶ crossway-proxy filter ─▶ host
//! ```
//! Each arrow is a real socket between separate processes. The filter route runs the same
//! scenario through the socket front only (the host-side relay and policy without the VM), to
//! tell a relay bug from an agent or device bug.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use crossway_headless::Image;
use wayland_client::protocol::{wl_registry, wl_seat};
use wayland_protocols_misc::zwp_virtual_keyboard_v1::client::{
    zwp_virtual_keyboard_manager_v1 as vk_manager, zwp_virtual_keyboard_v1 as vk,
};

use crate::{ProxyProcess, Runtime, require, workspace_binary};

/// The unprivileged user sway runs as when the tests run as root (sway refuses root).
pub const SWAY_USER: &str = "crossway-wl";

/// How long a compositor or a guest chain has to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Output size of every host compositor started here.
pub const OUTPUT_SIZE: (u32, u32) = (800, 600);

/// Which compositor a [`Host`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// `crossway-proxy headless`: smithay, software rendering, shm and (memfd) dmabuf.
    Headless,
    /// weston 10 from bookworm, headless backend, pixman: shm only, no seat.
    Weston10,
    /// weston 14 from bookworm-backports, headless backend, GL renderer on llvmpipe: offers
    /// `zwp_linux_dmabuf_v1` v3 and imports any mmap-able fd as a LINEAR dmabuf.
    Weston14Gl,
    /// sway 1.7, headless wlroots backend, pixman: a seat (foot, clipboard), screencopy (grim).
    Sway,
    /// mutter 43 (GNOME's compositor, without gnome-shell) from bookworm: `--headless` with a
    /// virtual monitor, on its own session bus, rendering in software without a GPU. It offers
    /// no `zwp_linux_dmabuf_v1` there, and no screenshot interface (GNOME's is gnome-shell's):
    /// tests check the Wayland-level facts instead.
    Mutter,
    /// kwin 5.27 (KDE's compositor) from bookworm: `--virtual` on its own session bus, QPainter
    /// compositing. No `zwp_linux_dmabuf_v1` without a render node; its screenshot interface
    /// (org.kde.KWin.ScreenShot2) answers only clients its desktop files authorise.
    Kwin,
}

impl HostKind {
    /// A short name for logs and file names.
    pub fn name(self) -> &'static str {
        match self {
            HostKind::Headless => "headless",
            HostKind::Weston10 => "weston10",
            HostKind::Weston14Gl => "weston14",
            HostKind::Sway => "sway",
            HostKind::Mutter => "mutter",
            HostKind::Kwin => "kwin",
        }
    }
}

/// Writes a line to the process's stderr (the test harness captures print macros; `SKIP:`
/// lines must reach the log `scripts/test` counts).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A child killed and reaped on drop, with its stderr in a file.
#[derive(Debug)]
struct Owned {
    child: Option<Child>,
}

impl Owned {
    fn spawn(cmd: &mut Command, log: &Path) -> Result<Owned> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log)?)
            .stderr(std::fs::File::create(log.with_extension("err"))?)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Owned { child: Some(child) })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    fn stop(&mut self, grace: Duration) {
        if let Some(child) = self.child.take() {
            crate::stop_child(child, grace);
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Waits until `path` exists, `child` exits, or [`START_TIMEOUT`] passes.
fn wait_for_path(path: &Path, child: &mut Owned, what: &str, log: &Path) -> Result<()> {
    let goal = format!("created {}", path.display());
    wait_for_start(child, what, &goal, log, || Ok(path.exists().then_some(())))
}

/// Calls `look` every 20 ms until it finds something, `child` exits, or [`START_TIMEOUT`]
/// passes; the errors name `what` (the program), the `goal` it did not reach ("created X"),
/// and its logs.
fn wait_for_start<T>(
    child: &mut Owned,
    what: &str,
    goal: &str,
    log: &Path,
    mut look: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(found) = look()? {
            return Ok(found);
        }
        if let Some(status) = child.exited() {
            bail!(
                "{what} exited ({status}) and had not {goal}\n{}",
                read_logs(log)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{what} had not {goal} after {START_TIMEOUT:?}\n{}",
                read_logs(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first entry of `dir` whose file name `matches`.
fn find_entry(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(OsStr::to_str).is_some_and(&matches)))
}

/// A log file and its `.err` sibling, as text.
fn read_logs(log: &Path) -> String {
    let mut text = std::fs::read_to_string(log).unwrap_or_default();
    let err = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
    if !err.is_empty() {
        text.push_str("\n--- stderr ---\n");
        text.push_str(&err);
    }
    text
}

/// Where weston 14 and Mesa 25 from bookworm-backports are unpacked (`scripts/deps weston14`):
/// `$CROSSWAY_WESTON14_ROOT`, else `<cache>/weston14` in tests/vm/run's cache folder
/// (`$CROSSWAY_VM_CACHE`, else `${XDG_CACHE_HOME:-$HOME/.cache}/crossway-vm`). `None` if it is
/// not there (not fetched yet, or the fetch failed).
pub fn weston14_root() -> Option<PathBuf> {
    let root = match std::env::var_os("CROSSWAY_WESTON14_ROOT") {
        Some(r) => PathBuf::from(r),
        None => {
            let cache = std::env::var_os("CROSSWAY_VM_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME")
                        .map(PathBuf::from)
                        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
                        .map(|c| c.join("crossway-vm"))
                })?;
            cache.join("weston14")
        }
    };
    root.join(".complete").is_file().then_some(root)
}

/// The environment that makes the unpacked weston 14 (at `root`) find its own libraries, Mesa
/// drivers and modules instead of the system's weston 10 and Mesa 22.
fn weston14_env(root: &Path) -> Vec<(OsString, OsString)> {
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    let mut path = OsString::new();
    for dir in [lib.clone(), lib.join("weston")] {
        if !path.is_empty() {
            path.push(":");
        }
        path.push(dir);
    }
    // libweston resolves backends, renderers, shells and helper programs through this map
    // before its compiled-in folders (which hold weston 10's).
    let mut map = String::new();
    for (name, file) in [
        (
            "headless-backend.so",
            lib.join("libweston-14/headless-backend.so"),
        ),
        ("gl-renderer.so", lib.join("libweston-14/gl-renderer.so")),
        ("desktop-shell.so", lib.join("weston/desktop-shell.so")),
        (
            "weston-desktop-shell",
            root.join("usr/libexec/weston-desktop-shell"),
        ),
    ] {
        map.push_str(&format!("{name}={};", file.display()));
    }
    vec![
        ("LD_LIBRARY_PATH".into(), path),
        ("LIBGL_DRIVERS_PATH".into(), lib.join("dri").into()),
        ("WESTON_MODULE_MAP".into(), map.into()),
    ]
}

/// What a [`Host`] needs to take screenshots and to be stopped.
#[derive(Debug)]
enum Running {
    Headless(ProxyProcess),
    Weston {
        process: Owned,
        screenshooter: PathBuf,
        env: Vec<(OsString, OsString)>,
    },
    Sway {
        process: Owned,
        grim: PathBuf,
        swaymsg: Option<PathBuf>,
        ipc: Option<PathBuf>,
        /// sway's own runtime directory, owned by [`SWAY_USER`]; removed on drop.
        /// A virtual keyboard (the headless backend has no input device, and without a
        /// keyboard no client gets the focus a clipboard selection needs).
        _keyboard: wayland_client::Connection,
        _dir: tempfile::TempDir,
    },
    /// mutter or kwin, and the session bus it was given.
    Session {
        process: Owned,
        _bus: Owned,
    },
}

/// One running host compositor. Stopped and cleaned up on drop.
#[derive(Debug)]
pub struct Host {
    /// Which compositor it is.
    pub kind: HostKind,
    /// Its Wayland socket (an absolute path: usable as `WAYLAND_DISPLAY` from any runtime dir).
    pub display: PathBuf,
    log: PathBuf,
    shots: PathBuf,
    running: Running,
    shot_count: std::cell::Cell<u32>,
}

impl Host {
    /// Starts a compositor of `kind` in `rt`. `Ok(None)` after a `SKIP:` line naming what is
    /// missing (a program, the weston 14 cache, a user for sway).
    pub fn start(rt: &Runtime, test: &str, kind: HostKind) -> Result<Option<Host>> {
        let log = rt.path().join(format!("host-{}.log", kind.name()));
        let shots = rt.path().join(format!("shots-{}", kind.name()));
        std::fs::create_dir_all(&shots)?;
        let (w, h) = OUTPUT_SIZE;
        let (running, display) = match kind {
            HostKind::Headless => {
                let socket = rt.path().join("host-headless");
                let size = format!("{w}x{h}");
                let p = ProxyProcess::start(
                    rt,
                    "host-headless",
                    [
                        OsStr::new("headless"),
                        OsStr::new("--socket"),
                        socket.as_os_str(),
                        OsStr::new("--size"),
                        OsStr::new(&size),
                    ],
                )?;
                let display = p.socket.clone();
                (Running::Headless(p), display)
            }
            HostKind::Weston10 => {
                let (Some(weston), Some(screenshooter)) = (
                    require(test, "weston", "weston"),
                    require(test, "weston-screenshooter", "weston"),
                ) else {
                    return Ok(None);
                };
                let mut cmd = Command::new(weston);
                cmd.arg("--backend=headless-backend.so").arg("--use-pixman");
                Self::weston(rt, cmd, &log, screenshooter, Vec::new())?
            }
            HostKind::Weston14Gl => {
                let Some(root) = weston14_root() else {
                    say(&format!(
                        "SKIP: {test}: weston 14 is not unpacked (scripts/deps weston14 fetches it from bookworm-backports)"
                    ));
                    return Ok(None);
                };
                let env = weston14_env(&root);
                let mut cmd = Command::new(root.join("usr/bin/weston"));
                cmd.envs(env.iter().map(|(k, v)| (k, v)))
                    .arg("--backend=headless")
                    .arg("--renderer=gl");
                let screenshooter = root.join("usr/bin/weston-screenshooter");
                Self::weston(rt, cmd, &log, screenshooter, env)?
            }
            HostKind::Sway => {
                let Some(started) = Self::sway(rt, test, &log)? else {
                    return Ok(None);
                };
                started
            }
            HostKind::Mutter | HostKind::Kwin => {
                let Some(started) = Self::session_compositor(rt, test, kind, &log)? else {
                    return Ok(None);
                };
                started
            }
        };
        Ok(Some(Host {
            kind,
            display,
            log,
            shots,
            running,
            shot_count: std::cell::Cell::new(0),
        }))
    }

    /// weston (10 or 14): `cmd` has the binary, its environment and backend options.
    fn weston(
        rt: &Runtime,
        mut cmd: Command,
        log: &Path,
        screenshooter: PathBuf,
        env: Vec<(OsString, OsString)>,
    ) -> Result<(Running, PathBuf)> {
        let (w, h) = OUTPUT_SIZE;
        let name = format!("host-weston-{}", std::process::id());
        // No fade-in: under a slow software renderer the first screenshots would be dimmed.
        let config = rt.path().join("weston-host.ini");
        std::fs::write(
            &config,
            "[core]\nidle-time=0\n[shell]\nstartup-animation=none\nlocking=false\n",
        )?;
        cmd.env("XDG_RUNTIME_DIR", rt.path())
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("DISPLAY")
            .arg(format!("--width={w}"))
            .arg(format!("--height={h}"))
            .arg(format!("--config={}", config.display()))
            // --debug: weston's screenshot protocols are offered only with it.
            .arg("--debug")
            .arg(format!("--socket={name}"))
            .arg(format!("--log={}", log.display()));
        let mut process = Owned::spawn(&mut cmd, &log.with_extension("out"))?;
        let display = rt.path().join(&name);
        wait_for_path(&display, &mut process, "weston", log)?;
        Ok((
            Running::Weston {
                process,
                screenshooter,
                env,
            },
            display,
        ))
    }

    /// sway as [`SWAY_USER`] (created if missing) when running as root, else as ourselves.
    fn sway(rt: &Runtime, test: &str, log: &Path) -> Result<Option<(Running, PathBuf)>> {
        let (Some(sway), Some(grim)) =
            (require(test, "sway", "sway"), require(test, "grim", "grim"))
        else {
            return Ok(None);
        };
        let swaymsg = require(test, "swaymsg", "sway");
        let user = if rustix::process::geteuid().is_root() {
            let Some(user) = sway_user(test)? else {
                return Ok(None);
            };
            Some(user)
        } else {
            None
        };
        // sway's runtime directory must be its user's own (0700), so it cannot be `rt`; it
        // lives beside it and goes with the Host.
        let dir = tempfile::Builder::new()
            .prefix("crossway-sway-")
            .tempdir_in(std::env::temp_dir())?;
        let (w, h) = OUTPUT_SIZE;
        let config = dir.path().join("sway.cfg");
        std::fs::write(
            &config,
            format!("output HEADLESS-1 resolution {w}x{h}\ndefault_border normal\n"),
        )?;
        let mut cmd;
        if let Some((uid, gid, _)) = &user {
            for p in [dir.path(), config.as_path()] {
                rustix::fs::chown(
                    p,
                    Some(rustix::fs::Uid::from_raw(*uid)),
                    Some(rustix::fs::Gid::from_raw(*gid)),
                )?;
            }
            cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(&sway);
        } else {
            cmd = Command::new(&sway);
        }
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        cmd.arg("-c")
            .arg(&config)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("WLR_BACKENDS", "headless")
            .env("WLR_RENDERER", "pixman")
            .env("WLR_LIBINPUT_NO_DEVICES", "1")
            .env(
                "HOME",
                user.as_ref()
                    .map_or_else(|| rt.path().to_owned(), |u| u.2.clone()),
            );
        let mut process = Owned::spawn(&mut cmd, log)?;
        // sway names its socket wayland-N, the first N free.
        let display = wait_for_start(&mut process, "sway", "made its socket", log, || {
            find_entry(dir.path(), |n| {
                n.starts_with("wayland-") && !n.ends_with(".lock")
            })
        })?;
        let ipc = find_entry(dir.path(), |n| n.starts_with("sway-ipc."))?;
        let keyboard = virtual_keyboard(&display)
            .with_context(|| format!("virtual keyboard on sway\n{}", read_logs(log)))?;
        Ok(Some((
            Running::Sway {
                process,
                grim,
                swaymsg,
                ipc,
                _keyboard: keyboard,
                _dir: dir,
            },
            display,
        )))
    }

    /// mutter or kwin on a session bus of its own (a `dbus-daemon` this host owns, rather than
    /// `dbus-run-session`, so that stopping the host stops both).
    fn session_compositor(
        rt: &Runtime,
        test: &str,
        kind: HostKind,
        log: &Path,
    ) -> Result<Option<(Running, PathBuf)>> {
        let program = match kind {
            HostKind::Mutter => "mutter",
            _ => "kwin_wayland",
        };
        let package = match kind {
            HostKind::Mutter => "mutter",
            _ => "kwin-wayland",
        };
        let (Some(compositor), Some(dbus)) = (
            require(test, program, package),
            require(test, "dbus-daemon", "dbus"),
        ) else {
            return Ok(None);
        };
        let bus_path = rt.path().join(format!("bus-{}", kind.name()));
        let bus_log = log.with_extension("bus.log");
        let mut bus = Owned::spawn(
            Command::new(dbus)
                .arg("--session")
                .arg("--nofork")
                .arg(format!("--address=unix:path={}", bus_path.display())),
            &bus_log,
        )?;
        wait_for_path(&bus_path, &mut bus, "dbus-daemon", &bus_log)?;
        let (w, h) = OUTPUT_SIZE;
        let name = format!("host-{}-{}", kind.name(), std::process::id());
        let mut cmd = match kind {
            HostKind::Mutter => {
                let mut cmd = Command::new(compositor);
                cmd.args(["--headless", "--wayland", "--no-x11", "--virtual-monitor"])
                    .arg(format!("{w}x{h}"))
                    .arg("--wayland-display")
                    .arg(&name);
                cmd
            }
            _ => {
                // Debian gives kwin_wayland a file capability (cap_sys_resource); where the
                // process may not gain it (containers), exec fails with EPERM. A copy has no
                // capability; it must keep the name, which kwin's Qt platform plugin checks.
                let bin = rt.path().join("kwin-bin");
                std::fs::create_dir_all(&bin)?;
                let copy = bin.join("kwin_wayland");
                std::fs::copy(&compositor, &copy)?;
                let mut cmd = Command::new(copy);
                cmd.args(["--virtual", "--no-lockscreen", "--no-global-shortcuts"])
                    .arg("--socket")
                    .arg(&name)
                    .arg(format!("--width={w}"))
                    .arg(format!("--height={h}"))
                    // Software compositing without GL: lighter on a loaded machine.
                    .env("KWIN_COMPOSE", "Q");
                cmd
            }
        };
        cmd.env("XDG_RUNTIME_DIR", rt.path())
            .env("HOME", rt.path())
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}", bus_path.display()),
            )
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("DISPLAY");
        // kwin's fresh copy can still be open for writing in a child another test thread is
        // forking (until its exec closes it): exec then fails with ETXTBSY for a moment.
        let mut tries = 0;
        let mut process = loop {
            match Owned::spawn(&mut cmd, log) {
                Err(e)
                    if tries < 20
                        && e.root_cause()
                            .downcast_ref::<std::io::Error>()
                            .and_then(std::io::Error::raw_os_error)
                            == Some(rustix::io::Errno::TXTBSY.raw_os_error()) =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let display = rt.path().join(&name);
        wait_for_path(&display, &mut process, program, log)?;
        Ok(Some((Running::Session { process, _bus: bus }, display)))
    }

    /// A command for a client of this compositor connected directly (no Crossway).
    pub fn client(&self, rt: &Runtime, program: impl AsRef<OsStr>) -> Command {
        rt.client(program, &self.display)
    }

    /// The compositor's log so far.
    pub fn log_text(&self) -> String {
        match &self.running {
            Running::Headless(p) => p.log_text(),
            _ => read_logs(&self.log),
        }
    }

    /// A screenshot of the whole output, as RGBA.
    pub fn screenshot(&self, rt: &Runtime) -> Result<Image> {
        let n = self.shot_count.get() + 1;
        self.shot_count.set(n);
        let dir = self.shots.join(format!("{n:03}"));
        std::fs::create_dir_all(&dir)?;
        let png = match &self.running {
            Running::Headless(p) => {
                let control = p
                    .control
                    .as_ref()
                    .context("headless announced no control")?;
                let png = dir.join("shot.png");
                crossway_headless::control::request(
                    control,
                    &serde_json::json!({ "screenshot": png }),
                )?;
                png
            }
            Running::Weston {
                screenshooter, env, ..
            } => {
                // It writes wayland-screenshot-<date>.png into its working directory.
                let out = self
                    .client(rt, screenshooter)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .current_dir(&dir)
                    .output()?;
                if !out.status.success() {
                    bail!(
                        "weston-screenshooter failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                find_entry(&dir, |n| n.ends_with(".png"))?
                    .context("weston-screenshooter wrote no PNG")?
            }
            Running::Session { .. } => bail!(
                "{} has no screenshot interface a test can use headless",
                self.kind.name()
            ),
            Running::Sway { grim, .. } => {
                let png = dir.join("shot.png");
                let out = self.client(rt, grim).arg(&png).output()?;
                if !out.status.success() {
                    bail!("grim failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                png
            }
        };
        load_png_rgba(&png)
    }

    /// The toplevels the compositor shows, title → content rectangle `[x, y, width, height]`
    /// in output pixels, where it can tell: the headless compositor (control socket) and sway
    /// (its IPC tree). `Ok(None)` for weston, which has no way to list them from outside.
    pub fn toplevels(&self) -> Result<Option<BTreeMap<String, [i64; 4]>>> {
        match &self.running {
            Running::Headless(p) => {
                let control = p
                    .control
                    .as_ref()
                    .context("headless announced no control")?;
                let list = crossway_headless::control::request(
                    control,
                    &serde_json::json!({ "toplevels": null }),
                )?;
                Ok(Some(
                    list.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| {
                            let title = t.get("title")?.as_str()?.to_owned();
                            Some((title, rect(t.get("rect")?)?))
                        })
                        .collect(),
                ))
            }
            Running::Sway { swaymsg, ipc, .. } => {
                let (Some(swaymsg), Some(ipc)) = (swaymsg, ipc) else {
                    return Ok(None);
                };
                let out = Command::new(swaymsg)
                    .arg("-s")
                    .arg(ipc)
                    .args(["-r", "-t", "get_tree"])
                    .output()?;
                if !out.status.success() {
                    bail!("swaymsg failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let tree: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                let mut windows = BTreeMap::new();
                sway_windows(&tree, &mut windows);
                Ok(Some(windows))
            }
            Running::Weston { .. } | Running::Session { .. } => Ok(None),
        }
    }

    /// The titles of [`Host::toplevels`].
    pub fn toplevel_titles(&self) -> Result<Option<BTreeSet<String>>> {
        Ok(self.toplevels()?.map(|t| t.into_keys().collect()))
    }

    /// Waits up to `timeout` for a toplevel titled `title`; `Ok(false)` if the compositor cannot
    /// list toplevels.
    pub fn wait_for_title(&self, title: &str, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(titles) = self.toplevel_titles()? else {
                return Ok(false);
            };
            if titles.contains(title) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                bail!("no toplevel titled {title:?} in {timeout:?}; there are {titles:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many distinct colours the content of the toplevel `title` has now (a window with
    /// text or widgets drawn has many; a blank one a few).
    pub fn window_colours(&self, rt: &Runtime, title: &str) -> Result<usize> {
        let windows = self
            .toplevels()?
            .context("this compositor cannot list its toplevels")?;
        let rect = *windows
            .get(title)
            .with_context(|| format!("no toplevel {title:?}: {:?}", windows.keys()))?;
        Ok(distinct_colours(&crop(&self.screenshot(rt)?, rect)?))
    }

    /// Takes screenshots until a `crossway-test-client` window of `size` shows its quadrants
    /// ([`Quadrants::drawn`]) or `timeout` passes; the last count.
    pub fn wait_for_quadrants(
        &self,
        rt: &Runtime,
        (w, h): (u32, u32),
        timeout: Duration,
    ) -> Result<Quadrants> {
        let mut last = Quadrants {
            counts: [0; 4],
            each: (w / 2 * h / 2) as usize,
        };
        let mut failed = None;
        crate::eventually(timeout, || match self.screenshot(rt) {
            Ok(shot) => {
                last.counts = QUADRANT_COLOURS.map(|rgb| count_colour(&shot, rgb));
                last.drawn()
            }
            Err(e) => {
                failed = Some(e);
                true
            }
        });
        match failed {
            Some(e) => Err(e.context("screenshot")),
            None => Ok(last),
        }
    }

    /// Whether the compositor is still running.
    pub fn running(&mut self) -> bool {
        match &mut self.running {
            Running::Headless(p) => p.pid().is_some(),
            Running::Weston { process, .. }
            | Running::Sway { process, .. }
            | Running::Session { process, .. } => process.exited().is_none(),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Running::Weston { process, .. }
        | Running::Sway { process, .. }
        | Running::Session { process, .. } = &mut self.running
        {
            process.stop(Duration::from_secs(3));
        }
    }
}

/// A rectangle as sway (`{"x":…,"y":…,"width":…,"height":…}`) or the headless control
/// socket (`[x, y, w, h]`) writes it.
fn rect(v: &serde_json::Value) -> Option<[i64; 4]> {
    if let Some(a) = v.as_array() {
        let n: Vec<i64> = a.iter().filter_map(serde_json::Value::as_i64).collect();
        return n.try_into().ok();
    }
    let get = |k: &str| v.get(k)?.as_i64();
    Some([get("x")?, get("y")?, get("width")?, get("height")?])
}

/// Collects sway's windows (nodes with a pid) from its IPC tree: name → content rectangle
/// (the container's `rect` moved by its `window_rect`, which leaves out the title bar).
fn sway_windows(node: &serde_json::Value, out: &mut BTreeMap<String, [i64; 4]>) {
    if node.get("pid").is_some_and(|p| !p.is_null())
        && let Some(name) = node.get("name").and_then(|n| n.as_str())
        && let (Some(outer), Some(inner)) = (
            node.get("rect").and_then(rect),
            node.get("window_rect").and_then(rect),
        )
    {
        out.insert(
            name.to_owned(),
            [outer[0] + inner[0], outer[1] + inner[1], inner[2], inner[3]],
        );
    }
    for key in ["nodes", "floating_nodes"] {
        for child in node
            .get(key)
            .and_then(|n| n.as_array())
            .into_iter()
            .flatten()
        {
            sway_windows(child, out);
        }
    }
}

/// The keymap of [`virtual_keyboard`]: a US layout from the system's xkb data (sway compiles
/// it with xkbcommon). Null-terminated, as the protocol wants.
const KEYMAP: &str = "xkb_keymap {
    xkb_keycodes { include \"evdev+aliases(qwerty)\" };
    xkb_types { include \"complete\" };
    xkb_compat { include \"complete\" };
    xkb_symbols { include \"pc+us+inet(evdev)\" };
};
\0";

/// State of the virtual keyboard's connection while it binds its globals.
#[derive(Debug, Default)]
struct KeyboardSetup {
    seat: Option<wl_seat::WlSeat>,
    manager: Option<vk_manager::ZwpVirtualKeyboardManagerV1>,
}

impl wayland_client::Dispatch<wl_registry::WlRegistry, ()> for KeyboardSetup {
    fn event(
        state: &mut Self,
        registry: &wl_registry::WlRegistry,
        event: wl_registry::Event,
        _: &(),
        _: &wayland_client::Connection,
        qh: &wayland_client::QueueHandle<Self>,
    ) {
        if let wl_registry::Event::Global {
            name, interface, ..
        } = event
        {
            match interface.as_str() {
                "wl_seat" if state.seat.is_none() => {
                    state.seat = Some(registry.bind(name, 1, qh, ()));
                }
                "zwp_virtual_keyboard_manager_v1" => {
                    state.manager = Some(registry.bind(name, 1, qh, ()));
                }
                _ => {}
            }
        }
    }
}

wayland_client::delegate_noop!(KeyboardSetup: ignore wl_seat::WlSeat);
wayland_client::delegate_noop!(KeyboardSetup: vk_manager::ZwpVirtualKeyboardManagerV1);
wayland_client::delegate_noop!(KeyboardSetup: vk::ZwpVirtualKeyboardV1);

/// Connects to `display`, gives its seat a virtual keyboard, and returns the connection: the
/// keyboard lives as long as it does.
fn virtual_keyboard(display: &Path) -> Result<wayland_client::Connection> {
    use std::os::fd::AsFd as _;
    let stream = std::os::unix::net::UnixStream::connect(display)?;
    let conn = wayland_client::Connection::from_socket(stream)?;
    let mut queue = conn.new_event_queue();
    let qh = queue.handle();
    conn.display().get_registry(&qh, ());
    let mut state = KeyboardSetup::default();
    queue.roundtrip(&mut state)?;
    let (Some(seat), Some(manager)) = (state.seat.take(), state.manager.take()) else {
        bail!("no wl_seat or zwp_virtual_keyboard_manager_v1");
    };
    let keyboard = manager.create_virtual_keyboard(&seat, &qh, ());
    let fd = rustix::fs::memfd_create("crossway-keymap", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(KEYMAP.as_bytes())?;
    // 1: WL_KEYBOARD_KEYMAP_FORMAT_XKB_V1.
    keyboard.keymap(1, file.as_fd(), KEYMAP.len() as u32);
    queue.roundtrip(&mut state)?;
    Ok(conn)
}

/// `(uid, gid, home)` of [`SWAY_USER`], created (system account, no login) if missing. `None`
/// after a `SKIP:` line if it cannot be.
fn sway_user(test: &str) -> Result<Option<(u32, u32, PathBuf)>> {
    let lookup = || -> Option<(u32, u32, PathBuf)> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&SWAY_USER) && f.len() >= 6)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?, PathBuf::from(f[5]))))
                .flatten()
        })
    };
    if let Some(found) = lookup() {
        return Ok(Some(found));
    }
    // Two tests may race to create it: the loser's useradd fails, the lookup then succeeds.
    let _ = Command::new("useradd")
        .args(["--system", "--create-home", "--home-dir"])
        .arg(format!("/var/lib/{SWAY_USER}"))
        .args(["--shell", "/usr/sbin/nologin", SWAY_USER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match lookup() {
        Some(found) => Ok(Some(found)),
        None => {
            say(&format!(
                "SKIP: {test}: sway refuses to run as root and user {SWAY_USER} could not be created (useradd)"
            ));
            Ok(None)
        }
    }
}

/// Reads an 8-bit PNG of any colour type (weston writes RGBA, grim RGB) as RGBA.
pub fn load_png_rgba(path: &Path) -> Result<Image> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
    let info = reader.next_frame(&mut buf)?;
    buf.truncate(info.buffer_size());
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g, 255]).collect(),
        png::ColorType::GrayscaleAlpha => buf
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0], p[1]])
            .collect(),
        png::ColorType::Indexed => bail!("{}: indexed PNG not expanded", path.display()),
    };
    Image::from_rgba(info.width, info.height, rgba)
}

/// How many pixels of `image` are exactly `rgb`.
pub fn count_colour(image: &Image, rgb: [u8; 3]) -> usize {
    image.rgba.chunks_exact(4).filter(|p| p[..3] == rgb).count()
}

/// The part of `image` inside `[x, y, width, height]` (clipped to the image).
pub fn crop(image: &Image, r: [i64; 4]) -> Result<Image> {
    let clamp = |v: i64, max: u32| v.clamp(0, i64::from(max)) as u32;
    let (x0, y0) = (clamp(r[0], image.width), clamp(r[1], image.height));
    let (x1, y1) = (
        clamp(r[0] + r[2], image.width),
        clamp(r[1] + r[3], image.height),
    );
    let mut rgba = Vec::new();
    for y in y0..y1 {
        let start = (y as usize * image.width as usize + x0 as usize) * 4;
        let end = (y as usize * image.width as usize + x1 as usize) * 4;
        rgba.extend_from_slice(image.rgba.get(start..end).context("rectangle outside")?);
    }
    Image::from_rgba(x1.saturating_sub(x0), y1.saturating_sub(y0), rgba)
}

/// How many distinct colours `image` has.
pub fn distinct_colours(image: &Image) -> usize {
    image
        .rgba
        .chunks_exact(4)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// How many pixels differ between two images of one size.
pub fn changed_pixels(a: &Image, b: &Image) -> usize {
    a.rgba
        .chunks_exact(4)
        .zip(b.rgba.chunks_exact(4))
        .filter(|(p, q)| p != q)
        .count()
}

/// The colours of `crossway-test-client`'s quadrants: red, green, blue, white.
pub const QUADRANT_COLOURS: [[u8; 3]; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]];

/// How many pixels of a screenshot have each of [`QUADRANT_COLOURS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quadrants {
    /// Pixels of red, green, blue, white.
    pub counts: [usize; 4],
    /// The area of one quadrant of the window.
    pub each: usize,
}

impl Quadrants {
    /// Whether every colour covers at least 9/10 of a quadrant: the checker takes a corner of
    /// the red one and a compositor may draw borders over the edges.
    pub fn drawn(&self) -> bool {
        self.counts.iter().all(|&c| c >= self.each * 9 / 10)
    }
}

impl std::fmt::Display for Quadrants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quadrant pixels (red, green, blue, white) {:?}, each should be about {}",
            self.counts, self.each
        )
    }
}

/// The way guest apps reach the host in a [`Guest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// agent → loopback VM → serve → host: the whole chain.
    Chain,
    /// `crossway-proxy filter` → host: the socket front, no VM.
    Filter,
}

impl Route {
    /// `CROSSWAY_GUEST_ROUTE` (`chain`, the default, or `filter`).
    pub fn from_env() -> Route {
        match std::env::var("CROSSWAY_GUEST_ROUTE").as_deref() {
            Ok("filter") => Route::Filter,
            _ => Route::Chain,
        }
    }
}

/// Options of a [`Guest`] beyond its host and name.
#[derive(Debug, Clone, Default)]
pub struct GuestOptions {
    /// More arguments for `crossway-proxy serve` (or `filter`), e.g. `--policy FILE`.
    pub relay_args: Vec<OsString>,
    /// More arguments for `crossway-agent`.
    pub agent_args: Vec<OsString>,
    /// A guest app the agent runs itself (`crossway-agent ... -- APP ARGS`; chain only): the
    /// guest, and so the VM, ends when it exits.
    pub app: Vec<OsString>,
}

/// The guest side of one VM named `vm_name`: a Wayland socket guest apps connect to, relayed to
/// a host compositor. Stopped on drop (agent, VM, then serve).
#[derive(Debug)]
pub struct Guest {
    /// The VM's name (windows are tagged with it on the host).
    pub vm_name: String,
    /// What guest apps connect to (an absolute path).
    pub socket: PathBuf,
    /// How the apps reach the host.
    pub route: Route,
    /// `serve`'s (or `filter`'s) counters, written on SIGUSR1 and at exit.
    pub relay_stats: PathBuf,
    /// The agent's counters (chain only), written on SIGUSR1 and at exit.
    pub agent_stats: Option<PathBuf>,
    dir: PathBuf,
    // Drop order: the VM (with the agent inside) before the relay behind it.
    vm: Option<Owned>,
    relay: Option<Owned>,
    filter: Option<ProxyProcess>,
}

impl Guest {
    /// The guest of VM `vm_name` in front of the compositor at `host_display`, over
    /// [`Route::from_env`].
    pub fn start(rt: &Runtime, host_display: &Path, vm_name: &str) -> Result<Guest> {
        Guest::start_with(
            rt,
            host_display,
            vm_name,
            Route::from_env(),
            &GuestOptions::default(),
        )
    }

    /// Like [`Guest::start`], with the route and options given.
    pub fn start_with(
        rt: &Runtime,
        host_display: &Path,
        vm_name: &str,
        route: Route,
        options: &GuestOptions,
    ) -> Result<Guest> {
        let dir = rt.path().join(format!("vm-{vm_name}"));
        std::fs::create_dir_all(&dir)?;
        let relay_stats = dir.join("relay-stats.json");
        let mut relay_args: Vec<OsString> = vec![
            "--wayland-display".into(),
            host_display.into(),
            "--vm-name".into(),
            vm_name.into(),
            "--stats-file".into(),
            relay_stats.clone().into(),
        ];
        relay_args.extend(options.relay_args.iter().cloned());
        match route {
            Route::Filter => {
                let listen = dir.join("wayland-guest");
                let mut args: Vec<OsString> =
                    vec!["filter".into(), "--listen".into(), listen.into()];
                args.extend(relay_args);
                let filter = ProxyProcess::start(rt, &format!("filter-{vm_name}"), args)?;
                Ok(Guest {
                    vm_name: vm_name.into(),
                    socket: filter.socket.clone(),
                    route,
                    relay_stats,
                    agent_stats: None,
                    dir,
                    vm: None,
                    relay: None,
                    filter: Some(filter),
                })
            }
            Route::Chain => {
                let proxy = workspace_binary("crossway-proxy")?;
                let agent = workspace_binary("crossway-agent")?;
                let gpu = dir.join("gpu.sock");
                let serve_log = dir.join("serve.log");
                let mut serve_cmd = Command::new(&proxy);
                serve_cmd
                    .arg("serve")
                    .arg("--socket-path")
                    .arg(&gpu)
                    .args(&relay_args)
                    .env("XDG_RUNTIME_DIR", rt.path())
                    .env("TMPDIR", rt.path())
                    .env_remove("WAYLAND_DISPLAY")
                    .env("RUST_LOG", rust_log("crossway_proxy=debug"));
                let mut relay = Owned::spawn(&mut serve_cmd, &serve_log)?;
                wait_for_path(&gpu, &mut relay, "crossway-proxy serve", &serve_log)?;

                let socket = dir.join("wayland-guest");
                let agent_stats = dir.join("agent-stats.json");
                let vm_log = dir.join("vm.log");
                let app_separator = OsString::from("--");
                let mut vm_cmd = Command::new(&proxy);
                vm_cmd
                    .arg("vm")
                    .arg("--serve-socket")
                    .arg(&gpu)
                    .arg("--socket")
                    .arg(dir.join("virtgpu.sock"))
                    .arg("--")
                    .arg(&agent)
                    .args(["--device", "auto", "--socket"])
                    .arg(&socket)
                    .arg("--stats-file")
                    .arg(&agent_stats)
                    .args(&options.agent_args)
                    .args(if options.app.is_empty() {
                        &[][..]
                    } else {
                        std::slice::from_ref(&app_separator)
                    })
                    .args(&options.app)
                    .env("XDG_RUNTIME_DIR", rt.path())
                    .env("TMPDIR", rt.path())
                    .env_remove("WAYLAND_DISPLAY")
                    .env(
                        "RUST_LOG",
                        rust_log("crossway_proxy=debug,crossway_agent=debug"),
                    );
                let mut vm = Owned::spawn(&mut vm_cmd, &vm_log)?;
                wait_for_path(&socket, &mut vm, "crossway-proxy vm", &vm_log)
                    .map_err(|e| e.context(format!("serve log:\n{}", read_logs(&serve_log))))?;
                Ok(Guest {
                    vm_name: vm_name.into(),
                    socket,
                    route,
                    relay_stats,
                    agent_stats: Some(agent_stats),
                    dir,
                    vm: Some(vm),
                    relay: Some(relay),
                    filter: None,
                })
            }
        }
    }

    /// A command for a guest app (its `WAYLAND_DISPLAY` is this guest's socket).
    pub fn client(&self, rt: &Runtime, program: impl AsRef<OsStr>) -> Command {
        rt.client(program, &self.socket)
    }

    /// Everything the guest's processes logged so far (relay, VM and agent).
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Some(f) = &self.filter {
            text.push_str(&f.log_text());
        }
        for name in ["serve.log", "vm.log"] {
            let path = self.dir.join(name);
            if path.exists() {
                text.push_str(&format!("--- {name} ---\n{}\n", read_logs(&path)));
            }
        }
        text
    }

    /// The relay's counters now (`serve --stats-file`, written on SIGUSR1).
    pub fn relay_stats(&self) -> Result<serde_json::Value> {
        let pid = match (&self.relay, &self.filter) {
            (Some(r), _) => r.pid(),
            (None, Some(f)) => f.pid(),
            _ => None,
        };
        read_stats_after_usr1(pid, &self.relay_stats)
    }

    /// Whether all of the guest's processes still run.
    pub fn running(&mut self) -> bool {
        let relay = self.relay.as_mut().is_none_or(|r| r.exited().is_none());
        let vm = self.vm.as_mut().is_none_or(|v| v.exited().is_none());
        relay && vm
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // The VM first: it stops the agent (its guest program) and disconnects from serve.
        if let Some(mut vm) = self.vm.take() {
            vm.stop(Duration::from_secs(5));
        }
        if let Some(mut relay) = self.relay.take() {
            relay.stop(Duration::from_secs(3));
        }
    }
}

/// `RUST_LOG` as the caller set it, else `default`.
fn rust_log(default: &str) -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| default.into())
}

/// Sends SIGUSR1 to `pid` and reads the JSON it then writes to `path` (waiting up to 5 s for
/// a newer file).
fn read_stats_after_usr1(pid: Option<u32>, path: &Path) -> Result<serde_json::Value> {
    let before = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let pid = pid
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        .context("process not running")?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR1)?;
    let mut value = None;
    crate::eventually(Duration::from_secs(5), || {
        let now = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        // A partly written file fails to parse: look again.
        value = (now.is_some() && now != before)
            .then(|| serde_json::from_slice(&std::fs::read(path).ok()?).ok())
            .flatten();
        value.is_some()
    });
    value.with_context(|| format!("no stats in {} after SIGUSR1", path.display()))
}

/// Waits for `line` on a child's stdout (read line by line), up to `timeout`; returns all lines
/// read so far. The reader keeps the child's stdout: use for clients whose output is a report.
pub fn wait_for_line(
    child: &mut Child,
    line: &str,
    timeout: Duration,
) -> Result<(bool, Vec<String>)> {
    let rx = crate::stdout_lines(child)?;
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.starts_with(line);
                lines.push(l);
                if hit {
                    return Ok((true, lines));
                }
            }
            Err(_) => return Ok((false, lines)),
        }
    }
}
