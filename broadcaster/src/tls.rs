//! TLS to PostgreSQL with rustls (no OpenSSL to build or link): libpq's `sslmode`
//! (`disable | prefer | require | verify-ca | verify-full`), `sslrootcert` and client
//! certificates (`sslcert`, `sslkey`), read from the connection string, for the LISTEN connection
//! and the pool alike.
//!
//! As in libpq, `prefer` and `require` encrypt without checking whom they talk to, unless
//! `sslrootcert` names a CA, in which case they check the chain as `verify-ca` does.
//! `sslrootcert=system` trusts the system's CA store (as libpq 16 does).

mod conninfo;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres_rustls::MakeRustlsConnect;

pub use conninfo::ConninfoError;

/// The connector every database connection of the broadcaster uses.
pub type Connector = MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, TlsError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's `allow` tries without TLS first; nothing here would use it on purpose.
            other => return Err(TlsError::Mode(other.to_owned())),
        })
    }

    /// What tokio-postgres is told: whether TLS is tried, and whether it is required.
    fn wire(self) -> WireMode {
        match self {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        }
    }
}

/// What to check of the server's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Nothing: encryption against a passive eavesdropper only.
    Nothing,
    /// That a CA of `sslrootcert` signed it.
    Chain,
    /// That, and that it names the host connected to.
    ChainAndHost,
}

/// The TLS settings of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of CA certificates, or `system`.
    pub root_cert: Option<String>,
    /// `sslcert` and `sslkey`: the client's certificate (chain) and key, PEM.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsSettings {
    /// Says at start-up what the database connections do; warns when nothing is checked and the
    /// database is reached over a network (not a Unix socket or loopback).
    pub fn log(&self, pg: &tokio_postgres::Config) {
        let over_a_network = pg.get_hosts().iter().any(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => {
                name != "localhost"
                    && !name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => false,
        });
        match self.check() {
            Check::ChainAndHost => {
                tracing::info!(sslmode = ?self.mode, "database TLS: the server's certificate and name are checked")
            }
            Check::Chain => {
                tracing::info!(sslmode = ?self.mode, "database TLS: the server's certificate is checked, not its name")
            }
            Check::Nothing if over_a_network => tracing::warn!(
                sslmode = ?self.mode,
                "the database is reached over a network and its server's certificate is not checked: \
                 use sslmode=verify-full with sslrootcert"
            ),
            Check::Nothing => {
                tracing::info!(sslmode = ?self.mode, "database TLS: nothing checked (a local database)")
            }
        }
    }

    /// What the server's certificate is checked for under these settings.
    pub fn check(&self) -> Check {
        match (self.mode, &self.root_cert) {
            (SslMode::VerifyFull, _) => Check::ChainAndHost,
            (SslMode::VerifyCa, _) => Check::Chain,
            (SslMode::Disable, _) | (_, None) => Check::Nothing,
            (SslMode::Prefer | SslMode::Require, Some(_)) => Check::Chain,
        }
    }
}

/// Why the TLS settings of the connection string cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Conninfo(#[from] ConninfoError),
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    Mode(String),
    #[error(
        "sslmode={0} checks the server's certificate and needs sslrootcert: a PEM file with the \
         CA that signed it, or sslrootcert=system for the system's CA store"
    )]
    NoRootCert(&'static str),
    #[error("sslcert and sslkey go together: a client certificate needs its key, and a key its certificate")]
    HalfClientCert,
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} holds no certificate (PEM, -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("the system's CA store has no usable certificate (sslrootcert=system)")]
    NoSystemRoots,
    #[error("the client certificate or key is not usable: {0}")]
    ClientCert(rustls::Error),
    #[error("the CA certificates are not usable: {0}")]
    Roots(String),
}

/// A parsed connection string: tokio-postgres's config (its `sslmode` set to what the wire
/// needs), the connector that implements the rest, and the settings it was built from.
pub struct DatabaseConfig {
    pub pg: tokio_postgres::Config,
    pub connector: Connector,
    pub tls: TlsSettings,
}

/// Parses `conninfo` (a URL or `key=value` pairs) with its TLS settings.
pub fn database_config(conninfo: &str) -> Result<DatabaseConfig, DatabaseConfigError> {
    let split = conninfo::split(conninfo).map_err(TlsError::from)?;
    let tls = settings(&split.tls)?;
    let mut pg: tokio_postgres::Config = split.rest.parse().map_err(DatabaseConfigError::Parse)?;
    pg.ssl_mode(tls.mode.wire());
    let connector = MakeRustlsConnect::new(client_config(&tls)?);
    Ok(DatabaseConfig { pg, connector, tls })
}

/// Why a connection string cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseConfigError {
    #[error("DATABASE_URL is not a valid connection string: {0}")]
    Parse(#[source] tokio_postgres::Error),
    #[error("DATABASE_URL: {0}")]
    Tls(#[from] TlsError),
}

fn settings(pairs: &[(String, String)]) -> Result<TlsSettings, TlsError> {
    let mut mode = SslMode::Prefer;
    let (mut root_cert, mut cert, mut key) = (None, None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "sslmode" => mode = SslMode::parse(v)?,
            "sslrootcert" => root_cert = Some(v.clone()),
            "sslcert" => cert = Some(PathBuf::from(v)),
            "sslkey" => key = Some(PathBuf::from(v)),
            _ => unreachable!("conninfo::split returns TLS keys only"),
        }
    }
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err(TlsError::HalfClientCert),
    };
    match (mode, &root_cert) {
        (SslMode::VerifyCa, None) => return Err(TlsError::NoRootCert("verify-ca")),
        (SslMode::VerifyFull, None) => return Err(TlsError::NoRootCert("verify-full")),
        _ => {}
    }
    Ok(TlsSettings {
        mode,
        root_cert,
        client_cert,
    })
}

fn client_config(tls: &TlsSettings) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions");
    let builder = match tls.check() {
        Check::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::AnyCertificate::new(provider))),
        check => {
            let roots = Arc::new(roots(
                tls.root_cert.as_deref().expect("checked in settings"),
            )?);
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TlsError::Roots(e.to_string()))?;
            if check == Check::ChainAndHost {
                builder.with_webpki_verifier(webpki)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verify::ChainOnly::new(webpki)))
            }
        }
    };
    match &tls.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
                what: "the client key (sslkey)",
                path: key.clone(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsError::ClientCert)
        }
    }
}

fn roots(root_cert: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    if root_cert == "system" {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(TlsError::NoSystemRoots);
        }
        return Ok(store);
    }
    for cert in certificates(Path::new(root_cert))? {
        store
            .add(cert)
            .map_err(|e| TlsError::Roots(format!("{root_cert}: {e}")))?;
    }
    Ok(store)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read {
        what: "the certificate file",
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_defaults_to_prefer_and_maps_onto_what_tokio_postgres_knows() {
        let config = database_config("host=db user=app").unwrap();
        assert_eq!(config.tls.mode, SslMode::Prefer);
        assert_eq!(config.pg.get_ssl_mode(), WireMode::Prefer);
        for (mode, wire) in [
            ("disable", WireMode::Disable),
            ("require", WireMode::Require),
            ("verify-ca", WireMode::Require),
            ("verify-full", WireMode::Require),
        ] {
            let split = conninfo::split(&format!("host=db sslmode={mode}")).unwrap();
            let settings = settings(&split.tls);
            let settings = match mode {
                "verify-ca" | "verify-full" => {
                    assert!(
                        matches!(settings, Err(TlsError::NoRootCert(_))),
                        "{mode} needs a CA"
                    );
                    continue;
                }
                _ => settings.unwrap(),
            };
            assert_eq!(settings.mode.wire(), wire, "sslmode={mode}");
        }
    }

    #[test]
    fn a_root_certificate_makes_require_check_the_chain_as_libpq_does() {
        let with_root = |mode| TlsSettings {
            mode,
            root_cert: Some("/ca.pem".into()),
            client_cert: None,
        };
        assert_eq!(with_root(SslMode::Require).check(), Check::Chain);
        assert_eq!(with_root(SslMode::Prefer).check(), Check::Chain);
        assert_eq!(with_root(SslMode::VerifyCa).check(), Check::Chain);
        assert_eq!(with_root(SslMode::VerifyFull).check(), Check::ChainAndHost);
        let without = TlsSettings {
            mode: SslMode::Require,
            root_cert: None,
            client_cert: None,
        };
        assert_eq!(without.check(), Check::Nothing);
    }

    #[test]
    fn bad_tls_settings_are_refused_with_a_clear_message() {
        let error = |conninfo: &str| match database_config(conninfo) {
            Ok(_) => panic!("{conninfo} is refused"),
            Err(e) => e.to_string(),
        };
        assert!(error("host=db sslmode=allow").contains("not one of disable, prefer"));
        assert!(error("host=db sslmode=verify-full").contains("needs sslrootcert"));
        assert!(error("host=db sslcert=/c.pem").contains("sslcert and sslkey go together"));
        assert!(
            error("host=db sslmode=verify-ca sslrootcert=/nonexistent/ca.pem")
                .contains("cannot read the certificate file /nonexistent/ca.pem")
        );
        assert!(error("postgres://db/app?sslmode=nope").contains("\"nope\""));
    }
}
