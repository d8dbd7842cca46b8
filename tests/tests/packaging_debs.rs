//! `scripts/package`: the two Debian packages build, unpack into a scratch root with every
//! file where Debian and libvirt look for it, their manual pages render (`man crossway-proxy`
//! from the package's MANPATH), completions load, the systemd units verify against the
//! unpacked binaries and pages, and lintian has no finding that is not justified in
//! `packaging/debian/*.lintian-overrides`.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crossway_tests::{Runtime, require};

const PACKAGES: [&str; 2] = ["crossway-proxy", "crossway-agent"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The packages built once for this test binary, and the scratch root each is unpacked into
/// (`dpkg -x`): (debs, root).
fn packaged() -> &'static (Vec<PathBuf>, PathBuf) {
    static PACKAGED: OnceLock<(Vec<PathBuf>, PathBuf)> = OnceLock::new();
    PACKAGED.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging_debs");
        let _ = std::fs::remove_dir_all(&dir);
        let out = run(Command::new(repo().join("scripts/package"))
            .arg(dir.join("debs"))
            .current_dir(repo()));
        let debs: Vec<PathBuf> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(PathBuf::from)
            .collect();
        assert_eq!(debs.len(), 2, "{debs:?}");
        let root = dir.join("root");
        for deb in &debs {
            run(Command::new("dpkg").arg("-x").arg(deb).arg(&root));
        }
        (debs, root)
    })
}

fn tools_present(test: &str) -> bool {
    require(test, "dpkg-deb", "dpkg").is_some()
        && require(test, "dpkg-shlibdeps", "dpkg-dev").is_some()
        && require(test, "strip", "binutils").is_some()
}

#[test]
fn debs_unpack_with_binaries_manuals_completions_units() {
    let test = "debs_unpack_with_binaries_manuals_completions_units";
    if !tools_present(test) {
        return;
    }
    let (debs, root) = packaged();
    for deb in debs {
        let name = deb.file_name().unwrap().to_str().unwrap();
        assert!(
            PACKAGES.iter().any(|p| name.starts_with(&format!("{p}_"))),
            "{name}"
        );
        let control = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"));
        assert!(
            String::from_utf8_lossy(&control.stdout).contains("libc6"),
            "{name}: no shared-library dependencies"
        );
    }
    let expected = [
        "usr/bin/crossway-proxy",
        "usr/share/qemu/vhost-user/50-crossway-gpu.json",
        "usr/lib/systemd/user/crossway-proxy@.service",
        "usr/share/man/man1/crossway-proxy.1.gz",
        "usr/share/man/man1/crossway-proxy-serve.1.gz",
        "usr/share/bash-completion/completions/crossway-proxy",
        "usr/share/zsh/vendor-completions/_crossway-proxy",
        "usr/share/fish/vendor_completions.d/crossway-proxy.fish",
        "usr/share/doc/crossway-proxy/copyright",
        "usr/bin/crossway-agent",
        "usr/lib/systemd/user/crossway-agent.socket",
        "usr/lib/systemd/user/crossway-agent.service",
        "usr/lib/environment.d/60-crossway-agent.conf",
        "usr/share/man/man1/crossway-agent.1.gz",
        "usr/share/bash-completion/completions/crossway-agent",
        "usr/share/zsh/vendor-completions/_crossway-agent",
        "usr/share/fish/vendor_completions.d/crossway-agent.fish",
        "usr/share/doc/crossway-agent/copyright",
    ];
    for path in expected {
        assert!(root.join(path).is_file(), "{path} is not in the packages");
    }
    // libvirt runs the descriptor's "binary": it must resolve to the packaged program.
    let descriptor: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("usr/share/qemu/vhost-user/50-crossway-gpu.json")).unwrap(),
    )
    .unwrap();
    let binary = descriptor["binary"].as_str().unwrap();
    let link = root.join(binary.trim_start_matches('/'));
    assert_eq!(
        std::fs::canonicalize(&link).unwrap(),
        std::fs::canonicalize(root.join("usr/bin/crossway-proxy")).unwrap(),
        "{binary}"
    );
    // The unpacked binaries run (stripped, with their libraries resolved).
    for p in PACKAGES {
        let out = run(Command::new(root.join("usr/bin").join(p)).arg("--version"));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(p));
    }
    // Completions are valid bash that registers a completion for the command.
    for p in PACKAGES {
        let file = root.join("usr/share/bash-completion/completions").join(p);
        let out = run(Command::new("bash")
            .arg("-c")
            .arg(format!("source '{}' && complete -p {p}", file.display())));
        assert!(String::from_utf8_lossy(&out.stdout).contains(p));
    }
}

#[test]
fn man_crossway_proxy_renders_from_the_package() {
    let test = "man_crossway_proxy_renders_from_the_package";
    if !tools_present(test) || require(test, "man", "man-db").is_none() {
        return;
    }
    let (_, root) = packaged();
    for (page, must) in [
        ("crossway-proxy", "--print-capabilities"),
        ("crossway-proxy-serve", "--socket-path"),
        ("crossway-proxy-vm", "--max-connections"),
        ("crossway-agent", "--max-clients"),
    ] {
        // `man NAME` as a user would run it, with the package's manual tree on MANPATH.
        let out = run(Command::new("man")
            .arg("-P")
            .arg("cat")
            .arg(page)
            .env("MANPATH", root.join("usr/share/man"))
            .env("MANWIDTH", "100")
            .env("LC_ALL", "C.UTF-8"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("NAME") && text.contains(page),
            "{page}:\n{text}"
        );
        assert!(text.contains(must), "{page} lacks {must}:\n{text}");
        assert!(text.contains("--log-format"), "{page}:\n{text}");
        // man -l on the file itself, as the brief for packagers says.
        let file = root.join(format!("usr/share/man/man1/{page}.1.gz"));
        let out = run(Command::new("man")
            .arg("-P")
            .arg("cat")
            .arg("-l")
            .arg(&file));
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn systemd_units_verify() {
    let test = "systemd_units_verify";
    if !tools_present(test)
        || require(test, "systemd-analyze", "systemd").is_none()
        || require(test, "man", "man-db").is_none()
    {
        return;
    }
    let (_, root) = packaged();
    let rt = Runtime::new().unwrap();
    // systemd-analyze checks that ExecStart= programs exist, and cannot take a --root for user
    // units: the units are verified as packaged, with only the /usr/bin/ prefix of their
    // commands pointed at the unpacked binaries. Documentation= pages come from the package.
    let units = rt.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let bin = format!("{}/", root.join("usr/bin").display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("usr/lib/systemd/user")).unwrap() {
        let entry = entry.unwrap();
        let mut name = entry.file_name().into_string().unwrap();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert!(text.contains("Documentation=man:"), "{name}");
        // A template verifies as one instance of it.
        if name.ends_with("@.service") {
            name = name.replace("@.", "@vm1.");
        }
        std::fs::write(units.join(&name), text.replace("/usr/bin/", &bin)).unwrap();
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "crossway-agent.service",
            "crossway-agent.socket",
            "crossway-proxy@vm1.service"
        ]
    );
    let out = Command::new("systemd-analyze")
        .arg("--user")
        .arg("verify")
        .args(names.iter().map(|n| units.join(n)))
        .env("XDG_RUNTIME_DIR", rt.path())
        .env("MANPATH", root.join("usr/share/man"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{err}", out.status);
    // verify reports some problems (unknown keys, bad specifiers) without failing.
    for line in err.lines() {
        assert!(
            !line.contains("crossway"),
            "systemd-analyze found a problem:\n{err}"
        );
    }
}

#[test]
fn debs_pass_lintian() {
    let test = "debs_pass_lintian";
    if !tools_present(test) || require(test, "lintian", "lintian").is_none() {
        return;
    }
    let (debs, _) = packaged();
    // Every finding down to pedantic fails, unless an override file justifies it.
    let out = Command::new("lintian")
        .args([
            "--pedantic",
            "-I",
            "--fail-on",
            "error,warning,info,pedantic",
        ])
        .args(debs)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lintian: {}\n{text}", out.status);
    let findings: Vec<_> = text
        .lines()
        .filter(|l| {
            ["E: ", "W: ", "I: ", "P: "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert!(findings.is_empty(), "{findings:#?}");
}
