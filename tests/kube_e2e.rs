//! End-to-end in Kubernetes mode (root): a real etcd + kube-apiserver, the
//! `tollgate agent --kubernetes` binary with only deploy/'s RBAC, pods in
//! their own network namespaces, nsd and HTTP sites — checked with `dig`,
//! `curl` and `kubectl`, as a cluster user would.
//!
//! The test is the kubelet and the CNI: it creates each pod's namespace and
//! veth, the Pod object with `nodeName`, and patches `status.podIPs`. The
//! API server runs inside the node's network namespace, where the agent is.

use std::time::Duration;

use testkit::{eventually, privileged, repo, ApiServer, Cluster};

/// A pod of another node: its IP lives in the "ext" namespace.
const REMOTE_POD_IP: &str = "198.51.100.66";
const SETTLE: Duration = Duration::from_secs(20);

/// The local-mode test cluster (pods, nsd, sites) plus an API server in
/// its node namespace, where the agent runs.
struct KubeCluster {
    // Fields drop in order: the API server stops before the cluster removes
    // its namespaces and work directory (the API server's is inside).
    api: ApiServer,
    c: Cluster,
}

impl KubeCluster {
    fn new(pods: &[&str]) -> Self {
        let c = Cluster::new(env!("CARGO_BIN_EXE_tollgate"), "k8s", pods);
        let api = ApiServer::start(c.work.join("kube"), Some(&c.sb.node), (2379, 6443));
        KubeCluster { api, c }
    }

    /// What a kubelet and a CNI plugin report once the pod is networked.
    fn report_pod_ips(&self, name: &str, ips: &[&str]) {
        let list: Vec<String> = ips
            .iter()
            .map(|ip| format!("{{\"ip\":\"{ip}\"}}"))
            .collect();
        let patch = format!(
            "{{\"status\":{{\"podIP\":\"{}\",\"podIPs\":[{}]}}}}",
            ips[0],
            list.join(",")
        );
        self.api.kubectl(&[
            "patch",
            "pod",
            "-n",
            "prod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    fn start_agent(&mut self) {
        let source: Vec<std::ffi::OsString> = vec![
            "--kubernetes".into(),
            "--node-name".into(),
            "node-a".into(),
            "--kubeconfig".into(),
            self.api.agent_kubeconfig.clone().into(),
        ];
        self.c.start_with(&source);
    }

    /// Whether `curl` from the remote pod's address (in "ext") reaches `addr`.
    fn curl_from_remote_pod(&self, source: &str, addr: &str) -> bool {
        self.c
            .sb
            .try_sh(
                &self.c.sb.ext,
                &format!(
                    "curl -s -m 2 -o /dev/null -w '%{{http_code}}' --interface {source} http://{addr}/"
                ),
            )
            .stdout
            .starts_with(b"200")
    }
}

fn pod_object(name: &str, labels: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: prod, labels: {labels}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, image: example.test/app}}]}}\n"
    )
}

const APP_EGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: app-egress, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toCIDR: [203.0.113.53/32]
    toPorts:
    - ports: [{port: '53', protocol: UDP}, {port: '53', protocol: TCP}]
      rules: {dns: [{matchName: api.test}]}
  - toFQDNs: [{matchName: api.test}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
";

/// Kubernetes NetworkPolicy: web admits, on 80, pods of namespaces
/// labelled team=search (the client pod's namespace, prod, by then).
const WEB_NETPOL: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-search, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: search}}}]
    ports: [{port: 80, protocol: TCP}]
";

/// The cluster DNS Service: a ClusterIP whose backend is the DNS server
/// (an address outside the cluster here, so a slice lists it by hand, as
/// for a Service without a selector).
const DNS_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: prod}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: kube-dns-1
  namespace: prod
  labels: {kubernetes.io/service-name: kube-dns}
addressType: IPv4
endpoints: [{addresses: [203.0.113.53], conditions: {ready: true}}]
ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
";

/// Selects by a namespace label: pods named web in namespaces of team shop.
const TEAM_SHOP_EGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: team-shop-egress}
spec:
  endpointSelector:
    matchLabels: {io.cilium.k8s.namespace.labels.team: shop, app: web}
  egress:
  - toCIDR: [203.0.113.10/32]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

const WEB_INGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-ingress, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

#[test]
fn privileged_kube_mode_enforces_what_kubectl_applies() {
    if !privileged() {
        return;
    }
    let mut k = KubeCluster::new(&["app", "web"]);
    let (app, web) = (k.c.pod("app"), k.c.pod("web"));
    let web_netns = web.netns.clone();
    k.c.sb.http_server(&web_netns, 80, &web.v4.to_string());

    // The cluster: CRDs and the agent's RBAC from deploy/, bound to the
    // agent's user (so the agent proves it needs nothing more), a node, a
    // namespace with a team label, two local pods and one on another node.
    k.api.install_crds();
    k.api.kubectl(&[
        "apply",
        "-f",
        repo("deploy/namespace.yaml").to_str().unwrap(),
    ]);
    k.api
        .kubectl(&["apply", "-f", repo("deploy/rbac.yaml").to_str().unwrap()]);
    k.api.kubectl(&[
        "create",
        "clusterrolebinding",
        "tollgate-agent",
        "--clusterrole=tollgate",
        "--user=tollgate-agent",
    ]);
    k.api
        .apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {team: shop}}\n");
    k.api
        .apply("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n");
    let mut addresses = vec!["203.0.113.1".to_string()];
    addresses.extend(k.c.sb.pods.iter().map(|p| p.gateway_v4.to_string()));
    let addresses: Vec<String> = addresses
        .iter()
        .map(|a| format!("{{\"type\":\"InternalIP\",\"address\":\"{a}\"}}"))
        .collect();
    k.api.kubectl(&[
        "patch",
        "node",
        "node-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!("{{\"status\":{{\"addresses\":[{}]}}}}", addresses.join(",")),
    ]);
    k.api.apply(&pod_object("app", "{app: app}", "node-a"));
    k.api.apply(&pod_object("web", "{app: web}", "node-a"));
    k.api
        .apply(&pod_object("client", "{app: client}", "node-b"));
    k.report_pod_ips("app", &[&app.v4.to_string(), &app.v6.to_string()]);
    k.report_pod_ips("web", &[&web.v4.to_string(), &web.v6.to_string()]);
    k.report_pod_ips("client", &[REMOTE_POD_IP]);
    k.api.apply(APP_EGRESS);
    k.start_agent();

    // 1. toFQDNs: the allowed name resolves and connects on its port only;
    //    other names are refused and their IPs stay closed.
    eventually(SETTLE, "app's DNS policy in force", || {
        k.c.sb.dig(&app, "evil.test").0 == "REFUSED"
    });
    let (status, answers) = k.c.sb.dig(&app, "api.test");
    assert_eq!(
        (status.as_str(), answers.as_slice()),
        ("NOERROR", &["203.0.113.10".to_string()][..])
    );
    assert!(
        k.c.sb.curl(&app, "203.0.113.10", 443),
        "api.test:443 is allowed"
    );
    assert!(
        !k.c.sb.curl(&app, "203.0.113.10", 80),
        "only 443 is allowed"
    );
    assert!(
        !k.c.sb.curl(&app, "203.0.113.12", 443),
        "evil.test's IP stays closed"
    );

    // 1b. DNS through a Service address, as pods on a real node send it (to
    //     the kube-dns ClusterIP): the datapath sends it to the Service's
    //     backend before the policy decides, so the DNS rule for the
    //     backend applies, the proxy checks every name, and the answer comes
    //     back from the ClusterIP. (This API server is 1.20: EndpointSlices
    //     are discovery.k8s.io/v1beta1, which the agent falls back to.)
    k.api.apply(DNS_SERVICE);
    eventually(SETTLE, "DNS through the ClusterIP answers api.test", || {
        k.c.sb.dig(&app, "@10.96.0.10 api.test").0 == "NOERROR"
    });
    assert_eq!(
        k.c.sb.dig(&app, "@10.96.0.10 evil.test").0,
        "REFUSED",
        "the name check applies to queries sent to the ClusterIP"
    );
    assert_eq!(
        k.c.sb.dig(&app, "+tcp @10.96.0.10 api.test").1,
        ["203.0.113.10".to_string()],
        "over TCP too"
    );

    // 2. A label change moves the pod out of the policy and back in.
    k.api.kubectl(&[
        "label",
        "pod",
        "-n",
        "prod",
        "app",
        "app=other",
        "--overwrite",
    ]);
    eventually(SETTLE, "app unrestricted once relabelled", || {
        k.c.sb.curl(&app, "203.0.113.12", 443)
    });
    assert_eq!(k.c.sb.dig(&app, "evil.test").0, "NOERROR");
    k.api.kubectl(&[
        "label",
        "pod",
        "-n",
        "prod",
        "app",
        "app=app",
        "--overwrite",
    ]);
    eventually(SETTLE, "app restricted again", || {
        !k.c.sb.curl(&app, "203.0.113.12", 443)
    });
    assert_eq!(k.c.sb.dig(&app, "evil.test").0, "REFUSED");

    // 3. A namespace-label selector follows the namespace's labels.
    k.api.apply(TEAM_SHOP_EGRESS);
    eventually(SETTLE, "web restricted by its namespace's team", || {
        !k.c.sb.curl(&web, "203.0.113.11", 80)
    });
    assert!(
        k.c.sb.curl(&web, "203.0.113.10", 80),
        "web may reach .10:80"
    );
    k.api
        .kubectl(&["label", "namespace", "prod", "team=search", "--overwrite"]);
    eventually(
        SETTLE,
        "web unrestricted once prod leaves team shop",
        || k.c.sb.curl(&web, "203.0.113.11", 80),
    );

    // 4. A remote pod's identity for ingress: only the pod labelled client
    //    (on node-b) may connect to web; relabelled, it may not.
    k.api.apply(WEB_INGRESS);
    eventually(SETTLE, "web's ingress policy in force", || {
        !k.curl_from_remote_pod("198.51.100.10", &web.v4.to_string())
    });
    assert!(
        k.curl_from_remote_pod(REMOTE_POD_IP, &web.v4.to_string()),
        "the client pod on node-b reaches web"
    );
    k.api.kubectl(&[
        "label",
        "pod",
        "-n",
        "prod",
        "client",
        "app=stranger",
        "--overwrite",
    ]);
    eventually(SETTLE, "the relabelled remote pod is refused", || {
        !k.curl_from_remote_pod(REMOTE_POD_IP, &web.v4.to_string())
    });

    // 4b. A Kubernetes NetworkPolicy is enforced by the same engine, next
    //     to the CNP (Cilium combines them: a flow either allows passes):
    //     from a namespace labelled team=search, which prod now is, the
    //     remote pod may reach web on 80 again, whatever its labels.
    k.api.apply(WEB_NETPOL);
    eventually(SETTLE, "the NetworkPolicy admits the remote pod", || {
        k.curl_from_remote_pod(REMOTE_POD_IP, &web.v4.to_string())
    });
    k.api
        .kubectl(&["delete", "networkpolicy", "-n", "prod", "web-from-search"]);
    eventually(SETTLE, "without it the remote pod is refused again", || {
        !k.curl_from_remote_pod(REMOTE_POD_IP, &web.v4.to_string())
    });

    // 5. An invalid edit is reported on the object and changes nothing: the
    //    last valid version stays in force (never widened, never dropped).
    k.api.apply(&APP_EGRESS.replace("toFQDNs", "toFQDN"));
    eventually(SETTLE, "an InvalidPolicy event on app-egress", || {
        let out = k.api.try_kubectl(&[
            "get",
            "events",
            "-n",
            "prod",
            "--field-selector",
            "involvedObject.name=app-egress",
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("InvalidPolicy") && text.contains("unknown field `toFQDN`")
    });
    assert_eq!(k.c.metric("tollgate_kube_invalid_policies"), 1);
    assert_eq!(k.c.sb.dig(&app, "evil.test").0, "REFUSED");
    assert_eq!(k.c.sb.dig(&app, "api.test").0, "NOERROR");
    assert!(
        k.c.sb.curl(&app, "203.0.113.10", 443),
        "the last valid version still allows api.test:443"
    );
    assert!(!k.c.sb.curl(&app, "203.0.113.12", 443));
    k.api.apply(APP_EGRESS);

    // 6. The API server goes away: enforcement stays, the agent stays up,
    //    and it picks up changes once the server is back.
    k.api.kill_apiserver();
    eventually(SETTLE, "the lost watches counted", || {
        assert!(
            k.c.agent_running(),
            "the agent survives the API server going away:\n{}",
            k.c.log()
        );
        k.c.metric("tollgate_kube_watch_errors_total") > 0
    });
    assert_eq!(k.c.sb.dig(&app, "evil.test").0, "REFUSED");
    assert!(k.c.sb.curl(&app, "203.0.113.10", 443));
    assert!(!k.c.sb.curl(&app, "203.0.113.12", 443));
    assert!(k.c.agent_running(), "{}", k.c.log());
    k.api.restart_apiserver();

    // 7. A policy delete (seen through the re-established watch).
    k.api
        .kubectl(&["delete", "cnp", "-n", "prod", "app-egress"]);
    eventually(
        Duration::from_secs(60),
        "app unrestricted once its policy is deleted",
        || k.c.sb.curl(&app, "203.0.113.12", 443),
    );
    assert_eq!(k.c.sb.dig(&app, "evil.test").0, "NOERROR");
    assert!(k.c.agent_running(), "{}", k.c.log());
}
