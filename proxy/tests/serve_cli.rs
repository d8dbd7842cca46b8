//! `crossway-proxy` as a vhost-user backend process: capabilities, arguments, lifecycle.

use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crossway-proxy"))
}

#[test]
fn print_capabilities_prints_libvirt_gpu_json() {
    let out = proxy().arg("--print-capabilities").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let compact: String = text.split_whitespace().collect();
    assert_eq!(compact, r#"{"type":"gpu","features":["render-node"]}"#);
    // For people, on stderr: which QEMU device carries cross-domain.
    let note = String::from_utf8(out.stderr).unwrap();
    assert!(note.contains("vhost-user-test-device-pci"), "{note}");
    assert!(note.contains("crosvm --vhost-user gpu"), "{note}");
}

#[test]
fn packaged_descriptor_names_a_gpu_backend() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/vhost-user/50-crossway-gpu.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let compact: String = text.split_whitespace().collect();
    assert!(compact.contains(r#""type":"gpu""#), "{text}");
    assert!(
        compact.contains(r#""binary":"/usr/libexec/crossway-proxy""#),
        "{text}"
    );
}

#[test]
fn serve_without_endpoint_fails() {
    let out = proxy().arg("serve").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--socket-path"));
}

#[test]
fn serve_socket_path_vmm_hangup_exits_cleanly() {
    let dir = std::env::temp_dir().join(format!("crossway-serve-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("gpu.sock");
    let mut child = proxy()
        .args(["serve", "--no-udmabuf", "--socket-path"])
        .arg(&sock)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let conn = loop {
        if let Ok(c) = UnixStream::connect(&sock) {
            break c;
        }
        assert!(Instant::now() < deadline, "backend never listened");
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(conn);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("backend did not exit after the VMM hung up");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}
