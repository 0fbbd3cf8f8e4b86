//! Client disconnects: what to do when a child's client has gone away.

use crate::Pid;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::net::IpAddr;

/// The transport of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP over IPv4.
    Tcp,
    /// TCP over IPv6.
    Tcp6,
}

/// A client connection whose peer has closed while a child still holds it (the
/// socket is in CLOSE_WAIT). The fields are the ones the seed's
/// `on_client_disconnect` receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Disconnect {
    /// The child holding the connection.
    pub pid: Pid,
    /// TCP or TCP6.
    pub proto: Proto,
    /// Our address.
    pub local_host: IpAddr,
    /// Our port.
    pub local_port: u16,
    /// The client's address.
    pub foreign_host: IpAddr,
    /// The client's port.
    pub foreign_port: u16,
}

/// What the supervisor knows of the child holding a disconnected connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildView {
    /// The child is handling a request.
    pub busy: bool,
    /// The child's generation.
    pub generation: u64,
    /// Requests the child has served.
    pub requests: u64,
}

impl ChildView {
    /// A view with these values.
    pub fn new(busy: bool, generation: u64, requests: u64) -> Self {
        ChildView {
            busy,
            generation,
            requests,
        }
    }
}

/// What to do about one disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DisconnectAction {
    /// Call the user's `on_client_disconnect` with the connection.
    RunHook,
    /// Stop the child to cancel its job: TERM, then KILL after the kill grace.
    Terminate,
    /// Nothing.
    Ignore,
}

/// Decides what happens when a client goes away. The supervisor reports each
/// closed connection once, however long it lingers.
pub trait DisconnectPolicy: Send + Debug {
    /// What to do about `conn`, held by `child`.
    fn on_disconnect(&mut self, conn: &Disconnect, child: &ChildView) -> DisconnectAction;

    /// The name this policy is registered under.
    fn name(&self) -> &str {
        "custom"
    }
}

impl<P: DisconnectPolicy + ?Sized> DisconnectPolicy for Box<P> {
    fn on_disconnect(&mut self, conn: &Disconnect, child: &ChildView) -> DisconnectAction {
        (**self).on_disconnect(conn, child)
    }
    fn name(&self) -> &str {
        (**self).name()
    }
}

/// The default: call the user's `on_client_disconnect` for every disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CallHook;

impl DisconnectPolicy for CallHook {
    fn on_disconnect(&mut self, _: &Disconnect, _: &ChildView) -> DisconnectAction {
        DisconnectAction::RunHook
    }
    fn name(&self) -> &str {
        "call_hook"
    }
}

/// Cancel the job: terminate a busy child whose client has gone. An idle child
/// holding a closed keep-alive connection is left alone (it finds out on its own).
///
/// ```
/// use preforkd_policies::*;
/// use std::net::{IpAddr, Ipv4Addr};
/// let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// let d = Disconnect { pid: Pid(7), proto: Proto::Tcp, local_host: lo, local_port: 80,
///                      foreign_host: lo, foreign_port: 5000 };
/// let mut p = TerminateChild;
/// assert_eq!(p.on_disconnect(&d, &ChildView::new(true, 1, 0)), DisconnectAction::Terminate);
/// assert_eq!(p.on_disconnect(&d, &ChildView::new(false, 1, 0)), DisconnectAction::Ignore);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TerminateChild;

impl DisconnectPolicy for TerminateChild {
    fn on_disconnect(&mut self, _: &Disconnect, child: &ChildView) -> DisconnectAction {
        if child.busy {
            DisconnectAction::Terminate
        } else {
            DisconnectAction::Ignore
        }
    }
    fn name(&self) -> &str {
        "terminate_child"
    }
}
