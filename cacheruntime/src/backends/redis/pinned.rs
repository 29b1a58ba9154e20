//! TLS to one Redis whose certificate no CA vouches for (Heroku's
//! self-signed ones): pinned by the SHA-256 of its leaf certificate, or,
//! with `tls_insecure`, not checked at all.
//!
//! redis-rs 1.8 takes no certificate verifier of ours (its `TlsCertificates`
//! only adds roots, and its `#insecure` switch turns off the handshake
//! signature check too), so this module makes the TLS connection itself
//! (tokio-rustls with [`Pinned`] as the verifier) and hands the stream to
//! redis-rs's `MultiplexedConnection`, which then authenticates and selects
//! the database from the URL as usual. A connection is made on first use
//! and made again on the next call after it closed, as Cluster's are.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::Error;

/// What is accepted of the server's certificate.
#[derive(Debug, Clone, Copy)]
pub(super) enum Trust {
    /// Exactly the certificate with this SHA-256 (of its DER).
    Pin([u8; 32]),
    /// Anything (the handshake signature is still checked against it).
    Insecure,
}

/// The verifier: the chain and name checks are replaced by the pin; the
/// signatures of the handshake are checked as rustls's own verifier does,
/// so the server must hold the pinned certificate's key.
#[derive(Debug)]
struct Pinned {
    trust: Trust,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Why a certificate was refused, as rustls carries it (and prints it,
/// with `Debug`: both say the same sentence).
struct PinMismatch(String);

impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate has SHA-256 {}, not the one `tls_pin_sha256` names",
            self.0
        )
    }
}

impl std::error::Error for PinMismatch {}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.trust {
            Trust::Insecure => Ok(ServerCertVerified::assertion()),
            Trust::Pin(pin) => {
                let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
                if seen == pin {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch(
                            hex(&seen),
                        )))),
                    ))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// One server reached over our own TLS.
pub(super) struct PinnedConn {
    info: ConnectionInfo,
    host: String,
    port: u16,
    tls: tokio_rustls::TlsConnector,
    trust: Trust,
    label: String,
    timeout: Duration,
    current: Mutex<Option<(MultiplexedConnection, tokio::task::JoinHandle<()>)>>,
}

impl PinnedConn {
    /// Reads the URL and the client certificate (PEM), connecting nowhere.
    pub(super) fn new(
        url: &str,
        trust: Trust,
        client_cert: Option<(Vec<u8>, Vec<u8>)>,
        label: String,
        timeout: Duration,
        bad_url: impl Fn(RedisError) -> Error,
    ) -> Result<PinnedConn, Error> {
        let info = url.into_connection_info().map_err(bad_url)?;
        let (host, port) = match info.addr() {
            ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
            _ => {
                return Err(Error::Config(
                    "`tls_pin_sha256` and `tls_insecure` are TLS settings: use `rediss://`".into(),
                ))
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(Pinned {
            trust,
            algorithms: provider.signature_verification_algorithms,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("Redis TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match client_cert {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(&cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        Error::Config(format!("cannot read the Redis client certificate: {e}"))
                    })?;
                let key = PrivateKeyDer::from_pem_slice(&key)
                    .map_err(|_| Error::Config("cannot read the Redis client key".into()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Config(format!("Redis client certificate: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(PinnedConn {
            info,
            host,
            port,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            trust,
            label,
            timeout,
            current: Mutex::new(None),
        })
    }

    /// The open connection, or a new one if there is none or it closed.
    pub(super) async fn get(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut current = self.current.lock().await;
        if let Some((conn, driver)) = current.as_ref() {
            if !driver.is_finished() {
                return Ok(conn.clone());
            }
        }
        *current = None;
        let conn = tokio::time::timeout(self.timeout, self.connect())
            .await
            .map_err(|_| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to Redis timed out",
                ))
            })??;
        let made = conn.0.clone();
        *current = Some(conn);
        Ok(made)
    }

    async fn connect(
        &self,
    ) -> Result<(MultiplexedConnection, tokio::task::JoinHandle<()>), RedisError> {
        if let Trust::Insecure = self.trust {
            tracing::warn!(
                url = %self.label,
                "Redis TLS certificate not verified (`tls_insecure`): anyone on the network path \
                 can intercept this connection, read and change the cache and see its password; \
                 pin the server's certificate with `tls_pin_sha256` instead"
            );
        }
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| {
            RedisError::from(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let stream = self.tls.connect(name, tcp).await?;
        let (conn, driver) = MultiplexedConnection::new_with_config(
            self.info.redis_settings(),
            stream,
            redis::AsyncConnectionConfig::new(),
        )
        .await?;
        Ok((conn, tokio::spawn(driver)))
    }
}
