//! A minimal `NetworkBehaviour` whose only job is to hand out long-lived streams.
//!
//! Every connection opens exactly one outbound stream on [`crate::PROTOCOL`] as soon as it is
//! established and accepts the remote's streams on the same protocol. The negotiated streams are
//! passed up to the driver, which moves them into per-peer writer / reader tasks; no message bytes
//! ever pass through the swarm task itself.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::{ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound};
use libp2p::swarm::handler::{FullyNegotiatedOutbound, ListenUpgradeError};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, Stream, StreamProtocol, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// What a connection handler reports to the behaviour.
#[derive(Debug)]
pub(crate) enum HandlerOut {
    /// The remote opened its stream to us: we read from it.
    Inbound(Stream),
    /// Our stream to the remote is ready: we write to it.
    Outbound(Stream),
    /// Negotiating our outbound stream failed (the remote does not speak our protocol, or the
    /// connection is going away).
    OutboundFailed(String),
}

/// Event emitted by [`StreamBehaviour`] to the swarm loop.
#[derive(Debug)]
pub(crate) struct StreamEvent {
    pub peer: PeerId,
    pub connection: ConnectionId,
    pub event: HandlerOut,
}

pub(crate) struct Handler {
    protocol: StreamProtocol,
    /// Whether the one outbound stream of this connection still has to be requested.
    open_outbound: bool,
    events: VecDeque<HandlerOut>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = HandlerOut;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ())
    }

    fn connection_keep_alive(&self) -> bool {
        // Cluster connections are permanent; only an error or shutdown closes them.
        true
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        if self.open_outbound {
            self.open_outbound = false;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ()),
            });
        }
        if let Some(ev) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(ev));
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), ()>,
    ) {
        // No waker needed: the connection task polls the handler again right after delivering a
        // connection event.
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol, ..
            }) => self.events.push_back(HandlerOut::Inbound(protocol)),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol, ..
            }) => self.events.push_back(HandlerOut::Outbound(protocol)),
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => self
                .events
                .push_back(HandlerOut::OutboundFailed(error.to_string())),
            ConnectionEvent::ListenUpgradeError(ListenUpgradeError { error, .. }) => {
                tracing::debug!("inbound stream negotiation failed: {error:?}");
            }
            _ => {}
        }
    }
}

pub(crate) struct StreamBehaviour {
    protocol: StreamProtocol,
    events: VecDeque<StreamEvent>,
}

impl StreamBehaviour {
    pub(crate) fn new(protocol: StreamProtocol) -> Self {
        Self {
            protocol,
            events: VecDeque::new(),
        }
    }

    fn handler(&self) -> Handler {
        Handler {
            protocol: self.protocol.clone(),
            open_outbound: true,
            events: VecDeque::new(),
        }
    }
}

impl NetworkBehaviour for StreamBehaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = StreamEvent;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn on_swarm_event(&mut self, _event: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        // The swarm polls the behaviour again right after delivering a handler event.
        self.events.push_back(StreamEvent {
            peer,
            connection,
            event,
        });
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<StreamEvent, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(ev) => Poll::Ready(ToSwarm::GenerateEvent(ev)),
            None => Poll::Pending,
        }
    }
}
