//! The production shape in miniature: two broadcaster replicas (each behind a [`Relay`], so that
//! one can be killed like a crashed process) and Debian's nginx running `deploy/nginx/` in front
//! of them with a certificate from a CA made by the test, for a browser told to trust that CA.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::nginx::Nginx;
use crate::pki::TestCa;
use crate::relay::Relay;
use crate::scratch::ScratchDir;
use crate::{TestDb, TestServer};

/// One replica: the broadcaster and the relay that nginx reaches it through.
pub struct Replica {
    pub server: TestServer,
    relay: Relay,
}

impl Replica {
    /// The address nginx sends requests to.
    pub fn addr(&self) -> SocketAddr {
        self.relay.addr
    }

    /// Kills it as a crash would: every connection through it cut at once, new ones refused;
    /// then the broadcaster behind it is stopped.
    pub async fn kill(self) {
        self.relay.kill().await;
        self.server.stop().await;
    }
}

/// nginx in front of replicas of one database.
pub struct Proxied {
    pub nginx: Nginx,
    pub replicas: Vec<Replica>,
    /// The CA (PEM) that signed nginx's certificate: what the browser must trust.
    pub ca: PathBuf,
    _certs: ScratchDir,
}

impl Proxied {
    /// `replicas` broadcasters for `db` (with `heartbeat` seconds between keep-alives) behind nginx.
    pub async fn start(db: &TestDb, replicas: usize) -> Proxied {
        let certs = ScratchDir::new("threadcast-proxy-certs");
        let ca = TestCa::new(certs.path(), "proxy");
        let cert = ca.server_cert("nginx", &["localhost", "127.0.0.1"]);
        let mut started = Vec::with_capacity(replicas);
        for _ in 0..replicas {
            let server = TestServer::start(db).await;
            let relay = Relay::start(server.addr).await;
            started.push(Replica { server, relay });
        }
        let addrs: Vec<SocketAddr> = started.iter().map(Replica::addr).collect();
        let nginx = Nginx::start(&addrs, &cert);
        Proxied {
            nginx,
            replicas: started,
            ca: ca.cert_path(),
            _certs: certs,
        }
    }
}
