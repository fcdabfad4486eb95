//! Services and EndpointSlices in Kubernetes mode: each Service's
//! ClusterIPs and ports with the ready endpoints of its EndpointSlices as
//! backends (what kube-proxy programs), for the datapath's Service
//! translation and for `toServices`.
//!
//! EndpointSlices are read as dynamic objects so that one agent works with
//! `discovery.k8s.io/v1` (Kubernetes 1.21 and later) and `v1beta1` (1.17 to
//! 1.24): the fields used here are the same in both.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use kube::api::{ApiResource, DynamicObject};
use kube::Client;
use policy::services::{BackendSpec, ServicePortSpec, ServiceSpec, TargetPort};

/// The label naming the Service an EndpointSlice belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The EndpointSlice resource the API server serves: `v1` if it does.
pub async fn endpoint_slice_resource(client: &Client) -> ApiResource {
    let version = match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => "v1",
        _ => "v1beta1",
    };
    endpoint_slice_version(version)
}

pub fn endpoint_slice_version(version: &str) -> ApiResource {
    ApiResource {
        group: "discovery.k8s.io".into(),
        version: version.into(),
        api_version: format!("discovery.k8s.io/{version}"),
        kind: "EndpointSlice".into(),
        plural: "endpointslices".into(),
    }
}

/// The Services with ClusterIPs, with the backends their slices list as
/// ready (a missing `ready` condition means ready, as the API defines it).
pub fn services(services: &[Arc<Service>], slices: &[Arc<DynamicObject>]) -> Vec<ServiceSpec> {
    let mut backends: BTreeMap<(String, String), Vec<BackendSpec>> = BTreeMap::new();
    for slice in slices {
        let (Some(ns), Some(service)) = (
            slice.metadata.namespace.clone(),
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
        ) else {
            continue;
        };
        let ports: BTreeMap<String, u16> = slice.data["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let name = p["name"].as_str().unwrap_or_default().to_string();
                Some((name, u16::try_from(p["port"].as_u64()?).ok()?))
            })
            .collect();
        let list = backends.entry((ns, service)).or_default();
        for endpoint in slice.data["endpoints"].as_array().into_iter().flatten() {
            if endpoint["conditions"]["ready"].as_bool() == Some(false) {
                continue;
            }
            for address in endpoint["addresses"].as_array().into_iter().flatten() {
                if let Some(ip) = address.as_str().and_then(|a| a.parse::<IpAddr>().ok()) {
                    list.push(BackendSpec {
                        ip,
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(ServicePortSpec {
                    name: p.name.clone().unwrap_or_default(),
                    port: u16::try_from(p.port).ok()?,
                    protocol: match p.protocol.as_deref().unwrap_or("TCP") {
                        "UDP" => policy::model::ProtocolSpec::Udp,
                        "SCTP" => policy::model::ProtocolSpec::Sctp,
                        _ => policy::model::ProtocolSpec::Tcp,
                    },
                    target_port: p.target_port.as_ref().map(|t| match t {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => {
                            TargetPort::Number(u16::try_from(*n).unwrap_or(0))
                        }
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => {
                            TargetPort::Name(s.clone())
                        }
                    }),
                })
            })
            .collect();
        out.push(ServiceSpec {
            backends: Some(
                backends
                    .remove(&(namespace.clone(), name.clone()))
                    .unwrap_or_default(),
            ),
            namespace,
            name,
            labels: svc.metadata.labels.clone().unwrap_or_default(),
            ips,
            ports,
            selector: spec.selector.clone().unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(json).unwrap())
    }

    fn slice(json: serde_json::Value) -> Arc<DynamicObject> {
        Arc::new(serde_json::from_value(json).unwrap())
    }

    #[test]
    fn a_service_gets_the_ready_endpoints_of_its_slices_as_backends() {
        let svcs = [
            service(serde_json::json!({
                "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
                "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"k8s-app": "kube-dns"},
                         "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
                                   {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": "dns-tcp"}]}
            })),
            service(serde_json::json!({
                "metadata": {"name": "external", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "example.com"}
            })),
        ];
        let slices = [
            slice(serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kube-dns-abc", "namespace": "kube-system",
                             "labels": {"kubernetes.io/service-name": "kube-dns"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.244.0.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.244.0.6"], "conditions": {"ready": false}},
                    {"addresses": ["10.244.0.7"]}
                ],
                "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"},
                          {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
            })),
            slice(serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "other", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "kube-dns"}},
                "endpoints": [{"addresses": ["10.244.9.9"]}],
                "ports": [{"name": "dns", "port": 53}]
            })),
        ];
        let specs = services(&svcs, &slices);
        assert_eq!(specs.len(), 1, "ExternalName Services have no ClusterIP");
        let dns = &specs[0];
        assert_eq!(dns.ips, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
        let backends: Vec<String> = dns
            .backends
            .iter()
            .flatten()
            .map(|b| b.ip.to_string())
            .collect();
        assert_eq!(
            backends,
            ["10.244.0.5", "10.244.0.7"],
            "not-ready endpoints and another namespace's slice are left out"
        );
        let inv = policy::Inventory::from_spec(policy::inventory::InventoryFile {
            services: specs,
            ..Default::default()
        })
        .unwrap();
        let frontends = &inv.services()[0].frontends;
        assert_eq!(frontends.len(), 2);
        let udp = frontends
            .iter()
            .find(|f| f.protocol == policy::model::ProtocolSpec::Udp)
            .unwrap();
        assert_eq!(
            udp.backends,
            [
                ("10.244.0.5".parse().unwrap(), 5353),
                ("10.244.0.7".parse().unwrap(), 5353)
            ],
            "the slice's port for that Service port's name"
        );
    }
}
