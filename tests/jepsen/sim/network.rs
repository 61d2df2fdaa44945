//! The simulated network: turmoil's TCP behind `lattice::transport::Transport`.

use std::io;

use lattice::transport::{BoxFuture, Connection, Listener, Transport};

/// turmoil's TCP. Binds on all addresses of the host at the given port;
/// connects by host name (`n1:7000`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TurmoilTransport;

impl Transport for TurmoilTransport {
    fn bind(&self, addr: &str) -> BoxFuture<io::Result<Listener>> {
        let port = addr.rsplit(':').next().unwrap_or("0").to_string();
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(format!("0.0.0.0:{port}")).await?;
            let stream = futures_stream(listener);
            Ok(stream)
        })
    }

    fn connect(&self, addr: &str) -> BoxFuture<io::Result<Connection>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Connection::new(stream))
        })
    }
}

/// Accepted connections as a stream, without pulling in a futures crate.
fn futures_stream(listener: turmoil::net::TcpListener) -> Listener {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        // Ends (closing the port) as soon as the server drops the stream,
        // so that a node stopped gracefully can start again on its ports.
        loop {
            let accepted = tokio::select! {
                biased;
                _ = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let accepted = accepted.map(|(stream, _)| Connection::new(stream));
            if sender.send(accepted).await.is_err() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
