//! How deliveries reach subscribers: one HTTP client with rustls (certificate verification on;
//! the built-in public roots plus an optional PEM file of private CAs), no proxy (a proxy would
//! resolve names where this check cannot see), no redirects, and a DNS resolver that drops every
//! address the destination policy refuses. The filter runs after resolution, on the addresses
//! the connection will actually use, so a name that resolves to a public address at
//! subscription and to 127.0.0.1 later (DNS rebinding) still cannot reach the host. IP-literal
//! URLs never reach a resolver: [`refusal`] judges them before each request.

use crate::domain::destination::DestinationPolicy;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// All a subscriber's `last_error` says about a refused destination: which range, or which
/// address a name resolved to, stays in the service.
pub const REFUSED: &str = "destination not allowed";

/// The resolver's answer when every address of a name is refused.
#[derive(Debug)]
pub struct DestinationRefused;

impl std::fmt::Display for DestinationRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REFUSED)
    }
}

impl std::error::Error for DestinationRefused {}

struct FilteringResolver {
    policy: Arc<DestinationPolicy>,
}

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.refuses(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                tracing::warn!(host = %host, addresses = ?found, "webhook destination refused after DNS resolution");
                return Err(
                    Box::new(DestinationRefused) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The delivery client. Fails (naming the file) when the CA file cannot be read or holds no
/// certificate.
pub fn client(
    timeout: Duration,
    policy: Arc<DestinationPolicy>,
    ca_file: Option<&Path>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(!policy.allow_http)
        .dns_resolver(Arc::new(FilteringResolver { policy }));
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("webhook_ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("webhook_ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "webhook_ca_file {}: no PEM certificate in it",
                path.display()
            ));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| format!("webhook client: {e}"))
}

/// Whether a delivery to `url` is refused before any connection: plain `http://` when not
/// allowed, or a host that is a refused IP literal (names go through the resolver).
pub fn refusal(url: &str, policy: &DestinationPolicy) -> Option<&'static str> {
    let Ok(url) = reqwest::Url::parse(url) else {
        return Some(REFUSED);
    };
    let https = url.scheme() == "https";
    if !(https || (url.scheme() == "http" && policy.allow_http)) {
        return Some(REFUSED);
    }
    match url.host_str() {
        Some(host) if policy.refuses_host(host).is_none() => None,
        _ => Some(REFUSED),
    }
}

/// Whether a failed request failed because the resolver refused every address.
pub fn was_refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<DestinationRefused>() {
            return true;
        }
        source = err.source();
    }
    false
}
