//! Who the members are: a static list, the addresses a DNS name resolves to (a headless
//! Service), or the keys under a prefix in etcd, each held by its node's lease.
//!
//! Membership only feeds [`Cluster::set_members`]; whether a member answers is the readers' and
//! the health checks' business. When etcd or DNS cannot be reached, the last known members stay:
//! an outage of the membership service must not reshuffle the ring.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    WatchOptions,
};
use tokio::sync::watch;

use crate::Cluster;

/// Where the member list comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// A fixed list (`--peers`).
    Static(Vec<String>),
    /// `dns://NAME:PORT`: every address the name resolves to, at PORT, re-resolved periodically.
    Dns {
        /// The name.
        name: String,
        /// The peer port.
        port: u16,
    },
    /// `etcd://HOST:PORT[,HOST:PORT]/PREFIX`: members register under PREFIX with a lease.
    Etcd {
        /// `http://HOST:PORT` of each endpoint.
        endpoints: Vec<String>,
        /// Key prefix, starting with `/`, without a trailing `/`.
        prefix: String,
    },
}

/// A membership spec that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--membership {spec:?}: {why} (expected dns://NAME:PORT or etcd://HOST:PORT[,HOST:PORT]/PREFIX)")]
pub struct MembershipError {
    spec: String,
    why: String,
}

fn host_port(spec: &str, s: &str) -> Result<(String, u16), MembershipError> {
    let err = |why: &str| MembershipError {
        spec: spec.into(),
        why: why.into(),
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
    let port: u16 = port.parse().map_err(|_| err("bad port"))?;
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c))
    {
        return Err(err("bad host name"));
    }
    Ok((host.to_string(), port))
}

impl Membership {
    /// Parses `dns://…` or `etcd://…`.
    pub fn parse(spec: &str) -> Result<Membership, MembershipError> {
        let err = |why: &str| MembershipError {
            spec: spec.into(),
            why: why.into(),
        };
        if let Some(rest) = spec.strip_prefix("dns://") {
            let (name, port) = host_port(spec, rest)?;
            return Ok(Membership::Dns { name, port });
        }
        if let Some(rest) = spec.strip_prefix("etcd://") {
            let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, "locus"));
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty()
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
                || prefix
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(err("bad key prefix"));
            }
            let endpoints = hosts
                .split(',')
                .map(|h| host_port(spec, h).map(|(h, p)| format!("http://{h}:{p}")))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Membership::Etcd {
                endpoints,
                prefix: format!("/{prefix}"),
            });
        }
        Err(err("unknown scheme"))
    }
}

/// How membership is kept.
#[derive(Clone, Debug)]
pub struct MembershipOptions {
    /// etcd lease time to live: a node that stops renewing leaves after this long.
    pub lease_ttl: Duration,
    /// How often a DNS name is resolved again.
    pub dns_interval: Duration,
    /// How this node proves itself to etcd, and knows it talks to the real one.
    pub etcd: EtcdSecurity,
}

impl Default for MembershipOptions {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(10),
            dns_interval: Duration::from_secs(5),
            etcd: EtcdSecurity::default(),
        }
    }
}

/// TLS and credentials for etcd. Whoever can write under the prefix decides whom the nodes
/// send peer requests (and their peer token) to, so a store reachable by others must check
/// who writes: client certificates or user and password, over TLS.
#[derive(Clone, Debug, Default)]
pub struct EtcdSecurity {
    /// PEM CA that signs the etcd servers' certificates: TLS (`https://`) to every endpoint.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key (etcd's `--client-cert-auth`).
    pub identity: Option<(Vec<u8>, locus_core::Secret)>,
    /// User and password (etcd's `auth enable`).
    pub user: Option<(String, locus_core::Secret)>,
}

impl EtcdSecurity {
    /// Whether the store is reached over TLS with credentials of this node's own.
    pub fn authenticated(&self) -> bool {
        self.ca_pem.is_some() && (self.identity.is_some() || self.user.is_some())
    }

    fn connect_options(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        if let Some(ca) = &self.ca_pem {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key.expose()));
            }
            o = o.with_tls(tls);
        }
        if let Some((user, password)) = &self.user {
            // A session outlives etcd's auth token (5 minutes by default): renew it.
            o = o
                .with_user(user.clone(), password.expose().to_string())
                .with_auto_token_refresh(true);
        }
        o
    }

    /// `endpoints` (`http://…`) with the scheme TLS needs.
    fn endpoints(&self, endpoints: &[String]) -> Vec<String> {
        endpoints
            .iter()
            .map(|e| match (&self.ca_pem, e.strip_prefix("http://")) {
                (Some(_), Some(rest)) => format!("https://{rest}"),
                _ => e.clone(),
            })
            .collect()
    }
}

impl Membership {
    /// Whether every etcd endpoint is on this host (loopback): only then may the store go
    /// without TLS and credentials.
    pub fn etcd_is_local(&self) -> bool {
        match self {
            Membership::Etcd { endpoints, .. } => endpoints.iter().all(|e| {
                let host = e
                    .trim_start_matches("http://")
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']'))
                    .unwrap_or("");
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }),
            _ => true,
        }
    }
}

/// Keeps `cluster`'s members current until `stop` turns true; an etcd member revokes its lease
/// on the way out, so that the others drop it at once.
pub async fn run(
    spec: Membership,
    cluster: Arc<Cluster>,
    opts: MembershipOptions,
    mut stop: watch::Receiver<bool>,
) {
    match spec {
        Membership::Static(peers) => cluster.set_members(peers),
        Membership::Dns { name, port } => {
            let mut tick = tokio::time::interval(opts.dns_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped(&mut stop) => return,
                }
                match tokio::net::lookup_host((name.as_str(), port)).await {
                    Ok(addrs) => {
                        let set: BTreeSet<String> = addrs.map(|a| a.to_string()).collect();
                        if !set.is_empty() {
                            cluster.set_members(set);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(name, error = %e, "membership: DNS lookup failed; keeping the last members")
                    }
                }
            }
        }
        Membership::Etcd { endpoints, prefix } => {
            let mut backoff = Duration::from_millis(200);
            loop {
                let session = etcd_session(&endpoints, &prefix, &cluster, &opts, stop.clone());
                match session.await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(?endpoints, error = %e, ?backoff, "membership: etcd session ended; keeping the last members and trying again");
                        metrics::counter!(locus_core::metric::MEMBERSHIP_ERRORS).increment(1);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut stop) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// One registration: lease, key, initial list, then keep-alives and watch events.
async fn etcd_session(
    endpoints: &[String],
    prefix: &str,
    cluster: &Cluster,
    opts: &MembershipOptions,
    mut stop: watch::Receiver<bool>,
) -> Result<(), etcd_client::Error> {
    let ttl = opts.lease_ttl.as_secs().max(2);
    let mut client = Client::connect(
        opts.etcd.endpoints(endpoints),
        Some(opts.etcd.connect_options()),
    )
    .await?;
    let lease = client.lease_grant(ttl as i64, None).await?.id();
    let dir = format!("{prefix}/members/");
    let me = cluster.me().to_string();
    client
        .put(
            format!("{dir}{me}"),
            me.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    let (mut keeper, mut alive) = client.lease_keep_alive(lease).await?;
    let listed = client
        .get(dir.clone(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut members: BTreeSet<String> = listed
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&dir).map(str::to_string))
        .collect();
    cluster.set_members(members.clone());
    tracing::info!(
        prefix,
        lease,
        ttl,
        members = members.len(),
        "membership: registered in etcd"
    );
    let from = listed.header().map(|h| h.revision() + 1).unwrap_or(0);
    let mut watch = client
        .watch(
            dir.clone(),
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await?;
    let mut tick = tokio::time::interval(Duration::from_secs((ttl / 3).max(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                keeper.keep_alive().await?;
                match alive.message().await? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Err(etcd_client::Error::LeaseKeepAliveError("lease expired".into())),
                }
            }
            msg = watch.message() => {
                let Some(resp) = msg? else {
                    return Err(etcd_client::Error::WatchError("watch ended".into()));
                };
                if resp.canceled() {
                    return Err(etcd_client::Error::WatchError("watch canceled".into()));
                }
                for ev in resp.events() {
                    let Some(addr) = ev.kv().and_then(|kv| kv.key_str().ok()).and_then(|k| k.strip_prefix(&dir)) else {
                        continue;
                    };
                    match ev.event_type() {
                        EventType::Put => members.insert(addr.to_string()),
                        EventType::Delete => members.remove(addr),
                    };
                }
                cluster.set_members(members.clone());
            }
            _ = stopped(&mut stop) => {
                let _ = client.lease_revoke(lease).await;
                tracing::info!("membership: left etcd");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            Membership::parse("dns://locus-peers.default.svc:7070").unwrap(),
            Membership::Dns {
                name: "locus-peers.default.svc".into(),
                port: 7070
            }
        );
        assert_eq!(
            Membership::parse("etcd://10.0.0.1:2379,10.0.0.2:2379/prod/locus").unwrap(),
            Membership::Etcd {
                endpoints: vec!["http://10.0.0.1:2379".into(), "http://10.0.0.2:2379".into()],
                prefix: "/prod/locus".into()
            }
        );
        for bad in [
            "zk://x:1",
            "dns://x",
            "dns://x:99999",
            "etcd://:2379/p",
            "etcd://h:1/../x",
            "etcd://h:1/ /",
            "etcd://h x:1/p",
        ] {
            assert!(Membership::parse(bad).is_err(), "{bad}");
        }
    }
}
