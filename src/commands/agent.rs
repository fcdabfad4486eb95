//! `tollgate agent` and `tollgate observe`.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use dns_proxy::DenyResponse;
use policy::ResolveOptions;
use tollgate::agent::{self, AgentConfig, Source};
use tollgate::events::FlowLine;

use crate::cli::{AgentArgs, DenyCode, ObserveArgs, ObserveOutput};

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = AgentConfig {
        source: match (args.policies, args.endpoints, args.node_name) {
            (Some(policies), Some(endpoints), _) => Source::Files {
                policies,
                endpoints,
            },
            (_, _, Some(node)) if args.kubernetes => Source::Kube {
                kubeconfig: args.kubeconfig,
                node,
            },
            // clap's argument groups make this unreachable; say so plainly anyway.
            _ => anyhow::bail!("give --policies and --endpoints, or --kubernetes and --node-name"),
        },
        state_dir: args.state_dir,
        pin_dir: args.pin_dir,
        dns_port: args.dns_port,
        http_port: args.http_port,
        metrics_addr: args.metrics_addr,
        cache: fqdn_cache::Config {
            min_ttl: args.min_ttl,
            ttl_floor: args.ttl_floor,
            max_ips_per_name: args.max_ips_per_name,
            max_names_per_endpoint: args.max_names_per_pod,
            zombie_grace: args.zombie_grace,
            ..fqdn_cache::Config::default()
        },
        deny_response: match args.deny_response {
            DenyCode::Refused => DenyResponse::Refused,
            DenyCode::Nxdomain => DenyResponse::NxDomain,
        },
        dns_cache_entries: args.dns_cache_entries,
        dns_workers: args.dns_workers,
        http_workers: args.http_workers,
        limits: agent::Limits {
            dns_in_flight_per_pod: args.max_dns_in_flight_per_pod,
            dns_in_flight: args.max_dns_in_flight,
            dns_queries_per_second_per_pod: args.max_dns_qps_per_pod,
            new_names_per_second: args.new_names_per_second,
            new_names_burst: args.new_names_burst,
        },
        cluster_name: args.cluster_name,
        resolve: ResolveOptions {
            allow_host_to_local: !args.no_allow_host_to_local,
            audit: args.audit,
        },
        reload_interval: Duration::from_millis(500),
        gc_interval: Duration::from_secs(1),
        uninstall_on_exit: args.uninstall_on_exit,
        own_pod: match (args.pod_namespace, args.pod_name) {
            (Some(namespace), Some(name)) => Some(agent::OwnPod { namespace, name }),
            _ => None,
        },
        handover_wait: Duration::from_secs(args.handover_wait),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
        };
        agent::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn observe(args: ObserveArgs) -> anyhow::Result<ExitCode> {
    let path = args.state_dir.join("events.sock");
    let stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to the agent's events at {} (is `tollgate agent` running?)",
            path.display()
        )
    })?;
    let node_name = args.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    });
    let mut shown = 0;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let Ok(event) = serde_json::from_str::<FlowLine>(&line) else {
            // A note about lost events: Hubble has a message for it.
            if args.output == ObserveOutput::HubbleJson {
                if let Some(lost) = serde_json::from_str(&line)
                    .ok()
                    .and_then(|v| tollgate::hubble::response(&v, &node_name))
                {
                    println!("{lost}");
                }
            }
            continue;
        };
        if let Some(pod) = &args.pod {
            let matches = event
                .pod
                .as_deref()
                .is_some_and(|p| p == pod || p.rsplit('/').next() == Some(pod.as_str()));
            if !matches {
                continue;
            }
        }
        if let Some(v) = &args.verdict {
            if !event.verdict.eq_ignore_ascii_case(v) {
                continue;
            }
        }
        match args.output {
            ObserveOutput::Json => println!("{line}"),
            ObserveOutput::Text => println!("{}", event.text()),
            ObserveOutput::HubbleJson => {
                println!("{}", tollgate::hubble::flow_response(&event, &node_name))
            }
        }
        shown += 1;
        if args.count.is_some_and(|c| shown >= c) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
