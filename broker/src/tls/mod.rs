//! TLS for the network front: rustls with the *ring* crypto provider.
//!
//! Owns: turning the configured PEM files (`tls_cert`, `tls_key`) into
//! rustls server configurations ([`TlsAcceptors`]), the server side of one
//! handshake with its deadline ([`handshake`]), and [`TlsListener`], the
//! HTTPS listener that axum serves.
//! Must not: accept MQTT connections (the broker's accept loops, above
//! this module, do, and run each handshake inside that connection's own task), know MQTT
//! or HTTP, or install a process-wide crypto provider (the provider is given
//! to every configuration explicitly).
//!
//! Layout:
//! - this file: loading certificates and keys, building configurations, the handshake.
//! - [`listener`]: [`TlsListener`], handshakes in their own tasks for axum.

mod listener;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::error::BrokerError;

pub use listener::TlsListener;

/// A TCP connection after a completed server-side TLS handshake.
pub type ServerTlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The ALPN protocol the HTTPS API announces.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The handshake settings of every TLS listener, built once at start.
#[derive(Clone)]
pub struct TlsAcceptors {
    /// MQTT over TLS and MQTT over secure WebSocket (no ALPN).
    pub mqtt: TlsAcceptor,
    /// The HTTPS API (ALPN `http/1.1`).
    pub https: TlsAcceptor,
}

impl TlsAcceptors {
    /// The acceptors for `config`'s `tls_cert` and `tls_key`; `None` when TLS
    /// is off ([`Config::tls_enabled`]). A file that cannot be read or used
    /// is an error naming its config key and path.
    pub fn from_config(config: &Config) -> Result<Option<TlsAcceptors>, BrokerError> {
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            return Ok(None);
        };
        let mqtt = server_config(cert, key)?;
        let mut https = mqtt.clone();
        https.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(Some(TlsAcceptors {
            mqtt: TlsAcceptor::from(Arc::new(mqtt)),
            https: TlsAcceptor::from(Arc::new(https)),
        }))
    }
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3, no client
/// certificates, no ALPN) for the PEM chain at `cert` and the key at `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, BrokerError> {
    let chain = load_cert_chain(cert)?;
    let private_key = load_private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| tls_error("tls_cert", cert, error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| {
            let message = format!(
                "cannot be used with the certificate chain in {}: {error}",
                cert.display()
            );
            tls_error("tls_key", key, message)
        })
}

/// Every certificate in the PEM file at `path`, leaf first.
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let pem = read_pem("tls_cert", path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| tls_error("tls_cert", path, format!("bad PEM: {error}")))?;
    if chain.is_empty() {
        let message = "no CERTIFICATE section found (want a PEM certificate chain, leaf first)";
        return Err(tls_error("tls_cert", path, message.to_owned()));
    }
    Ok(chain)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, BrokerError> {
    let pem = read_pem("tls_key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| {
        let message = match error {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key found (want a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section)"
                    .to_owned()
            }
            other => format!("bad PEM: {other}"),
        };
        tls_error("tls_key", path, message)
    })
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, BrokerError> {
    std::fs::read(path).map_err(|error| tls_error(key, path, format!("cannot read: {error}")))
}

fn tls_error(key: &'static str, path: &Path, message: String) -> BrokerError {
    BrokerError::Tls {
        key,
        path: path.to_owned(),
        message,
    }
}

/// The server side of a TLS handshake on `stream`, given at most `timeout`.
/// A handshake that fails or times out drops (closes) the socket; a timeout
/// is an error of kind [`io::ErrorKind::TimedOut`].
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> io::Result<ServerTlsStream> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("tls handshake not finished within {timeout:?}"),
        )),
    }
}

#[cfg(test)]
mod tests;
