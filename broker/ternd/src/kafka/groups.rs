//! Kafka consumer-group APIs over Tern's replicated group state.

use tern_kafka::kafka_protocol::messages::{RequestKind, ResponseKind};

use crate::broker::Broker;
use crate::session::Session;

/// Answers a group API. Only APIs listed in `tern_kafka::versions` reach
/// here, and the group APIs are not listed yet.
pub(super) async fn handle(
    _broker: &Broker,
    _session: &Session,
    body: RequestKind,
    _version: i16,
) -> ResponseKind {
    unreachable!("{body:?} is not advertised, so it is refused while decoding")
}
