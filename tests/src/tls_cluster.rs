//! A PostgreSQL cluster with `ssl=on` and a CA made by the test: the broadcaster's role must come
//! over TLS (`hostnossl ... reject`), a second role must also show a client certificate, and the
//! superuser may still connect in plain text to arrange the test.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use threadcast_harness::cluster::chown_to_postgres;
use threadcast_harness::Cluster;

use crate::db::READER_ROLE;
use crate::pki::{CertFiles, TestCa};
use crate::scratch::ScratchDir;

/// The role that logs in with a client certificate (`cert` authentication); created by
/// [`TlsCluster::create_cert_role`] with the broadcaster role's rights.
pub const CERT_ROLE: &str = "threadcast_cert_reader";

/// The host names the server's certificate is valid for: `localhost` only, so that connecting to
/// `127.0.0.1` with `verify-full` is a wrong host name.
pub const SERVER_NAME: &str = "localhost";

/// A TLS-only (for the broadcaster's roles) PostgreSQL cluster and the files a client needs.
pub struct TlsCluster {
    pub cluster: Cluster,
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    /// A CA that signed nothing the server shows.
    pub other_ca: PathBuf,
    /// A client certificate for [`CERT_ROLE`], signed by [`TlsCluster::ca`].
    pub client: CertFiles,
    _dir: ScratchDir,
}

static SHARED: OnceLock<TlsCluster> = OnceLock::new();

extern "C" fn stop_shared() {
    if let Some(shared) = SHARED.get() {
        let _ = shared.cluster.stop();
        let _ = std::fs::remove_dir_all(shared.cluster.dir());
        let _ = std::fs::remove_dir_all(shared._dir.path());
    }
}

impl TlsCluster {
    /// The TLS cluster shared by the tests of this process, started on first use and stopped
    /// when the process exits (statics are never dropped, hence `atexit`, as for
    /// `Cluster::shared`).
    pub fn shared() -> &'static TlsCluster {
        SHARED.get_or_init(|| {
            let cluster = TlsCluster::start();
            // SAFETY: registers a plain `extern "C" fn` with no arguments, as atexit expects.
            unsafe { libc::atexit(stop_shared) };
            cluster
        })
    }

    /// Makes the CAs and certificates, and starts the cluster.
    pub fn start() -> TlsCluster {
        let dir = ScratchDir::new("threadcast-tls");
        let ca = TestCa::new(dir.path(), "postgres");
        let other = TestCa::new(dir.path(), "other");
        let server = ca.server_cert("server", &[SERVER_NAME]);
        let client = ca.client_cert("client", CERT_ROLE);
        let hba = write_server_files(dir.path(), &server);
        let (cert, key, root, hba) = (
            server.cert.display().to_string(),
            server.key.display().to_string(),
            ca.cert_path().display().to_string(),
            hba.display().to_string(),
        );
        let cluster = Cluster::start_with(&[
            ("ssl", "on"),
            ("ssl_cert_file", &cert),
            ("ssl_key_file", &key),
            ("ssl_ca_file", &root),
            ("hba_file", &hba),
        ]);
        TlsCluster {
            cluster,
            ca: ca.cert_path(),
            other_ca: other.cert_path(),
            client,
            _dir: dir,
        }
    }
}

impl TlsCluster {
    /// Creates [`CERT_ROLE`] (once per cluster) with the broadcaster role's rights.
    pub async fn create_cert_role(&self, db: &crate::TestDb) {
        db.client
            .batch_execute(&format!(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{CERT_ROLE}') THEN
                     CREATE ROLE {CERT_ROLE} LOGIN;
                   END IF;
                 END $$;
                 GRANT {READER_ROLE} TO {CERT_ROLE};"
            ))
            .await
            .expect("create the client-certificate role");
    }
}

/// Gives the server its key (PostgreSQL wants to own it) and writes the `pg_hba.conf` it runs
/// with: the broadcaster's role only over TLS, [`CERT_ROLE`] only over TLS with a certificate,
/// the rest (the superuser arranging the test) as it likes. Returns the file's path.
fn write_server_files(dir: &Path, server: &CertFiles) -> PathBuf {
    chown_to_postgres(&server.key).expect("give the server its key");
    let hba = dir.join("pg_hba.conf");
    std::fs::write(
        &hba,
        format!(
            "local all all trust\n\
             hostssl all {CERT_ROLE} 127.0.0.1/32 cert\n\
             hostnossl all {CERT_ROLE} 127.0.0.1/32 reject\n\
             hostssl all {READER_ROLE} 127.0.0.1/32 trust\n\
             hostnossl all {READER_ROLE} 127.0.0.1/32 reject\n\
             host all all 127.0.0.1/32 trust\n"
        ),
    )
    .expect("write pg_hba.conf");
    hba
}
