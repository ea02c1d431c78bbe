//! A PostgreSQL cluster with `ssl=on` and a CA made by the test: the broadcaster's role must come
//! over TLS (`hostnossl ... reject`), a second role must also show a client certificate, and the
//! superuser may still connect in plain text to arrange the test.

use std::path::{Path, PathBuf};

use crate::cluster::{chown_to_postgres, Cluster};
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

impl TlsCluster {
    /// Makes the CAs and certificates, and starts the cluster.
    pub fn start() -> TlsCluster {
        let dir = ScratchDir::new("threadcast-tls");
        let ca = TestCa::new(dir.path(), "postgres");
        let other = TestCa::new(dir.path(), "other");
        let server = ca.server_cert("server", &[SERVER_NAME]);
        let client = ca.client_cert("client", CERT_ROLE);
        let cluster = Cluster::start_with(|data| configure(data, &ca.cert_path(), &server));
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

/// Copies the server's files into the data folder and turns TLS on, with these rules: the
/// broadcaster's role only over TLS, [`CERT_ROLE`] only over TLS with a certificate, the rest
/// (the superuser arranging the test) as it likes.
fn configure(data: &Path, ca: &Path, server: &CertFiles) {
    for (from, to) in [
        (&server.cert, "server.crt"),
        (&server.key, "server.key"),
        (&ca.to_path_buf(), "root.crt"),
    ] {
        let target = data.join(to);
        std::fs::copy(from, &target).expect("copy a certificate into the data folder");
        chown_to_postgres(&target);
    }
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("postgresql.conf");
    conf.push_str(
        "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
         ssl_ca_file = 'root.crt'\n",
    );
    std::fs::write(data.join("postgresql.conf"), conf).expect("write postgresql.conf");
    let hba = format!(
        "local all all trust\n\
         hostssl all {CERT_ROLE} 127.0.0.1/32 cert\n\
         hostnossl all {CERT_ROLE} 127.0.0.1/32 reject\n\
         hostssl all {READER_ROLE} 127.0.0.1/32 trust\n\
         hostnossl all {READER_ROLE} 127.0.0.1/32 reject\n\
         host all all 127.0.0.1/32 trust\n"
    );
    std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
}
