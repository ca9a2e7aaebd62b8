//! Authorization-rule messages (api 14): add a rule, remove one, list them
//! a page at a time. The rule types are `tern_acl`'s; this module only lays
//! them out on the wire, strictly: an unknown kind, operation or effect
//! byte is a decode error, never a default.
//!
//! A rule is `principal string, kind u8, prefix bool, name string,
//! operation u8, effect u8`.

use bytes::{BufMut, BytesMut};
pub use tern_acl::{AclRule, Effect, Operation, ResourceKind, ResourcePattern};

use crate::error::DecodeError;
use crate::wire::{put_string, Reader};

/// Most rules one `List` answer carries (a page: 10,000 rules of the
/// longest names take ~5 MiB, well inside a frame).
pub const ACL_LIST_PAGE_MAX: usize = 10_000;

/// An ACL request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclRequest {
    /// Add a rule (adding one that exists changes nothing).
    Add(AclRule),
    /// Remove a rule (removing one that does not exist changes nothing).
    Remove(AclRule),
    /// Up to [`ACL_LIST_PAGE_MAX`] rules, from the `start`-th in the
    /// cluster's stable order.
    List {
        /// Rules to skip.
        start: u32,
    },
}

/// An ACL answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclResponse {
    /// The rule was added or removed (or already was / was not there).
    Done,
    /// One page of rules.
    List {
        /// Rules in the cluster.
        total: u32,
        /// The page.
        rules: Vec<AclRule>,
    },
}

const OP_ADD: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_LIST: u8 = 3;
const OP_DONE: u8 = 4;

/// Smallest encoded rule: empty strings, four bytes of enums.
const RULE_BYTES_MIN: usize = 2 + 1 + 1 + 2 + 1 + 1;

fn invalid(field: &'static str, value: u8) -> DecodeError {
    DecodeError::Invalid {
        field,
        detail: value.to_string(),
    }
}

fn put_rule(out: &mut BytesMut, rule: &AclRule) {
    put_string(out, &rule.principal);
    out.put_u8(rule.resource.kind as u8);
    out.put_u8(u8::from(rule.resource.prefix));
    put_string(out, &rule.resource.name);
    out.put_u8(rule.operation as u8);
    out.put_u8(rule.effect as u8);
}

fn rule(r: &mut Reader) -> Result<AclRule, DecodeError> {
    let principal = r.string("acl principal")?;
    let kind = r.u8("acl resource kind")?;
    let kind = ResourceKind::from_u8(kind).ok_or_else(|| invalid("acl resource kind", kind))?;
    let prefix = r.bool("acl prefix")?;
    let name = r.string("acl resource name")?;
    let op = r.u8("acl operation")?;
    let operation = Operation::from_u8(op).ok_or_else(|| invalid("acl operation", op))?;
    let effect = match r.u8("acl effect")? {
        0 => Effect::Allow,
        1 => Effect::Deny,
        other => return Err(invalid("acl effect", other)),
    };
    Ok(AclRule {
        principal,
        resource: ResourcePattern { kind, prefix, name },
        operation,
        effect,
    })
}

impl AclRequest {
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            AclRequest::Add(r) => {
                out.put_u8(OP_ADD);
                put_rule(out, r);
            }
            AclRequest::Remove(r) => {
                out.put_u8(OP_REMOVE);
                put_rule(out, r);
            }
            AclRequest::List { start } => {
                out.put_u8(OP_LIST);
                out.put_u32_le(*start);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<AclRequest, DecodeError> {
        Ok(match r.u8("acl op")? {
            OP_ADD => AclRequest::Add(rule(r)?),
            OP_REMOVE => AclRequest::Remove(rule(r)?),
            OP_LIST => AclRequest::List {
                start: r.u32("acl list start")?,
            },
            other => return Err(invalid("acl op", other)),
        })
    }
}

impl AclResponse {
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            AclResponse::Done => out.put_u8(OP_DONE),
            AclResponse::List { total, rules } => {
                out.put_u8(OP_LIST);
                out.put_u32_le(*total);
                out.put_u32_le(rules.len() as u32);
                for r in rules {
                    put_rule(out, r);
                }
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<AclResponse, DecodeError> {
        Ok(match r.u8("acl op")? {
            OP_DONE => AclResponse::Done,
            OP_LIST => {
                let total = r.u32("acl total")?;
                let n = r.list_len("acl rules", RULE_BYTES_MIN)?;
                if n > ACL_LIST_PAGE_MAX {
                    return Err(DecodeError::TooLarge {
                        field: "acl rules",
                        actual: n as u64,
                        limit: ACL_LIST_PAGE_MAX as u64,
                    });
                }
                let rules = (0..n).map(|_| rule(r)).collect::<Result<_, _>>()?;
                AclResponse::List { total, rules }
            }
            other => return Err(invalid("acl op", other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::api::{ApiKey, Request, RequestFrame, Response, ResponseFrame};
    use crate::frame::PROTOCOL_VERSION;

    fn rules() -> Vec<AclRule> {
        vec![
            AclRule {
                principal: "alice".into(),
                resource: ResourcePattern::prefixed(ResourceKind::Topic, "pay."),
                operation: Operation::Consume,
                effect: Effect::Allow,
            },
            AclRule {
                principal: "*".into(),
                resource: ResourcePattern::cluster(),
                operation: Operation::Alter,
                effect: Effect::Deny,
            },
        ]
    }

    #[test]
    fn acl_messages_round_trip() {
        let [a, b]: [AclRule; 2] = rules().try_into().unwrap();
        for request in [
            Request::Acl(AclRequest::Add(a.clone())),
            Request::Acl(AclRequest::Remove(b)),
            Request::Acl(AclRequest::List { start: 7 }),
        ] {
            let frame = RequestFrame {
                correlation_id: 3,
                request,
            };
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            assert_eq!(RequestFrame::decode(buf.freeze()).unwrap(), frame);
        }
        for response in [
            Response::Acl(AclResponse::Done),
            Response::Acl(AclResponse::List {
                total: 9,
                rules: rules(),
            }),
        ] {
            let frame = ResponseFrame {
                correlation_id: 4,
                result: Ok(response),
            };
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            assert_eq!(ResponseFrame::decode(buf.freeze()).unwrap(), frame);
        }
    }

    #[test]
    fn unknown_enum_bytes_and_trailing_bytes_are_refused() {
        let base = || {
            let mut buf = BytesMut::new();
            buf.put_u16_le(PROTOCOL_VERSION);
            buf.put_u16_le(ApiKey::Acl as u16);
            buf.put_u32_le(1);
            buf
        };
        let good = |kind: u8, op: u8, effect: u8| {
            let mut buf = base();
            buf.put_u8(OP_ADD);
            put_string(&mut buf, "p");
            buf.put_u8(kind);
            buf.put_u8(0);
            put_string(&mut buf, "t");
            buf.put_u8(op);
            buf.put_u8(effect);
            buf
        };
        assert!(RequestFrame::decode(good(0, 0, 0).freeze()).is_ok());
        for (k, o, e) in [(4, 0, 0), (0, 7, 0), (0, 0, 2)] {
            let err = RequestFrame::decode(good(k, o, e).freeze()).unwrap_err();
            assert!(matches!(err.error, DecodeError::Invalid { .. }), "{err:?}");
        }
        let mut buf = good(0, 0, 0);
        buf.put_u8(0);
        let err = RequestFrame::decode(buf.freeze()).unwrap_err();
        assert_eq!(err.error, DecodeError::TrailingBytes(1));
        let mut buf = base();
        buf.put_u8(9);
        assert!(RequestFrame::decode(buf.freeze()).is_err());
    }
}
