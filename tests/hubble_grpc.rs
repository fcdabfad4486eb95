//! Hubble's Observer gRPC API against an agent running in-process: a
//! client generated from Hubble's own proto (the vendored `proto/`, tonic)
//! connects over the agent's `hubble.sock`, as `hubble observe --server
//! unix://...` would, and reads flows: the last N, filtered, followed.

use std::path::Path;
use std::time::{Duration, Instant};

use egress_bpf::{FakeDatapath, FakeMonitor, FlowEvent, FlowReason, FlowVerdict};
use futures::StreamExt;
use hickory_proto::op::ResponseCode;
use tollgate::agent::{self, Binds};
use tollgate::hubble_api::proto::flow::{self as pb, FlowFilter, Verdict};
use tollgate::hubble_api::proto::observer::observer_client::ObserverClient;
use tollgate::hubble_api::proto::observer::{
    get_flows_response::ResponseTypes, GetFlowsRequest, GetNodesRequest, ServerStatusRequest,
};

mod support;

use support::in_process::{ask, config, OneName, ENDPOINTS, POLICY};

fn denied(dst: &str, port: u16) -> FlowEvent {
    FlowEvent {
        time_ns: 1,
        ifindex: 7,
        direction: policy::Direction::Egress,
        protocol: 6,
        src: "10.0.1.10".parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport: 41000,
        dport: port,
        identity: 2,
        rule_id: 0,
        verdict: FlowVerdict::Denied,
        reason: FlowReason::DefaultDeny,
    }
}

async fn client(socket: &Path) -> ObserverClient<tonic::transport::Channel> {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connecting to hubble.sock");
    ObserverClient::new(channel)
}

async fn flows(
    c: &mut ObserverClient<tonic::transport::Channel>,
    req: GetFlowsRequest,
) -> Result<Vec<pb::Flow>, tonic::Status> {
    let mut stream = c.get_flows(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.next().await {
        if let Some(ResponseTypes::Flow(f)) = r?.response_types {
            out.push(f);
        }
    }
    Ok(out)
}

/// Waits (bounded) until the server keeps `n` flows.
async fn flows_kept(c: &mut ObserverClient<tonic::transport::Channel>, n: u64) {
    let start = Instant::now();
    loop {
        let status = c
            .server_status(ServerStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if status.num_flows >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{n} flows kept within 10 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubble_clients_read_flows_over_the_observer_api() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/payments.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("endpoints.yaml"), ENDPOINTS).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let config = config(dir);
    let socket = dir.join("state").join(tollgate::hubble_api::SOCKET);
    let dp = FakeDatapath::default();
    dp.monitor.set_interface("veth-payments", 7);
    let listener = tollgate::hubble_api::bind(&socket).unwrap();
    let agent = agent::build(
        config,
        dp,
        OneName,
        Binds {
            hubble: Some(listener),
            ..Binds::default()
        },
    )
    .await
    .expect("the agent builds on the fake datapath");
    let dns = agent.dns().clone();
    let monitor: FakeMonitor = agent.node().inspect(|dp, _| dp.monitor.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let mut c = client(&socket).await;

    let status = c
        .server_status(ServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.version.starts_with("tollgate"), "{status:?}");
    assert_eq!(status.max_flows, 4096);

    // The datapath's events are queued: this one is kept whenever the
    // event pump starts, and once it is, the pump hears the DNS proxy too
    // (whose events are not queued).
    monitor.push_event(denied("198.51.100.99", 80));
    flows_kept(&mut c, 1).await;
    assert_eq!(ask(&dns, "api.test.").await, ResponseCode::NoError);
    assert_eq!(ask(&dns, "evil.example.").await, ResponseCode::Refused);
    flows_kept(&mut c, 3).await;

    // The last flows, as `hubble observe --last 10`.
    let all = flows(
        &mut c,
        GetFlowsRequest {
            number: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(all.len(), 3, "{all:#?}");
    let denied_flow = all
        .iter()
        .find(|f| f.verdict == Verdict::Dropped as i32 && f.l7.is_none())
        .expect("the denied flow");
    assert_eq!(
        denied_flow.drop_reason_desc,
        pb::DropReason::PolicyDenied as i32
    );
    assert_eq!(
        denied_flow.ip.as_ref().unwrap().destination,
        "198.51.100.99"
    );
    let src = denied_flow.source.as_ref().unwrap();
    assert_eq!(
        (src.namespace.as_str(), src.pod_name.as_str()),
        ("prod", "payments")
    );
    assert!(
        src.labels.contains(&"k8s:app=payments".to_string()),
        "{src:?}"
    );
    assert!(denied_flow.time.is_some() && !denied_flow.node_name.is_empty());
    let refused = all
        .iter()
        .find(|f| f.l7.is_some() && f.verdict == Verdict::Dropped as i32)
        .expect("the refused query");
    match refused.l7.as_ref().unwrap().record.as_ref().unwrap() {
        pb::layer7::Record::Dns(d) => {
            assert_eq!(d.query, "evil.example.");
            assert_eq!(d.rcode, 5);
        }
        other => panic!("a DNS record: {other:?}"),
    }

    // Filters, as `hubble observe --verdict DROPPED` and `--pod prod/pay --protocol dns`.
    let dropped = flows(
        &mut c,
        GetFlowsRequest {
            number: 10,
            whitelist: vec![FlowFilter {
                verdict: vec![Verdict::Dropped as i32],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dropped.len(), 2, "{dropped:#?}");
    let dns_of_pod = flows(
        &mut c,
        GetFlowsRequest {
            number: 10,
            whitelist: vec![FlowFilter {
                source_pod: vec!["prod/pay".into()],
                protocol: vec!["dns".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dns_of_pod.len(), 2, "both queries: {dns_of_pod:#?}");
    let not_dns = flows(
        &mut c,
        GetFlowsRequest {
            number: 10,
            blacklist: vec![FlowFilter {
                protocol: vec!["dns".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(not_dns.len(), 1, "{not_dns:#?}");

    // A filter Tollgate cannot apply is refused, naming the field.
    let err = flows(
        &mut c,
        GetFlowsRequest {
            number: 10,
            whitelist: vec![FlowFilter {
                source_label: vec!["app=x".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("source_label"), "{err:?}");

    // Follow: a flow that happens after the request arrives.
    let mut live = c
        .get_flows(GetFlowsRequest {
            follow: true,
            whitelist: vec![FlowFilter {
                destination_ip: vec!["203.0.113.0/24".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let pusher = monitor.clone();
    let push = tokio::spawn(async move {
        // Until the subscriber is certainly there.
        for _ in 0..50 {
            pusher.push_event(denied("203.0.113.77", 8080));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let next = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .expect("a followed flow within 10 s")
        .unwrap()
        .unwrap();
    push.abort();
    let Some(ResponseTypes::Flow(f)) = next.response_types else {
        panic!("{next:?}")
    };
    assert_eq!(f.ip.unwrap().destination, "203.0.113.77");

    // The rest of the API is not served, and says so.
    let err = c.get_nodes(GetNodesRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    drop(c);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
