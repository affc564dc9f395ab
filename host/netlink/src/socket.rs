//! rtnetlink sockets in a namespace: a connection ([`Netns::connect`]),
//! kernel notifications ([`Netns::watch`]), and the one I/O thread that
//! drives every socket. A socket is created inside the namespace by a
//! short-lived thread ([`Netns`]'s `inside`); what it becomes is a
//! [`Netlink`] (`ops.rs`).

use crate::ops::Netlink;
use crate::{Error, Netns, Result};

impl Netns {
    /// Opens an rtnetlink connection inside this namespace.
    ///
    /// The socket is created on a dedicated OS thread that enters the
    /// namespace, creates the socket and exits; the thread never runs
    /// anything else, so there is no namespace to restore and no way for a
    /// failed restore to leave a thread in the wrong namespace. The
    /// connection's I/O then runs on the caller's tokio runtime.
    pub async fn connect(&self) -> Result<Netlink> {
        let (handle, _) = self.socket(0).await?;
        Ok(handle)
    }

    /// Kernel notifications from this namespace: a link added, changed or
    /// removed, an IPv4 route added or removed. The agent reacts to these
    /// instead of polling the node. The stream ends if the socket fails;
    /// the kernel drops notifications a slow reader does not take (the
    /// caller re-reads the whole state on every event, so a lost one only
    /// delays the next look).
    pub async fn watch(&self) -> Result<tokio::sync::mpsc::UnboundedReceiver<Change>> {
        use rtnetlink::constants::{RTMGRP_IPV4_ROUTE, RTMGRP_LINK};
        let (_, mut messages) = self.socket(RTMGRP_LINK | RTMGRP_IPV4_ROUTE).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use futures::StreamExt;
            use netlink_packet_route::RouteNetlinkMessage as M;
            use rtnetlink::packet_core::NetlinkPayload;
            while let Some((msg, _)) = messages.next().await {
                let change = match msg.payload {
                    NetlinkPayload::InnerMessage(M::NewLink(_) | M::DelLink(_)) => Change::Link,
                    NetlinkPayload::InnerMessage(M::NewRoute(_) | M::DelRoute(_)) => Change::Route,
                    _ => continue,
                };
                if tx.send(change).is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// A connection in this namespace, subscribed to `groups` (0: none).
    async fn socket(&self, groups: u32) -> Result<(Netlink, Messages)> {
        let label = self.label().to_string();
        let runtime = io_runtime()?.clone();
        let (connection, handle, messages) = self
            .inside("netns-connect", move || {
                // The netlink socket registers with the I/O runtime's
                // reactor, so it needs its context.
                let _ctx = runtime.enter();
                let (mut conn, handle, messages) = rtnetlink::new_connection()
                    .map_err(Error::io(format!("opening rtnetlink in netns {label}")))?;
                if groups != 0 {
                    use rtnetlink::sys::{AsyncSocket, SocketAddr};
                    conn.socket_mut()
                        .socket_mut()
                        .bind(&SocketAddr::new(0, groups))
                        .map_err(Error::io(format!(
                            "subscribing to rtnetlink notifications in netns {label}"
                        )))?;
                }
                Ok((conn, handle, messages))
            })
            .await?;
        io_runtime()?.spawn(connection);
        Ok((Netlink::new(handle, self.label().to_string()), messages))
    }
}

/// The runtime that drives every netlink socket's I/O, on one OS thread of
/// its own.
///
/// The kernel executes an rtnetlink request inside the `sendmsg()` that
/// carries it, and most requests take RTNL: a device move holds it for
/// ~20 ms (two `synchronize_net()` and an `rcu_barrier()`), and every other
/// request waits behind it. Driven from the agent's async workers, those
/// waits stalled the workers and the tasks queued on them — a DEL's answer
/// waited behind the background release of the previous DEL. Here only
/// this thread waits; callers await channels (rtnetlink's handles are
/// runtime-agnostic), so every namespace's sockets share it.
fn io_runtime() -> Result<&'static tokio::runtime::Handle> {
    static IO: std::sync::OnceLock<std::result::Result<tokio::runtime::Handle, String>> =
        std::sync::OnceLock::new();
    IO.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("netlink-io".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .map_err(|e| e.to_string())?;
        Ok(handle)
    })
    .as_ref()
    .map_err(|e| Error::io("starting the netlink I/O thread")(std::io::Error::other(e.clone())))
}

/// The notifications' receiving end, as rtnetlink hands it out.
type Messages = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

/// What changed in a watched namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Link,
    Route,
}
