//! One module per command group.

use std::process::ExitCode;

use crate::cli::{Cli, Command, DatapathCommand, FqdnCommand, PolicyCommand};

mod agent;
mod datapath;
mod explain;
mod fqdn;
mod healthz;
mod policy;
mod status;
mod suggest;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy(PolicyCommand::Check { paths }) => Ok(policy::check(&paths)),
        Command::Policy(PolicyCommand::Explain {
            policies,
            endpoints,
            from,
            to,
            port,
            audit,
            no_allow_host_to_local,
            cluster_name,
            output,
        }) => explain::run(&explain::Request {
            cluster_name: &cluster_name,
            policies: &policies,
            endpoints: &endpoints,
            from: &from,
            to: &to,
            port: &port,
            options: policy::ResolveOptions {
                allow_host_to_local: !no_allow_host_to_local,
                audit,
            },
            output,
        }),
        Command::Policy(PolicyCommand::Suggest {
            events,
            from_agent,
            duration,
            state_dir,
            since,
            until,
            output,
        }) => suggest::run(&suggest::Request {
            events: &events,
            agent: from_agent.then(|| {
                (
                    state_dir,
                    std::time::Duration::from_secs(duration.unwrap_or(0)),
                )
            }),
            since: since.as_deref(),
            until: until.as_deref(),
            output: output.as_deref(),
        }),
        Command::Fqdn(FqdnCommand::Match { pattern, name }) => Ok(fqdn::matches(&pattern, &name)),
        Command::Datapath(DatapathCommand::Uninstall { pin_dir }) => datapath::uninstall(&pin_dir),
        Command::Datapath(DatapathCommand::Status { pin_dir }) => datapath::status(&pin_dir),
        Command::Agent(args) => agent::run(args),
        Command::Observe(args) => agent::observe(args),
        Command::Status(args) => status::run(&args),
        Command::Healthz(args) => healthz::run(&args),
    }
}
