//! `tollgate datapath status` and `uninstall` against a real pinned
//! datapath (root; the sandbox is testkit's).

use std::process::Command;

use egress_bpf::desired::compile;
use egress_bpf::{Datapath, KernelDatapath};
use policy::{Inventory, PolicySet, ResolveOptions};
use testkit::{privileged, NetnsGuard, Sandbox};

/// Runs tollgate in the node's network namespace only (`ip netns exec`
/// would also remount /sys and hide the bpffs at /sys/fs/bpf).
fn tollgate_in(netns: &str, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .expect("run tollgate")
}

#[test]
fn privileged_datapath_status_and_uninstall() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("cli");
    let a = sb.pod("a");
    let ext = sb.ext.clone();
    sb.http_server(&ext, 80, "203.0.113.10");
    {
        let _g = NetnsGuard::enter(&sb.node);
        let inv = Inventory::parse(
            &format!(
                "endpoints:\n  - {{name: a, labels: {{app: a}}, ips: [{}], interface: {}}}\n",
                a.v4, a.host_if
            ),
            "test",
        )
        .unwrap();
        let report = policy::parse_str(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny-all}\nspec: {endpointSelector: {}, egress: [{toEntities: []}]}\n",
            None,
        );
        let resolved = PolicySet::new(report.policies).resolve(&inv, ResolveOptions::default());
        let interfaces = sb.only_endpoint(&a);
        let mut dp = KernelDatapath::open(&sb.pin_dir).unwrap();
        let desired = compile(&resolved, &inv, &interfaces).state;
        dp.apply(&dp.current().unwrap().diff(&desired)).unwrap();
    }
    assert!(!sb.curl(&a, "203.0.113.10", 80), "deny-all is enforced");
    let pin = sb.pin_dir.to_string_lossy().to_string();

    let status = tollgate_in(&sb.node, &["datapath", "status", "--pin-dir", &pin]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains("1 endpoint(s)"), "{text}");
    assert!(text.contains("drop_default_deny"), "{text}");

    let out = tollgate_in(&sb.node, &["datapath", "uninstall", "--pin-dir", &pin]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 2 program link(s)"));
    assert!(!sb.pin_dir.exists());
    assert!(
        sb.curl(&a, "203.0.113.10", 80),
        "nothing enforces after uninstall"
    );
}
