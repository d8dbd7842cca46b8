//! Two VMs (two `serve` processes, two loopback VMs, two agents) on one headless host, three
//! clients in each at once: every window reaches the host tagged with its own VM's name, and
//! each VM's relay counts only its own clients.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::collections::BTreeSet;
use std::time::Duration;

use crossway_tests::compositors::{Guest, Host, HostKind};
use crossway_tests::{Process, Runtime};

const CLIENTS: usize = 3;

#[test]
fn two_vms_three_clients_each() {
    let test = "two_vms_three_clients_each";
    let rt = Runtime::new().unwrap();
    let host = Host::start(&rt, test, HostKind::Headless).unwrap().unwrap();
    let mut guests = Vec::new();
    for vm in ["one", "two"] {
        let guest = Guest::start(&rt, &host.display, vm).unwrap();
        guests.push(guest);
    }
    let mut clients = Vec::new();
    let mut expected = BTreeSet::new();
    for guest in &guests {
        for i in 0..CLIENTS {
            let title = format!("client-{i}");
            let mut cmd = guest.client(&rt, env!("CARGO_BIN_EXE_crossway-test-client"));
            // Alternate the buffer kinds: both paths run in one VM at once.
            let buffer = if i % 2 == 0 { "shm" } else { "dmabuf" };
            cmd.args(["--buffer", buffer, "--title", &title, "--frames", "100000"]);
            clients.push(Process::spawn("crossway-test-client", &mut cmd).unwrap());
            expected.insert(format!("[{}] {title}", guest.vm_name));
        }
    }
    for title in &expected {
        if let Err(err) = host.wait_for_title(title, Duration::from_secs(30)) {
            let logs: Vec<_> = guests.iter().map(Guest::log_text).collect();
            panic!("{err:#}\n{}", logs.join("\n"));
        }
    }
    let titles = host.toplevel_titles().unwrap().unwrap();
    assert_eq!(titles, expected);
    for client in &mut clients {
        assert!(client.running(), "a client exited");
    }
    for guest in &guests {
        let stats = guest.relay_stats().unwrap();
        assert_eq!(stats["vm_name"], guest.vm_name.as_str(), "{stats}");
        assert_eq!(
            stats["clients_live"].as_u64(),
            Some(CLIENTS as u64),
            "{stats}"
        );
        assert!(
            stats["total"]["frames"].as_u64().unwrap() >= CLIENTS as u64,
            "{stats}"
        );
    }
}
