//! `clip2gan health [--ready]`: asks a running bot's or worker's endpoint
//! (`metrics.listen`) whether it is up (`/healthz`) or ready (`/readyz`),
//! and exits 0 only on 200. It is what a container's HEALTHCHECK runs, so
//! that the image needs no curl; the body (the conditions, for `--ready`)
//! is printed either way.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use clip2gan::config::Config;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Ask /readyz (models loaded, gateway connected, Redis answering)
    /// instead of /healthz (the process is up).
    #[arg(long)]
    pub ready: bool,
    /// The endpoint (default: metrics.listen, with 0.0.0.0 asked on
    /// 127.0.0.1).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
}

/// Longer than a Redis check may take (`health::PROBE_TIMEOUT`), shorter
/// than a HEALTHCHECK's own timeout.
const TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(cfg: &Config, args: HealthArgs) -> anyhow::Result<()> {
    if args.addr.is_none() && !cfg.metrics.enabled {
        bail!(
            "the endpoint is off in this configuration: the process to check needs \
             metrics.enabled = true (or CLIP2GAN_METRICS__ENABLED=true); or pass --addr HOST:PORT"
        );
    }
    let given = args.addr.as_deref().unwrap_or(&cfg.metrics.listen);
    let mut addr: SocketAddr = given.parse().with_context(|| {
        format!("\"{given}\" is not an address and port such as 127.0.0.1:9185")
    })?;
    // Listening on every interface includes loopback, the one always here.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let url = format!("http://{addr}{path}");
    match ureq::get(&url).timeout(TIMEOUT).call() {
        Ok(r) => {
            print!("{}", r.into_string().unwrap_or_default());
            Ok(())
        }
        Err(ureq::Error::Status(code, r)) => {
            print!("{}", r.into_string().unwrap_or_default());
            bail!("{url} answered {code}")
        }
        Err(e) => bail!(
            "cannot reach {url}: {e} (is clip2gan bot or worker running, with metrics.enabled = \
             true and metrics.listen = {given}?)"
        ),
    }
}
