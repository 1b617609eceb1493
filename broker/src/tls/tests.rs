//! Loading PEM files (every error names its key and path), the handshake
//! deadline, and [`TlsListener`] with a real rustls client on loopback. The
//! PEM files are throwaway ones in `testdata/` (see its README).

use std::path::PathBuf;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::*;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/tls/testdata")
        .join(name)
}

/// The error of `server_config(cert, key)`, as (config key, displayed text).
fn config_error(cert: &Path, key: &Path) -> (&'static str, String) {
    match server_config(cert, key) {
        Ok(_) => panic!("{} + {} should be refused", cert.display(), key.display()),
        Err(error @ BrokerError::Tls { key, .. }) => (key, error.to_string()),
        Err(other) => panic!("not a TLS error: {other}"),
    }
}

#[test]
fn loads_pkcs8_sec1_and_pkcs1_keys() {
    let ec_cert = testdata("ec-cert.pem");
    for key in ["ec-key.pkcs8.pem", "ec-key.sec1.pem"] {
        server_config(&ec_cert, &testdata(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    server_config(&testdata("rsa-cert.pem"), &testdata("rsa-key.pkcs1.pem")).unwrap();
}

#[test]
fn a_missing_file_names_its_key_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let (key, text) = config_error(&missing, &testdata("ec-key.sec1.pem"));
    assert_eq!(key, "tls_cert");
    assert!(
        text.contains("tls_cert") && text.contains("nope.pem"),
        "{text}"
    );
    let (key, text) = config_error(&testdata("ec-cert.pem"), &missing);
    assert_eq!(key, "tls_key");
    assert!(
        text.contains("tls_key") && text.contains("nope.pem"),
        "{text}"
    );
}

#[test]
fn bad_pem_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\n%%%%\n").unwrap();
    let (key, text) = config_error(&garbage, &testdata("ec-key.sec1.pem"));
    assert_eq!(key, "tls_cert");
    assert!(
        text.contains("garbage.pem") && text.contains("bad PEM"),
        "{text}"
    );

    // A key file where the certificate should be: no certificate in it.
    let (key, text) = config_error(&testdata("ec-key.sec1.pem"), &testdata("ec-key.sec1.pem"));
    assert_eq!(key, "tls_cert");
    assert!(text.contains("no CERTIFICATE"), "{text}");

    // And the other way round: no private key in the certificate file.
    let (key, text) = config_error(&testdata("ec-cert.pem"), &testdata("ec-cert.pem"));
    assert_eq!(key, "tls_key");
    assert!(text.contains("no private key"), "{text}");
}

#[test]
fn a_key_that_does_not_fit_the_certificate_is_refused() {
    let (key, text) = config_error(&testdata("ec-cert.pem"), &testdata("other-ec-key.pem"));
    assert_eq!(key, "tls_key");
    assert!(
        text.contains("other-ec-key.pem") && text.contains("ec-cert.pem"),
        "{text}"
    );
}

#[test]
fn acceptors_follow_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("data"));
    assert!(TlsAcceptors::from_config(&config).unwrap().is_none());
    config.tls_cert = Some(testdata("ec-cert.pem"));
    config.tls_key = Some(testdata("ec-key.pkcs8.pem"));
    let acceptors = TlsAcceptors::from_config(&config).unwrap().expect("tls on");
    assert!(acceptors.mqtt.config().alpn_protocols.is_empty());
    assert_eq!(
        acceptors.https.config().alpn_protocols,
        [b"http/1.1".to_vec()]
    );
    config.tls_key = Some(dir.path().join("missing-key.pem"));
    let error = TlsAcceptors::from_config(&config).err().expect("refused");
    assert!(error.to_string().contains("tls_key"), "{error}");
}

fn acceptor() -> TlsAcceptor {
    let config = server_config(&testdata("ec-cert.pem"), &testdata("ec-key.sec1.pem")).unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// A rustls client that trusts only the test certificate.
fn connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_cert_chain(&testdata("ec-cert.pem")).unwrap() {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn a_silent_peer_times_out_its_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = TcpStream::connect(addr).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let error = handshake(&acceptor(), stream, Duration::from_millis(100))
        .await
        .expect_err("no handshake from a silent peer");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
}

#[tokio::test]
async fn listener_hands_out_finished_streams_while_another_handshake_stalls() {
    use axum::serve::Listener as _;

    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let tasks = TaskTracker::new();
    let mut listener = TlsListener::new(tcp, acceptor(), Duration::from_secs(30), &tasks).unwrap();
    assert_eq!(listener.local_addr().unwrap(), addr);

    // Half a ClientHello, then nothing: this handshake never finishes.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();

    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector().connect(name, tcp).await.unwrap();
        tls.write_all(b"ping").await.unwrap();
        tls.flush().await.unwrap();
        let mut answer = [0u8; 4];
        tls.read_exact(&mut answer).await.unwrap();
        answer
    });
    let (mut server_side, peer) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the second connection is handed out");
    assert_eq!(peer.ip(), addr.ip());
    let mut ping = [0u8; 4];
    server_side.read_exact(&mut ping).await.unwrap();
    assert_eq!(&ping, b"ping");
    server_side.write_all(b"pong").await.unwrap();
    server_side.flush().await.unwrap();
    assert_eq!(&client.await.unwrap(), b"pong");

    // Dropping the listener stops its tasks and closes the TCP listener.
    drop(listener);
    tasks.close();
    tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .expect("accept and handshake tasks end with the listener");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    drop(stalled);
}
