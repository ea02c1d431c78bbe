//! A bare HTTPS/1.1 client for requests whose every header the test chooses (forged forwarding
//! headers included), trusting only the CA it is given.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) to `127.0.0.1:port` over TLS,
/// checking the certificate names `localhost` and chains to `ca`; returns the whole response.
pub async fn request(port: u16, ca: &Path, request: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("trust the CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to nginx");
    let name = ServerName::try_from("localhost").expect("a server name");
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with nginx");
    tls.write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut response = Vec::new();
    // nginx closes after the response (Connection: close); an unclean TLS close is fine here.
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}
