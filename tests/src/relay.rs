//! A TCP relay in front of an in-process broadcaster, so that a test can kill a replica the way a
//! crash does: every connection through it is cut at once, mid-response, and new ones are
//! refused, while the broadcaster behind it knows nothing of it.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A relay from its own loopback port to `target`.
pub struct Relay {
    pub addr: SocketAddr,
    kill: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// Listens on 127.0.0.1:0 and relays every connection to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a relay");
        let addr = listener.local_addr().expect("relay address");
        let kill = CancellationToken::new();
        let task = tokio::spawn(relay(listener, target, kill.clone()));
        Relay {
            addr,
            kill,
            task: Some(task),
        }
    }

    /// Cuts every connection and stops listening (connections are refused from now on); returns
    /// once that is done.
    pub async fn kill(mut self) {
        self.kill.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill.cancel();
    }
}

async fn relay(listener: TcpListener, target: SocketAddr, kill: CancellationToken) {
    // Dropping the set aborts every connection's task, and with it closes both of its sockets.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = kill.cancelled() => return,
            accepted = listener.accept() => {
                let Ok((mut client, _)) = accepted else { continue };
                connections.spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
