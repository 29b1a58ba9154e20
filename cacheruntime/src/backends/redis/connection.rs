//! Connections to Redis, made on first use so that building the backend
//! does no I/O: one server through redis-rs's `ConnectionManager`, which
//! reconnects in the background, or a Cluster connection, made again on
//! the next call after a failure; a server pinned by its certificate (or
//! reached with `tls_insecure`) over our own TLS (`pinned.rs`).

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisError, RedisFuture, Value};

use super::config::{parse_pin, refuse_trust, RedisConfig};
use super::pinned::{PinnedConn, Trust};
use crate::Error;

/// The client of one backend: one server's, or a Cluster's.
pub(super) enum Conn {
    Single(Box<SingleConn>),
    Cluster(Box<ClusterConn>),
    Pinned(Box<PinnedConn>),
}

/// The manager is made on first use: redis-rs spawns its reconnect task
/// then, so building the backend needs no runtime.
pub(super) struct SingleConn {
    client: redis::Client,
    config: ConnectionManagerConfig,
    manager: std::sync::OnceLock<ConnectionManager>,
}

pub(super) struct ClusterConn {
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
    /// A client per configured node, to find the masters from
    /// (`cluster_push.rs`).
    seeds: Vec<redis::Client>,
}

/// Where a near tier can follow change notices from (`push.rs`).
#[derive(Clone)]
pub(super) enum Notices {
    /// One server: its client.
    One(Box<redis::Client>),
    /// A Cluster: a client per configured node, to find every master.
    Cluster(Vec<redis::Client>),
}

/// A connection of either kind, for commands and scripts.
#[derive(Clone)]
pub(super) enum AnyConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Pinned(MultiplexedConnection),
}

impl ConnectionLike for AnyConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AnyConn::Single(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
            AnyConn::Pinned(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Pinned(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Single(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
            AnyConn::Pinned(c) => c.get_db(),
        }
    }
}

fn read_pem(path: &PathBuf, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the Redis {what} file {}: {e}",
            path.display()
        ))
    })
}

impl Conn {
    /// The clients for `config`, reading its certificate files now but
    /// connecting nowhere. `bad_url` says why redis-rs refused a URL.
    pub(super) fn new(
        config: &RedisConfig,
        label: &str,
        bad_url: impl Fn(RedisError) -> Error,
    ) -> Result<Conn, Error> {
        if let Some(trust) = trust_of(config)? {
            let client_cert = match &config.client_cert {
                Some((cert, key)) => Some((
                    read_pem(cert, "client certificate")?,
                    read_pem(key, "client key")?,
                )),
                None => None,
            };
            return Ok(Conn::Pinned(Box::new(PinnedConn::new(
                &config.nodes[0],
                trust,
                client_cert,
                label.to_owned(),
                config.connect_timeout,
                bad_url,
            )?)));
        }
        let certs = if config.ca_file.is_some() || config.client_cert.is_some() {
            let root_cert = config
                .ca_file
                .as_ref()
                .map(|p| read_pem(p, "CA"))
                .transpose()?;
            let client_tls = match &config.client_cert {
                Some((cert, key)) => Some(redis::ClientTlsConfig {
                    client_cert: read_pem(cert, "client certificate")?,
                    client_key: read_pem(key, "client key")?,
                }),
                None => None,
            };
            Some(redis::TlsCertificates {
                client_tls,
                root_cert,
            })
        } else {
            None
        };
        Ok(if config.cluster {
            let mut builder = ClusterClient::builder(config.nodes.clone())
                .connection_timeout(config.connect_timeout)
                .retries(1);
            if let Some(certs) = &certs {
                builder = builder.certs(certs.clone());
            }
            let client = builder.build().map_err(&bad_url)?;
            let seeds = config
                .nodes
                .iter()
                .map(|url| match &certs {
                    Some(certs) => redis::Client::build_with_tls(url.as_str(), certs.clone()),
                    None => redis::Client::open(url.as_str()),
                })
                .collect::<Result<_, _>>()
                .map_err(bad_url)?;
            Conn::Cluster(Box::new(ClusterConn {
                client,
                conn: tokio::sync::OnceCell::new(),
                seeds,
            }))
        } else {
            let url = config.nodes[0].as_str();
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(url, certs),
                None => redis::Client::open(url),
            }
            .map_err(bad_url)?;
            Conn::Single(Box::new(SingleConn {
                client,
                config: ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1)),
                manager: std::sync::OnceLock::new(),
            }))
        })
    }

    /// Where change notices can be followed from (`push.rs`): one server,
    /// or every master of a Cluster (`cluster_push.rs`). Not our own
    /// pinned TLS, which redis-rs cannot subscribe over (a near tier then
    /// polls).
    pub(super) fn notices(&self) -> Option<Notices> {
        match self {
            Conn::Single(single) => Some(Notices::One(Box::new(single.client.clone()))),
            Conn::Cluster(cluster) => Some(Notices::Cluster(cluster.seeds.clone())),
            Conn::Pinned(_) => None,
        }
    }

    /// A connection, made now if none is.
    pub(super) async fn get(&self) -> Result<AnyConn, RedisError> {
        let conn = match self {
            Conn::Single(single) => {
                let manager = match single.manager.get() {
                    Some(m) => m.clone(),
                    None => {
                        let made = single
                            .client
                            .get_connection_manager_lazy(single.config.clone())?;
                        single.manager.get_or_init(|| made).clone()
                    }
                };
                AnyConn::Single(manager)
            }
            Conn::Cluster(cluster) => AnyConn::Cluster(
                cluster
                    .conn
                    .get_or_try_init(|| cluster.client.get_async_connection())
                    .await?
                    .clone(),
            ),
            Conn::Pinned(pinned) => AnyConn::Pinned(pinned.get().await?),
        };
        Ok(conn)
    }
}

/// The pin or insecure switch of `config`, checked: `None` for the usual
/// CA checks.
fn trust_of(config: &RedisConfig) -> Result<Option<Trust>, Error> {
    let tls = config.nodes.iter().all(|n| n.starts_with("rediss://"));
    if let Some(why) = refuse_trust(
        tls,
        config.cluster,
        config.tls_pin_sha256.is_some(),
        config.tls_insecure,
        config.ca_file.is_some(),
    ) {
        return Err(Error::Config(why.into()));
    }
    Ok(match &config.tls_pin_sha256 {
        Some(pin) => Some(Trust::Pin(parse_pin(pin).map_err(Error::Config)?)),
        None if config.tls_insecure => Some(Trust::Insecure),
        None => None,
    })
}
