//! The sandbox `serve` and `filter` run in, as crosvm's device processes do: a bug in the relay
//! or the device model must not be the user's whole account.
//!
//! Three layers, each on by default (`--no-sandbox` turns all off, for debugging):
//! - **landlock** ([`restrict_filesystem`]), entered first, before any thread exists (landlock
//!   binds only the calling thread and its future children): the filesystem shrinks to the
//!   directories the command must write (runtime dir, temporary dir, its sockets' and stats
//!   file's directories), `/dev/udmabuf`, and read-only `/usr`, `/etc`, `/proc`, `/sys` and the
//!   policy file. TCP bind and connect are refused outright.
//! - **resource limits**: no core dumps (they would hold guest memory); the open-file limit
//!   raised to its hard maximum (one fd per udmabuf).
//! - **seccomp** ([`restrict_syscalls`]), entered once setup is done (sockets open, host
//!   compositor connected, embedded compositor running) on every thread at once (`TSYNC`):
//!   only the system calls these commands make are allowed; any other traps into a `SIGSYS`
//!   handler that writes `crossway-proxy: sandbox: forbidden system call N (NAME)` to stderr
//!   and exits with status 159 (128 + SIGSYS). Never a silent death. `no_new_privs` comes with
//!   it. Threads (but not processes: `clone` needs `CLONE_THREAD`, `clone3` answers `ENOSYS`
//!   so the C library falls back to `clone`), memfds, udmabuf ioctls, sockets, signals and
//!   timers stay allowed; `execve`, `ptrace`, `mount`, `bpf`, namespaces, `kill` and the rest do
//!   not.
//!
//! A kernel without landlock or seccomp runs the command unsandboxed in that layer and says so
//! once; [`state`] tells the stats what is in force. The only `unsafe` here is the `SIGSYS`
//! handler and its installation. A forbidden call made while `SIGSYS` is blocked (inside
//! `posix_spawn`, which blocks every signal around its `clone`) cannot run the handler: the
//! kernel then kills the process with `SIGSYS` (status 159 all the same, and the shell or
//! supervisor reports "Bad system call").
//!
//! Tests set `CROSSWAY_SANDBOX_SELF_TEST` (hidden): `path:FILE` opens FILE for reading after
//! the sandbox is in force and logs whether it was refused; `syscall` then calls `execve`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tracing::{info, warn};

/// What is in force, for the stats and logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SandboxState {
    /// Whether the sandbox was asked for (not `--no-sandbox`).
    pub enabled: bool,
    /// `landlock`: `fully enforced`, `partially enforced` (an older kernel ABI), `not
    /// enforced` (no landlock), `failed: …` or `off`.
    pub landlock: String,
    /// `seccomp`: `enforced`, `failed: …`, `off`, or `pending` before setup ends.
    pub seccomp: String,
    /// `prctl(PR_SET_NO_NEW_PRIVS)` is set.
    pub no_new_privs: bool,
    /// Core dumps are off.
    pub no_core_dumps: bool,
}

static STATE: OnceLock<std::sync::Mutex<SandboxState>> = OnceLock::new();

fn state_cell() -> &'static std::sync::Mutex<SandboxState> {
    STATE.get_or_init(|| {
        std::sync::Mutex::new(SandboxState {
            enabled: false,
            landlock: "off".into(),
            seccomp: "off".into(),
            no_new_privs: false,
            no_core_dumps: false,
        })
    })
}

fn update(f: impl FnOnce(&mut SandboxState)) {
    f(&mut state_cell().lock().unwrap_or_else(|e| e.into_inner()));
}

/// The sandbox's state now.
pub fn state() -> SandboxState {
    state_cell()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// What a command may touch on the filesystem.
#[derive(Debug, Clone, Default)]
pub struct FsAccess {
    /// Directories (and their contents) it may create, write and remove in, or devices it may
    /// open read-write.
    pub read_write: Vec<PathBuf>,
    /// Files or directories it may only read.
    pub read_only: Vec<PathBuf>,
}

impl FsAccess {
    /// What every sandboxed command needs: the runtime and temporary directories, udmabuf,
    /// and the read-only system trees (xkb data, `/proc/self/fd` links, udmabuf's module
    /// parameters).
    pub fn base() -> FsAccess {
        let mut read_write = vec![std::env::temp_dir(), PathBuf::from("/dev/udmabuf")];
        if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
            read_write.push(dir.into());
        }
        FsAccess {
            read_write,
            read_only: ["/usr", "/etc", "/proc", "/sys", "/dev/null"]
                .map(PathBuf::from)
                .to_vec(),
        }
    }

    /// Adds the directory that holds `file` (a socket, the stats file) as read-write.
    pub fn parent_of(&mut self, file: &Path) {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        if let Some(dir) = file.parent() {
            self.read_write.push(dir.to_owned());
        }
    }
}

/// Applies landlock to this thread and every thread it starts later; call before the first
/// thread is spawned. With `enabled` false only records that the sandbox is off.
pub fn restrict_filesystem(enabled: bool, access: &FsAccess) {
    update(|s| s.enabled = enabled);
    if !enabled {
        warn!("--no-sandbox: the backend runs with every privilege of its user");
        return;
    }
    let landlock = match landlock_ruleset(access) {
        Ok(status) => {
            use landlock::RulesetStatus as S;
            match status.ruleset {
                S::FullyEnforced => "fully enforced".to_owned(),
                S::PartiallyEnforced => "partially enforced".to_owned(),
                S::NotEnforced => {
                    warn!("this kernel has no landlock: the filesystem is not restricted");
                    "not enforced".to_owned()
                }
            }
        }
        Err(e) => {
            warn!(error = %e, "landlock failed: the filesystem is not restricted");
            format!("failed: {e}")
        }
    };
    let no_core_dumps = resource_limits();
    update(|s| {
        s.landlock = landlock;
        s.no_core_dumps = no_core_dumps;
        s.seccomp = "pending".into();
    });
}

fn landlock_ruleset(
    access: &FsAccess,
) -> Result<landlock::RestrictionStatus, landlock::RulesetError> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
        RulesetCreatedAttr, path_beneath_rules,
    };
    let abi = ABI::V5;
    let exists = |paths: &[PathBuf]| -> Vec<PathBuf> {
        paths.iter().filter(|p| p.exists()).cloned().collect()
    };
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(
            exists(&access.read_write),
            AccessFs::from_all(abi),
        ))?
        .add_rules(path_beneath_rules(
            exists(&access.read_only),
            AccessFs::from_read(abi),
        ))?
        .restrict_self()
}

/// No core dumps; the open-file limit at its hard maximum. Returns whether core dumps are off.
fn resource_limits() -> bool {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let nofile = getrlimit(Resource::Nofile);
    if nofile.current != nofile.maximum {
        let raised = Rlimit {
            current: nofile.maximum,
            maximum: nofile.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            warn!(error = %e, "raising the open-file limit failed");
        }
    }
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    match setrlimit(Resource::Core, none) {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "turning off core dumps failed");
            false
        }
    }
}

/// Installs the seccomp filter on every thread of the process (call once setup is done), then
/// runs the self-test `CROSSWAY_SANDBOX_SELF_TEST` asks for. Does nothing when the sandbox is
/// off.
pub fn restrict_syscalls() {
    if !state().enabled {
        return;
    }
    let seccomp = match install_seccomp() {
        Ok(()) => "enforced".to_owned(),
        Err(e) => {
            warn!(error = %e, "seccomp failed: system calls are not restricted");
            format!("failed: {e}")
        }
    };
    let no_new_privs = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"]))
    });
    update(|s| {
        s.seccomp = seccomp;
        s.no_new_privs = no_new_privs;
    });
    let s = state();
    info!(
        landlock = %s.landlock,
        seccomp = %s.seccomp,
        no_new_privs = s.no_new_privs,
        no_core_dumps = s.no_core_dumps,
        "sandbox entered"
    );
    self_test();
}

fn self_test() {
    let Ok(what) = std::env::var("CROSSWAY_SANDBOX_SELF_TEST") else {
        return;
    };
    for step in what.split(',') {
        if let Some(path) = step.strip_prefix("path:") {
            match std::fs::File::open(path) {
                Ok(_) => warn!(
                    path,
                    "sandbox self-test: opening a forbidden path succeeded"
                ),
                Err(e) => {
                    info!(path, error = %e, "sandbox self-test: opening a forbidden path refused")
                }
            }
        } else if step == "syscall" {
            info!("sandbox self-test: calling execve");
            // Straight execve, as an exploit would: std's Command forks first with every
            // signal blocked, and a trap then kills without the handler's message.
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: path, argv and envp are NUL-terminated and live across the call; on
            // success the process image is replaced, which is what the test checks is refused.
            let rc = unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            warn!(rc, "sandbox self-test: execve returned");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SeccompError {
    #[error("building the filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("loading the filter: {0}")]
    Load(#[from] seccompiler::Error),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    #[error("this architecture has no filter")]
    Arch,
}

fn target_arch() -> Result<seccompiler::TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(seccompiler::TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(seccompiler::TargetArch::aarch64)
    } else {
        Err(SeccompError::Arch)
    }
}

/// The system calls `serve` and `filter` make after setup (with their threads, the embedded
/// compositor, the stats dump and the exit path), found with `strace -f` over the process
/// tests and the code's own calls.
fn allowed_syscalls() -> Vec<i64> {
    use libc::*;
    #[allow(unused_mut)]
    let mut list = vec![
        // memory
        SYS_brk,
        SYS_mmap,
        SYS_munmap,
        SYS_mprotect,
        SYS_mremap,
        SYS_madvise,
        SYS_msync,
        SYS_memfd_create,
        SYS_ftruncate,
        SYS_fallocate,
        // files and fds
        SYS_openat,
        SYS_close,
        SYS_close_range,
        SYS_read,
        SYS_write,
        SYS_readv,
        SYS_writev,
        SYS_pread64,
        SYS_pwrite64,
        SYS_preadv,
        SYS_pwritev,
        SYS_lseek,
        SYS_fcntl,
        SYS_flock,
        SYS_fstat,
        SYS_newfstatat,
        SYS_statx,
        SYS_fstatfs,
        SYS_statfs,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_readlinkat,
        SYS_getdents64,
        SYS_mkdirat,
        SYS_unlinkat,
        SYS_renameat,
        SYS_renameat2,
        SYS_dup,
        SYS_dup3,
        SYS_ioctl,
        SYS_fsync,
        SYS_fdatasync,
        SYS_getcwd,
        SYS_pipe2,
        SYS_eventfd2,
        SYS_splice,
        // sockets
        SYS_socket,
        SYS_socketpair,
        SYS_bind,
        SYS_listen,
        SYS_accept,
        SYS_accept4,
        SYS_connect,
        SYS_shutdown,
        SYS_getsockopt,
        SYS_setsockopt,
        SYS_getsockname,
        SYS_getpeername,
        SYS_sendmsg,
        SYS_recvmsg,
        SYS_sendto,
        SYS_recvfrom,
        // waiting and time
        SYS_ppoll,
        SYS_pselect6,
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_pwait,
        SYS_epoll_pwait2,
        SYS_timerfd_create,
        SYS_timerfd_settime,
        SYS_timerfd_gettime,
        SYS_clock_gettime,
        SYS_clock_getres,
        SYS_clock_nanosleep,
        SYS_nanosleep,
        SYS_gettimeofday,
        SYS_futex,
        SYS_sched_yield,
        SYS_sched_getaffinity,
        SYS_restart_syscall,
        // threads and signals
        SYS_clone,
        SYS_set_robust_list,
        SYS_rseq,
        SYS_set_tid_address,
        SYS_exit,
        SYS_exit_group,
        SYS_gettid,
        SYS_getpid,
        SYS_getppid,
        SYS_tgkill,
        SYS_tkill,
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_sigaltstack,
        SYS_prctl,
        SYS_membarrier,
        // identity and limits
        SYS_getuid,
        SYS_geteuid,
        SYS_getgid,
        SYS_getegid,
        SYS_getrandom,
        SYS_prlimit64,
        SYS_getrlimit,
        SYS_uname,
        SYS_sysinfo,
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([
        SYS_open,
        SYS_stat,
        SYS_lstat,
        SYS_access,
        SYS_pipe,
        SYS_poll,
        SYS_select,
        SYS_mkdir,
        SYS_rmdir,
        SYS_unlink,
        SYS_rename,
        SYS_readlink,
        SYS_epoll_wait,
        SYS_epoll_create,
        SYS_dup2,
        SYS_arch_prctl,
        SYS_time,
    ]);
    list
}

fn install_seccomp() -> Result<(), SeccompError> {
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule,
    };
    let arch = target_arch()?;
    install_sigsys_handler().map_err(SeccompError::Handler)?;
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls()
        .into_iter()
        .map(|nr| (nr, vec![]))
        .collect();
    // Threads, never processes.
    let thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )?;
    rules.insert(libc::SYS_clone, vec![SeccompRule::new(vec![thread])?]);
    // clone3's flags are behind a pointer seccomp cannot read: ENOSYS (from the first filter)
    // makes the C library fall back to clone, which the second checks.
    rules.insert(libc::SYS_clone3, vec![]);
    let clone3: BpfProgram = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?
    .try_into()?;
    let main: BpfProgram =
        SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)?.try_into()?;
    // The clone3 filter first: the main one forbids `seccomp` itself.
    seccompiler::apply_filter_all_threads(&clone3)?;
    seccompiler::apply_filter_all_threads(&main)?;
    Ok(())
}

/// Names of the calls an attacker would reach for first, for the message.
fn syscall_name(nr: i64) -> &'static str {
    const NAMES: [(i64, &str); 14] = [
        (libc::SYS_execve, "execve"),
        (libc::SYS_execveat, "execveat"),
        (libc::SYS_ptrace, "ptrace"),
        (libc::SYS_kill, "kill"),
        (libc::SYS_mount, "mount"),
        (libc::SYS_bpf, "bpf"),
        (libc::SYS_unshare, "unshare"),
        (libc::SYS_setns, "setns"),
        (libc::SYS_process_vm_readv, "process_vm_readv"),
        (libc::SYS_process_vm_writev, "process_vm_writev"),
        (libc::SYS_io_uring_setup, "io_uring_setup"),
        (libc::SYS_userfaultfd, "userfaultfd"),
        (libc::SYS_perf_event_open, "perf_event_open"),
        (libc::SYS_clone, "clone (a process)"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == nr)
        .map_or("not on the allow-list", |(_, name)| name)
}

fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value (no flags, empty mask); the handler is an
    // `extern "C"` function with the SA_SIGINFO signature that only calls async-signal-safe
    // functions (write, _exit); the old action is not needed.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Exit status after a forbidden call: 128 + SIGSYS, as if the signal had killed us.
pub const FORBIDDEN_EXIT: i32 = 128 + libc::SIGSYS;

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // The kernel's siginfo for SIGSYS (include/uapi/asm-generic/siginfo.h): after si_signo,
    // si_errno, si_code and padding (16 bytes on 64-bit), `_call_addr` (a pointer) then
    // `_syscall` (an int).
    const SYSCALL_OFFSET: usize = 16 + std::mem::size_of::<usize>();
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler; SIGSYS from
        // seccomp fills `_syscall` at this offset, within the 128-byte siginfo_t.
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SYSCALL_OFFSET).cast::<i32>()) }
    };
    let mut buf = [0u8; 160];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        for &b in bytes {
            if len < buf.len() {
                buf[len] = b;
                len += 1;
            }
        }
    };
    push(b"crossway-proxy: sandbox: forbidden system call ");
    let mut digits = [0u8; 12];
    let mut n = i64::from(nr).unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    push(&digits[at..]);
    push(b" (");
    push(syscall_name(i64::from(nr)).as_bytes());
    push(b"); exiting (run with --no-sandbox to debug)\n");
    // SAFETY: write and _exit are async-signal-safe; buf[..len] is initialised.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(FORBIDDEN_EXIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_has_no_exec_ptrace_or_kill() {
        let list = allowed_syscalls();
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_mount,
            libc::SYS_bpf,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_process_vm_readv,
        ] {
            assert!(!list.contains(&nr), "{} allowed", syscall_name(nr));
        }
    }

    #[test]
    fn filters_build_for_this_arch() {
        let arch = target_arch().unwrap();
        let rules = allowed_syscalls()
            .into_iter()
            .map(|nr| (nr, vec![]))
            .collect();
        let filter = seccompiler::SeccompFilter::new(
            rules,
            seccompiler::SeccompAction::Trap,
            seccompiler::SeccompAction::Allow,
            arch,
        )
        .unwrap();
        let _: seccompiler::BpfProgram = filter.try_into().unwrap();
    }
}
