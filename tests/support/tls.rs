//! TLS for the end-to-end tests: a throwaway CA and a server certificate
//! for `localhost` and `127.0.0.1` made with rcgen (ring), written as PEM
//! files that the broker loads; rustls client configurations that trust
//! that CA; a bare HTTP/1.1 GET for the HTTPS API.
//!
//! Every client configuration names the ring provider explicitly, like the
//! broker and the SDK do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parley_broker::Config;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A CA and a server certificate signed by it, as files in a test's dir.
pub struct TestPki {
    /// The CA certificate, PEM: what clients trust.
    pub ca_pem: String,
    /// The server certificate chain (leaf, then the CA), PEM file.
    pub cert_path: PathBuf,
    /// The server's private key (PKCS#8), PEM file.
    pub key_path: PathBuf,
}

impl TestPki {
    /// A fresh CA and server certificate; the PEM files go into `dir`.
    pub fn generate(dir: &Path) -> TestPki {
        let ca_key = KeyPair::generate().expect("generate the CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "parley test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");

        let key = KeyPair::generate().expect("generate the server key");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut server = CertificateParams::new(names).expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("sign the server certificate");

        let cert_path = dir.join("server-cert.pem");
        let key_path = dir.join("server-key.pem");
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), ca_cert.pem()))
            .expect("write the certificate chain");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
        TestPki {
            ca_pem: ca_cert.pem(),
            cert_path,
            key_path,
        }
    }

    /// Points `config` at these files and opens the TLS and secure
    /// WebSocket listeners on `127.0.0.1:0` (the HTTP API becomes HTTPS).
    pub fn configure(&self, config: &mut Config) {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        config.tls_cert = Some(self.cert_path.clone());
        config.tls_key = Some(self.key_path.clone());
        config.tls_addr = Some(any_port);
        config.wss_addr = Some(any_port);
    }

    /// A rustls client configuration trusting this CA only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config_trusting(self.ca_pem.as_bytes(), &[])
    }

    /// rumqttc's TLS settings trusting this CA (for `Transport::Tls` / `Wss`).
    pub fn rumqttc_tls(&self) -> rumqttc::TlsConfiguration {
        rumqttc::TlsConfiguration::Rustls(self.client_config())
    }
}

/// A rustls client configuration (ring) trusting the certificates in
/// `ca_pem`, offering `alpn`.
pub fn client_config_trusting(ca_pem: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a usable CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` as server name `127.0.0.1`.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A bare HTTP/1.1 GET on `stream` (`Connection: close`); returns the
/// status code (0 if none could be read) and the body.
pub async fn http_get<S>(mut stream: S, path: &str) -> (u16, String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return (0, String::new());
    }
    let mut raw = Vec::new();
    // A TLS peer closing without close_notify is an error after the bytes.
    let _ = stream.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw);
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
