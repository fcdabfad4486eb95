//! Kubernetes as a source, against a real kube-apiserver + etcd (root: the
//! API server is built offline by scripts/build-kube-apiserver.sh and cached
//! outside the repository). The test acts as the kubelet: it creates pods
//! with a node name and patches their status with an IP.

use std::process::Command;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use policy::{Direction, Inventory, PeerRef, PolicySet, Protocol, ResolveOptions, Verdict};
use testkit::{privileged_with, repo, ApiServer};

/// Root, for the API server (built by scripts/build-kube-apiserver.sh),
/// and the tools its setup needs.
fn privileged() -> bool {
    privileged_with(&["openssl", "etcd"])
}

/// An API server on these loopback ports (each test of this file has its own).
fn api_server(etcd_port: u16, api_port: u16) -> ApiServer {
    let dir = std::env::temp_dir().join(format!("tg-kube-{}-{api_port}", std::process::id()));
    ApiServer::start(dir, None, (etcd_port, api_port))
}

fn pod(ns: &str, name: &str, labels: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, image: example.test/app}}]}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_kube_snapshot_feeds_the_same_model_as_local_mode() {
    if !privileged() {
        return;
    }
    let api = api_server(12379, 16443);
    api.install_crds();
    api.kubectl(&["create", "namespace", "prod"]);
    api.kubectl(&["label", "namespace", "prod", "team=shop"]);
    api.apply(&pod("prod", "payments", "{app: payments}", "node-a"));
    api.apply(&pod(
        "kube-system",
        "coredns",
        "{k8s-app: kube-dns}",
        "node-a",
    ));
    api.apply(&pod("prod", "frontend", "{app: frontend}", "node-b"));
    api.apply(&pod("prod", "pending", "{app: pending}", "node-a"));

    // Act as the kubelet: report the pods' IPs.
    let client = tollgate::kube::client_from_kubeconfig(&api.kubeconfig)
        .await
        .unwrap();
    for (ns, name, ip) in [
        ("prod", "payments", "10.0.1.30"),
        ("kube-system", "coredns", "10.0.0.53"),
        ("prod", "frontend", "10.0.2.10"),
    ] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let status = serde_json::json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    // The seed policy as users apply it, and one with a typo.
    api.kubectl(&[
        "apply",
        "-f",
        repo("testdata/policies/restrict-egress-to-stripe.yaml")
            .to_str()
            .unwrap(),
    ]);
    api.apply(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: typo, namespace: prod}\n\
         spec: {endpointSelector: {}, egress: [{toFQDN: [{matchName: x.test}]}]}\n",
    );

    let snap = tollgate::kube::snapshot(&client, "node-a").await.unwrap();
    let names: Vec<String> = snap.policies.iter().map(|p| p.name.to_string()).collect();
    assert_eq!(
        names,
        ["prod/restrict-egress-to-stripe"],
        "the valid policy is in force"
    );
    assert_eq!(snap.diagnostics.len(), 1, "{:?}", snap.diagnostics);
    let d = snap.diagnostics[0].to_string();
    assert!(
        d.contains("prod/typo") && d.contains("unknown field `toFQDN`"),
        "{d}"
    );
    let mut local: Vec<String> = snap.local.iter().map(|k| k.to_string()).collect();
    local.sort();
    assert_eq!(
        local,
        ["kube-system/coredns", "prod/payments"],
        "pods on node-a with an IP"
    );
    assert!(
        snap.inventory.endpoints.iter().all(|e| e.name != "pending"),
        "a pod without an IP is not an endpoint yet"
    );

    // The same resolution and decisions as local mode.
    let inventory = Inventory::from_spec(snap.inventory).unwrap();
    let payments = inventory.find("prod/payments").unwrap();
    assert_eq!(
        payments.labels.get("io.cilium.k8s.namespace.labels.team"),
        Some("shop"),
        "namespace labels reach the pod's identity"
    );
    let set = PolicySet::from_shared(snap.policies);
    let resolved = set.resolve(&inventory, ResolveOptions::default());
    let ep = resolved.endpoint(&payments.key).unwrap();
    let names = ["api.stripe.com".to_string()];
    let stripe = PeerRef {
        identity: policy::Identity::WORLD,
        ip: Some("203.0.113.7".parse().unwrap()),
        names: &names,
    };
    assert_eq!(
        ep.decide(
            set.matcher(),
            Direction::Egress,
            &stripe,
            443,
            Protocol::Tcp
        )
        .verdict,
        Verdict::Allowed
    );
    let coredns = inventory.find("kube-system/coredns").unwrap();
    let dns = PeerRef {
        identity: coredns.identity,
        ip: Some("10.0.0.53".parse().unwrap()),
        names: &[],
    };
    assert_eq!(
        ep.decide(set.matcher(), Direction::Egress, &dns, 53, Protocol::Udp)
            .verdict,
        Verdict::Allowed
    );
    let frontend = inventory.find("prod/frontend").unwrap();
    let other = PeerRef {
        identity: frontend.identity,
        ip: Some("10.0.2.10".parse().unwrap()),
        names: &[],
    };
    assert_eq!(
        ep.decide(set.matcher(), Direction::Egress, &other, 80, Protocol::Tcp)
            .verdict,
        Verdict::Denied
    );

    // A policy delete is seen too.
    api.kubectl(&["delete", "cnp", "-n", "prod", "restrict-egress-to-stripe"]);
    let snap = tollgate::kube::snapshot(&client, "node-a").await.unwrap();
    assert!(snap.policies.is_empty());
}

/// deploy/ as a real API server validates it, and the RBAC it grants is
/// exactly what the agent reads: no writes beyond events, no secrets. The
/// API server here is 1.20, whose DaemonSets have no `maxSurge`: what it
/// validates is deploy/ as a cluster before 1.22 runs it
/// (`scripts/realnode/deploy`: one pod at a time, and the Role that lets a
/// replaced agent release its own pod, in its namespace only).
#[test]
fn privileged_deploy_manifests_pass_server_side_validation() {
    if !privileged() {
        return;
    }
    let api = api_server(12380, 16444);
    // A server-side dry run does not create the namespace the namespaced
    // objects go into, so it has to exist first.
    api.kubectl(&[
        "apply",
        "-f",
        repo("deploy/namespace.yaml").to_str().unwrap(),
    ]);
    let out = api.kubectl(&[
        "apply",
        "--dry-run=server",
        "-k",
        repo("scripts/realnode/deploy").to_str().unwrap(),
    ]);
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/ciliumnetworkpolicies.cilium.io",
        "serviceaccount/tollgate",
        "clusterrole.rbac.authorization.k8s.io/tollgate",
        "configmap/tollgate-config",
        "daemonset.apps/tollgate",
        "role.rbac.authorization.k8s.io/tollgate-handover",
    ] {
        assert!(out.contains(object), "{object} missing from:\n{out}");
    }
    // deploy/ itself: the same objects, but the surge rollout (1.22+) and
    // no Role.
    let built = api.kubectl(&["kustomize", repo("deploy").to_str().unwrap()]);
    assert!(
        built.contains("maxSurge: 1") && built.contains("maxUnavailable: 0"),
        "{built}"
    );
    assert!(
        !built.contains("kind: Role\n"),
        "deploy/ grants no pod writes"
    );

    api.kubectl(&[
        "apply",
        "-k",
        repo("scripts/realnode/deploy").to_str().unwrap(),
    ]);
    let sa = "--as=system:serviceaccount:tollgate:tollgate";
    // `kubectl auth can-i` as the agent's service account, in `scope`.
    let can_i = |verb: &str, resource: &str, scope: &str| -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            .args(["auth", "can-i", verb, resource, scope, sa])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let answer = |allowed: bool| if allowed { "yes" } else { "no" };
    for (verb, resource, allowed) in [
        ("watch", "ciliumnetworkpolicies.cilium.io", true),
        ("list", "ciliumclusterwidenetworkpolicies.cilium.io", true),
        ("watch", "pods", true),
        ("watch", "namespaces", true),
        ("watch", "nodes", true),
        ("watch", "networkpolicies.networking.k8s.io", true),
        ("watch", "ciliumcidrgroups.cilium.io", true),
        ("update", "networkpolicies.networking.k8s.io", false),
        ("create", "events.events.k8s.io", true),
        ("create", "pods", false),
        ("update", "ciliumnetworkpolicies.cilium.io", false),
        ("list", "secrets", false),
        ("list", "configmaps", false),
        // The Role: a replaced agent takes its selector labels off its own
        // pod, in the agent's namespace (below) and nowhere else.
        ("patch", "pods", false),
        ("delete", "pods", false),
    ] {
        assert_eq!(
            can_i(verb, resource, "--all-namespaces"),
            answer(allowed),
            "can the agent {verb} {resource}?"
        );
    }
    for (verb, resource, namespace, allowed) in [
        ("patch", "pods", "tollgate", true),
        ("patch", "pods", "default", false),
        ("update", "pods", "tollgate", false),
        ("get", "daemonsets.apps/tollgate", "tollgate", true),
        ("patch", "daemonsets.apps/tollgate", "tollgate", false),
        ("get", "daemonsets.apps/other", "tollgate", false),
    ] {
        assert_eq!(
            can_i(verb, resource, &format!("--namespace={namespace}")),
            answer(allowed),
            "can the agent {verb} {resource} in {namespace}?"
        );
    }
}

/// A cluster without the CiliumCIDRGroup CRD (an older Cilium's, a partial
/// install) must not keep the agent from starting: the watch syncs without
/// that kind, and the policies are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_the_watch_syncs_on_a_cluster_without_the_cidr_group_crd() {
    if !privileged() {
        return;
    }
    let api = api_server(12381, 16445);
    for crd in ["ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"] {
        api.kubectl(&[
            "apply",
            "-f",
            repo(&format!("deploy/crds/{crd}.yaml")).to_str().unwrap(),
        ]);
        api.kubectl(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout=30s",
            &format!("crd/{crd}.cilium.io"),
        ]);
    }
    api.kubectl(&["create", "namespace", "prod"]);
    api.apply(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\n\
         spec: {endpointSelector: {}, egress: [{toEntities: [world]}]}\n",
    );
    let client = tollgate::kube::watch_client(Some(&api.kubeconfig))
        .await
        .unwrap();
    let mut watch = tollgate::kube::ClusterWatch::start(client, "node-a", "default").await;
    tokio::time::timeout(std::time::Duration::from_secs(40), watch.synced())
        .await
        .expect("synced without the CIDR group kind, after its bounded wait");
    let snap = watch.snapshot();
    let names: Vec<String> = snap.policies.iter().map(|p| p.name.to_string()).collect();
    assert_eq!(names, ["prod/p"]);
}

/// The probe that wakes the watches after an outage (`kube_reconnect`)
/// reads the real API server's `/readyz`: yes while it runs, no while it
/// is away, yes again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_the_readiness_probe_follows_the_api_server_away_and_back() {
    if !privileged() {
        return;
    }
    let mut api = api_server(12382, 16446);
    let client = tollgate::kube::client_from_kubeconfig(&api.kubeconfig)
        .await
        .unwrap();
    assert!(tollgate::kube_reconnect::api_server_ready(&client).await);
    api.kill_apiserver();
    assert!(!tollgate::kube_reconnect::api_server_ready(&client).await);
    api.restart_apiserver();
    assert!(tollgate::kube_reconnect::api_server_ready(&client).await);
}
