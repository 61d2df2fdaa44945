//! Everything that crosses the network: the [`Transport`] seam (bind, accept,
//! connect) with its real TCP implementation, conversions between wire and
//! core types, the gRPC services, and the per-peer senders.
//!
//! The seam is all a simulated network has to implement: the tonic servers are
//! fed by [`Transport::bind`] and the channels dial through
//! [`Transport::connect`].

mod convert;
pub mod limits;
pub(crate) mod peer;
pub mod service;

pub use convert::{error_from_proto, status_to_error};
pub(crate) use convert::{error_to_proto, error_to_status};

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint};

/// A boxed future, as the seam's methods return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Accepted connections of a bound address.
pub type Listener = Pin<Box<dyn Stream<Item = io::Result<Connection>> + Send>>;

/// Where bytes come from and go to. `addr` is `host:port` (`[::1]:50051`,
/// `node1:50051`): whatever the implementation resolves.
pub trait Transport: Send + Sync + 'static {
    fn bind(&self, addr: &str) -> BoxFuture<io::Result<Listener>>;
    fn connect(&self, addr: &str) -> BoxFuture<io::Result<Connection>>;
}

/// Any byte stream, boxed, as tonic's server and channel want it.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + 'static> ByteStream for T {}

pub struct Connection(Pin<Box<dyn ByteStream>>);

impl Connection {
    pub fn new(stream: impl ByteStream) -> Self {
        Connection(Box::pin(stream))
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// Real TCP (with `TCP_NODELAY`: Raft messages are small and latency-bound).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpTransport;

impl Transport for TcpTransport {
    fn bind(&self, addr: &str) -> BoxFuture<io::Result<Listener>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let connections = tokio_stream::StreamExt::map(incoming, |accepted| {
                let stream = accepted?;
                stream.set_nodelay(true)?;
                Ok(Connection::new(stream))
            });
            Ok(Box::pin(connections) as Listener)
        })
    }

    fn connect(&self, addr: &str) -> BoxFuture<io::Result<Connection>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            Ok(Connection::new(stream))
        })
    }
}

/// Real TCP whose outgoing connections leave from one local address: nodes
/// sharing a machine on different loopback addresses (127.0.0.11, .12, ...)
/// are then told apart by packet filters (see `scripts/partition.sh`).
#[derive(Clone, Copy, Debug)]
pub struct SourceBoundTcpTransport {
    pub source: std::net::IpAddr,
}

impl Transport for SourceBoundTcpTransport {
    fn bind(&self, addr: &str) -> BoxFuture<io::Result<Listener>> {
        TcpTransport.bind(addr)
    }

    fn connect(&self, addr: &str) -> BoxFuture<io::Result<Connection>> {
        let addr = addr.to_string();
        let source = self.source;
        Box::pin(async move {
            let target = tokio::net::lookup_host(&addr)
                .await?
                .find(|a| a.is_ipv4() == source.is_ipv4())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("no address for {addr}"))
                })?;
            let socket = if source.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(std::net::SocketAddr::new(source, 0))?;
            let stream = socket.connect(target).await?;
            stream.set_nodelay(true)?;
            Ok(Connection::new(stream))
        })
    }
}

/// Timeouts, keepalive and TLS of a gRPC channel.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    pub connect_timeout: Duration,
    /// Deadline of every RPC on the channel.
    pub rpc_timeout: Duration,
    /// HTTP/2 pings: a dead connection (or one a partition stalled) is noticed
    /// and replaced instead of hanging forever.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Dial with TLS (`https`), checking the server's certificate against
    /// the address dialled. `None`: plaintext.
    pub tls: Option<crate::tls::ClientTls>,
}

/// A lazily connecting channel to `addr` through `transport`. tonic redials on
/// the next call after a failure.
pub fn channel(
    transport: Arc<dyn Transport>,
    addr: &str,
    config: &ChannelConfig,
) -> crate::Result<Channel> {
    channel_with_deadline(transport, addr, config, Some(config.rpc_timeout))
}

/// Like [`channel`], but its calls have no deadline of their own: for
/// long-lived streams, whose messages the caller times out one by one.
pub fn stream_channel(
    transport: Arc<dyn Transport>,
    addr: &str,
    config: &ChannelConfig,
) -> crate::Result<Channel> {
    channel_with_deadline(transport, addr, config, None)
}

fn channel_with_deadline(
    transport: Arc<dyn Transport>,
    addr: &str,
    config: &ChannelConfig,
    deadline: Option<Duration>,
) -> crate::Result<Channel> {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| crate::Error::Config(format!("bad address {addr:?}: {e}")))?
        .connect_timeout(config.connect_timeout);
    if let Some(tls) = &config.tls {
        // The server's certificate must name the host dialled (its IP
        // address or DNS name, as `addr` gives it).
        endpoint = endpoint
            .tls_config(tls.config())
            .map_err(|e| crate::Error::Config(format!("TLS for {addr}: {e}")))?;
    }
    if let Some(deadline) = deadline {
        endpoint = endpoint.timeout(deadline);
    }
    let endpoint = endpoint
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true);
    let target = addr.to_string();
    let connector = tower::service_fn(move |_: http::Uri| {
        let transport = transport.clone();
        let target = target.clone();
        async move {
            let connection = transport.connect(&target).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(connection))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
