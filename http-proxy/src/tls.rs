//! Connections on ports with `serverNames`: read the client's TLS
//! ClientHello (without answering it), check its server name against every
//! side's names, then connect to the original destination, send it the
//! bytes read so far and relay both ways. Nothing is decrypted.
//!
//! Fails closed: no complete ClientHello within
//! [`crate::ProxyConfig::hello_timeout`], bytes that are not TLS, a
//! malformed or oversized hello, no server name, or a name some side does
//! not allow — the client's connection is reset, the destination never
//! sees a byte, and a `DENIED` event names what was sent.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sni::{peek_client_hello, Hello, MAX_CLIENT_HELLO_BYTES};
use crate::{HttpEvent, HttpPolicy, HttpProxy, HttpVerdict, Parties, ServerNameSet};

/// The method events carry for TLS connections (their `host` is the SNI).
pub const TLS_METHOD: &str = "TLS";

/// The outcome of checking a server name against the sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniCheck {
    /// Every set allows it; the label of the last one.
    Allowed { rule: Option<String> },
    /// This set has no matching name.
    Denied { set: String },
}

/// A server name must be allowed by every set (the source's egress and the
/// destination's ingress names). No sets: allowed.
pub fn check_server_name(sets: &[ServerNameSet], sni: &str) -> SniCheck {
    let mut rule = None;
    for set in sets {
        match set.names.iter().find(|n| n.matches(sni)) {
            Some(name) => rule = Some(format!("{} serverNames {name}", set.label)),
            None => {
                return SniCheck::Denied {
                    set: set.label.clone(),
                }
            }
        }
    }
    SniCheck::Allowed { rule }
}

/// Reads until the bytes are a complete ClientHello (or cannot become
/// one), within the proxy's hello timeout. Returns the bytes read and the
/// outcome; on end of stream or timeout the outcome says why.
pub async fn read_client_hello(
    stream: &mut TcpStream,
    timeout: std::time::Duration,
) -> (Vec<u8>, Result<String, String>) {
    let mut buf = Vec::with_capacity(1024);
    let outcome = tokio::time::timeout(timeout, async {
        let mut until = 1;
        loop {
            if buf.len() >= until {
                match peek_client_hello(&buf) {
                    Hello::NeedMore(more) => until = more,
                    Hello::ServerName(name) => return Ok(name),
                    refused => return Err(refused.refusal().unwrap_or_default()),
                }
            }
            // Read what is there, never beyond the cap (the peek never asks
            // for more than it; at least 1, as an empty read means EOF).
            let room = MAX_CLIENT_HELLO_BYTES.saturating_sub(buf.len()).max(1);
            let mut chunk = vec![0u8; room.min(16 * 1024)];
            match stream.read(&mut chunk).await {
                Ok(0) => {
                    return Err("the client closed before its TLS ClientHello was complete".into())
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading the TLS ClientHello: {e}")),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "no complete TLS ClientHello within {} s",
            timeout.as_secs_f32()
        ))
    });
    (buf, outcome)
}

/// Serves one connection on a `serverNames` port.
pub(crate) async fn serve_tls<P: HttpPolicy>(
    proxy: Arc<HttpProxy<P>>,
    mut stream: TcpStream,
    parties: Arc<Parties>,
    sets: Vec<ServerNameSet>,
) {
    let event = |verdict, host: Option<String>, rule: Option<String>| HttpEvent {
        parties: parties.clone(),
        method: Some(crate::Method::from_bytes(TLS_METHOD.as_bytes()).expect("a method token")),
        path: String::new(),
        host,
        verdict,
        status: 0,
        rule,
        header_edits: Vec::new(),
    };
    let deny = |host: Option<String>, why: String| {
        proxy.metrics.tls_denied.fetch_add(1, Ordering::Relaxed);
        proxy.emit(event(HttpVerdict::Denied, host, Some(why)));
    };
    let (hello, outcome) = read_client_hello(&mut stream, proxy.config.hello_timeout).await;
    let sni = match outcome {
        Ok(sni) => sni,
        Err(why) => {
            deny(None, why);
            reset(stream);
            return;
        }
    };
    let rule = match check_server_name(&sets, &sni) {
        SniCheck::Allowed { rule } => rule,
        SniCheck::Denied { set } => {
            deny(
                Some(sni.clone()),
                format!("server name {sni:?} not in the serverNames of {set}"),
            );
            reset(stream);
            return;
        }
    };
    let mut upstream = match crate::server::dial(&proxy.config, parties.client, parties.server)
        .await
    {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::debug!(client = %parties.client, server = %parties.server, "upstream: {e}");
            proxy
                .metrics
                .upstream_errors
                .fetch_add(1, Ordering::Relaxed);
            proxy.emit(event(HttpVerdict::Error, Some(sni), rule));
            reset(stream);
            return;
        }
    };
    proxy.metrics.tls_allowed.fetch_add(1, Ordering::Relaxed);
    proxy.emit(event(HttpVerdict::Allowed, Some(sni), rule));
    // The destination gets exactly what the client sent, hello first.
    if let Err(e) = upstream.write_all(&hello).await {
        tracing::debug!(client = %parties.client, server = %parties.server, "upstream: {e}");
        reset(stream);
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
        tracing::debug!(client = %parties.client, server = %parties.server, "TLS relay ended: {e}");
    }
}

/// Closes with a reset, not a FIN: the client sees the connection refused
/// rather than an empty reply.
fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::sni::ServerName;

    fn set(label: &str, names: &[&str]) -> ServerNameSet {
        ServerNameSet {
            label: label.into(),
            names: names
                .iter()
                .map(|n| ServerName::parse(n).unwrap())
                .collect(),
        }
    }

    #[test]
    fn every_side_must_allow_the_name() {
        let sets = [
            set("egress", &["api.test", "*.cdn.test"]),
            set("ingress", &["api.test"]),
        ];
        assert_eq!(
            check_server_name(&sets, "API.test"),
            SniCheck::Allowed {
                rule: Some("ingress serverNames api.test".into())
            }
        );
        assert_eq!(
            check_server_name(&sets, "a.cdn.test"),
            SniCheck::Denied {
                set: "ingress".into()
            }
        );
        assert_eq!(
            check_server_name(&sets, "evil.test"),
            SniCheck::Denied {
                set: "egress".into()
            }
        );
        assert_eq!(
            check_server_name(&[], "any.test"),
            SniCheck::Allowed { rule: None }
        );
    }
}
